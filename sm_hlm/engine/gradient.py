"""Analytic gradient of the profiled deviance with respect to theta.

Notes
-----
With P = Lambda'Z'Z Lambda + I, the profiled deviances are

    ML:   log|P| + n log r^2 + const,
    REML: log|Omega_ZX| + (n - p) log r^2 + const,   log|Omega_ZX| = log|P| + log|R_X|^2,

where Omega_ZX = Lt' C Lt + diag(I, 0), C = [Z X]'[Z X] and Lt = diag(Lambda, I_p).
For a theta entry t, the (a, b) entry of Lambda_k, dLambda/dtheta_t = I_{m_k} (x) E_ab, so

    d log|P| / d theta_t = 2 tr(P^{-1} Lambda'Z'Z dLambda)
                         = 2 sum_l [P^{-1} Lambda'Z'Z]_{(k, l, b), (k, l, a)},

and the same with Sigma = Omega_ZX^{-1} and [Lambda'Z'Z; X'Z] for REML.  Only the
blocks of Sigma where Z_i'Z_k (or X'Z_k) is non-zero enter; they lie in the pattern
of the factor and come from the selected inversion of
:func:`~sm_hlm.engine.solution.selected_inverse`.  By the envelope theorem (r^2
is the minimum over u and beta of |y - X beta - Z Lambda u|^2 + |u|^2),

    d r^2 / d theta_t = -2 e'Z dLambda u = -2 sum_l (Z_k'e)_{l, a} u_{l, b},

with e = y - X beta - Z b, and Z_k'e = Z_k'y - Z_k'X beta - sum_i Z_k'Z_i b_i
comes from the stored cross products (no pass over the rows).  Hence

    g_t = 2 T_k[b, a] - 2 (dof / r^2) sum_l (Z_k'e)_{l, a} u_{l, b},   dof = n or n - p.
"""
from __future__ import annotations

import numpy as np

from .blocked import BlockedDeviance
from .solution import _modes, factor_at, selected_inverse

__all__ = ["deviance_gradient"]


def deviance_gradient(dev: BlockedDeviance, theta: np.ndarray) -> np.ndarray:
    """Gradient of ``dev(theta)`` (ML or REML profiled deviance), caller's theta order.

    Raises
    ------
    ValueError
        When Omega(theta) is not positive definite.
    """
    st = dev.structure
    f, R, beta = factor_at(dev, theta)
    K, J, p, r, N = st.K, st.J, st.k_fe, st.r, st.N_D
    u = _modes(st, f, beta)
    lams = f.lambdas
    b = [lams[k] @ u[k] for k in range(K)]
    sig_diag, sig_off, sig_D = selected_inverse(st, f, with_x=dev.reml)
    dof = st.nobs - p if dev.reml else st.nobs
    top = K + 1 if dev.reml else K
    lam_all = list(lams) + [np.eye(r)]

    def sigma_block(i: int, k: int) -> np.ndarray:
        """Sigma[i, k] on the pattern of A[i, k] (i > k), (S_i, S_k, size)."""
        if k < J:
            return sig_off[(i, k)]
        pat = st.patterns[(i, k)]
        flat = st._dense_flat(i, k, pat.rows, pat.cols)
        return sig_D[flat // N, flat % N]

    grad_sorted = []
    for k in range(K):
        Sk, mk = st.S[k], st.m[k]
        lam_k = lams[k]
        # T[b, a] = sum_l [Sigma Lt'C]_{(k,l,b),(k,l,a)}
        M = (lam_k.T @ st.A_diag[k].reshape(Sk, -1)).reshape(Sk, Sk, mk)
        T = np.einsum("bcl,cal->ba", sig_diag[k], M)
        for i in range(top):
            if i == k:
                continue
            if i > k:
                A = st.A_off[(i, k)]                               # Z_i'Z_k blocks
                Si = A.shape[0]
                M = (lam_all[i].T @ A.reshape(Si, -1)).reshape(A.shape)
                T += np.einsum("xbp,xap->ba", sigma_block(i, k), M)
            else:
                A = st.A_off[(k, i)]                               # Z_k'Z_i blocks
                Nm = np.matmul(A.transpose(2, 0, 1), lam_all[i]).transpose(1, 2, 0)
                T += np.einsum("bxp,axp->ba", sigma_block(k, i), Nm)
        # Z_k'e per level, (S_k, m_k)
        AX = st.A_off[(K, k)]
        ze = AX[p] - np.einsum("asl,a->sl", AX[:p], beta)
        ze -= np.einsum("stl,tl->sl", st.A_diag[k], b[k])
        for i in range(K):
            if i > k:
                pat, A = st.patterns[(i, k)], st.A_off[(i, k)]
                vals = np.einsum("asp,ap->sp", A, b[i][:, pat.rows])
                idx = pat.cols
            elif i < k:
                pat, A = st.patterns[(k, i)], st.A_off[(k, i)]
                vals = np.einsum("stp,tp->sp", A, b[i][:, pat.cols])
                idx = pat.rows
            else:
                continue
            for s in range(Sk):
                ze[s] -= np.bincount(idx, weights=vals[s], minlength=mk)
        rr = ze @ u[k].T                                           # [a, b]
        grad_sorted.append(2.0 * T.T - 2.0 * dof / f.pwrss * rr)   # [a, b]
    out = np.empty(dev.layout.n_theta)
    for pos, k in enumerate(st.order):
        term = dev.layout.terms[k]
        g = grad_sorted[pos]
        o = dev.layout.offsets[k]
        for idx, (a, bb) in enumerate(term.theta_index()):
            out[o + idx] = g[a, bb]
    return out
