"""Estimates at a given theta from the blocked factor.

Notes
-----
Let L be the blocked factor of Omega(theta) (see :mod:`sm_hlm.engine.blocked`)
with last block row [L_XZ  R_X  0; l_yZ'  r'  r_yy].  Then

    R_X' beta = r,           L_ZZ' u = l_yZ - L_XZ' beta,     b_k = Lambda_k u_k,

by block back substitution (the dense block first, then the block-diagonal
columns in reverse order), and

    sigma^2 = r_yy^2 / n (ML) or r_yy^2 / (n - p) (REML),
    cov(beta) = sigma^2 (R_X R_X')^{-1}.

*Conditional variances* (lme4's ``condVar``) are the diagonal blocks of
sigma^2 Lambda P^{-1} Lambda' with P = L_ZZ L_ZZ' = Lambda'Z'Z Lambda + I.  The
needed blocks of Sigma = P^{-1} come from a selected inversion (Takahashi):
with column j's factor L_jj and the blocks B = L[>j, j] below it,

    Sigma[>j, j] = -Sigma[>j, >j] B L_jj^{-1},
    Sigma[j, j]  = L_jj^{-T} (I + B' Sigma[>j, >j] B) L_jj^{-1},

computed level by level.  Sigma[>j, >j] is needed only at the positions the
factorization's triples touch, so Sigma is formed on the pattern of L: dense
for the dense block (one triangular inverse), per stored block elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from .linalg import batched_back_solve, batched_inverse_lower
from .blocked import BlockedDeviance, BlockedFactor

__all__ = ["Solution", "solve_at"]


@dataclass(frozen=True)
class Solution:
    """Everything at one theta (terms in the caller's order).

    Attributes
    ----------
    theta, deviance, beta, scale (sigma^2), cov_beta
    u, b : list of ndarray
        Spherical and actual conditional modes per term, each (levels, S).
    condvar : list of ndarray or None
        Var(b_k[l] | y), each (levels, S, S); None when not requested.
    logdet_L, logdet_RX, pwrss : float
    """

    theta: np.ndarray
    deviance: float
    beta: np.ndarray
    scale: float
    cov_beta: np.ndarray
    u: list
    b: list
    condvar: list | None
    logdet_L: float
    logdet_RX: float
    pwrss: float


def factor_at(dev: BlockedDeviance, theta: np.ndarray
              ) -> tuple[BlockedFactor, np.ndarray, np.ndarray]:
    """The blocked factor at ``theta``, the factor R of the [X y] block and beta.

    Raises
    ------
    ValueError
        When Omega(theta) is not positive definite.
    """
    st = dev.structure
    f = dev.factor(theta)
    if f is None:
        raise ValueError("Omega(theta) is not positive definite at this theta")
    p = st.k_fe
    R = f.R(st.r)
    beta = solve_triangular(R[:p, :p], R[p, :p], lower=True, trans="T") if p else np.zeros(0)
    return f, R, beta


def solve_at(dev: BlockedDeviance, theta: np.ndarray, *, condvar: bool = True) -> Solution:
    """beta, sigma^2, cov(beta), conditional modes (and variances) at ``theta``.

    Raises
    ------
    ValueError
        When Omega(theta) is not positive definite.
    """
    st = dev.structure
    f, R, beta = factor_at(dev, theta)
    n, p, K, J = st.nobs, st.k_fe, st.K, st.J
    RX = R[:p, :p]
    scale = f.pwrss / (n - p if dev.reml else n)
    RXinv = solve_triangular(RX, np.eye(p), lower=True) if p else np.zeros((0, 0))
    cov_beta = scale * RXinv.T @ RXinv
    u_sorted = _modes(st, f, beta)
    sig_diag = _selected_inverse(st, f) if condvar else None
    u, b, cv = [None] * K, [None] * K, [None] * K
    for pos, k in enumerate(st.order):
        lam = f.lambdas[pos]
        back = np.empty_like(st.level_order[pos])     # internal level of each caller level
        back[st.level_order[pos]] = np.arange(len(back))
        u[k] = u_sorted[pos].T[back]
        b[k] = (lam @ u_sorted[pos]).T[back]
        if sig_diag is not None:
            s = sig_diag[pos][:, :, back]
            cv[k] = scale * np.einsum("ab,bcl,dc->lad", lam, s, lam)
    return Solution(np.asarray(theta, float), dev.from_factor(f), beta, scale, cov_beta, u, b,
                    cv if condvar else None, f.logdet_L, f.logdet_RX, f.pwrss)


def _modes(st, f: BlockedFactor, beta: np.ndarray) -> list[np.ndarray]:
    """u_k, each (S_k, m_k), in factorization order."""
    K, J, p, dt = st.K, st.J, st.k_fe, st.d_terms
    D = f.D
    u: list = [None] * K
    if dt:
        rhs = D[dt + p, :dt] - D[dt:dt + p, :dt].T @ beta
        uD = solve_triangular(D[:dt, :dt], rhs, lower=True, trans="T")
        for k in range(J, K):
            o = st.d_offset[k]
            u[k] = uD[o:o + st.S[k] * st.m[k]].reshape(st.m[k], st.S[k]).T
    for j in range(J - 1, -1, -1):
        LX = f.off[(K, j)]                       # (p + 1, S_j, m_j)
        rhs = LX[p] - np.einsum("asc,a->sc", LX[:p], beta)
        for i in range(j + 1, K):
            pat = st.patterns[(i, j)]
            Lij = f.off[(i, j)]
            vals = np.einsum("asp,ap->sp", Lij, u[i][:, pat.rows])
            for s in range(st.S[j]):
                rhs[s] -= np.bincount(pat.cols, weights=vals[s], minlength=st.m[j])
        u[j] = batched_back_solve(f.diag[j], rhs[:, None, :])[:, 0, :]
    return u


def _selected_inverse(st, f: BlockedFactor, *, with_x: bool = False) -> list[np.ndarray]:
    """Diagonal blocks of P^{-1} per term (factorization order), each (S, S, m)."""
    return selected_inverse(st, f, with_x=with_x)[0]


def selected_inverse(st, f: BlockedFactor, *,
                     with_x: bool = False) -> tuple[list, dict, np.ndarray | None]:
    """Sigma = P^{-1} (or Omega_ZX^{-1} with ``with_x``) on the pattern of the factor.

    Returns
    -------
    diag : list of ndarray
        Per term (factorization order) the diagonal blocks, (S_k, S_k, m_k).
    off : dict
        (i, j) -> Sigma[i, j] on the pattern of block (i, j) below a BD column
        j, (S_i, S_j, pattern size); i = K is the [X y] row (its y row is zero).
    dense : ndarray or None
        Sigma on the dense block (N_D x N_D; zero in the y row and column, and
        in the X rows unless ``with_x``).

    Notes
    -----
    Omega_ZX is the [Z Lambda, X] part of Omega (without y); its inverse's
    Z block is P^{-1} + P^{-1}Lambda'Z'X (X'V^{-1}X)^{-1} X'Z Lambda P^{-1}.
    """
    K, J, dt, N = st.K, st.J, st.d_terms, st.N_D
    top = K + 1 if with_x else K
    nd = N - 1 if with_x else dt
    out: list = [None] * K
    sig_D = None
    if nd:
        Linv = solve_triangular(f.D[:nd, :nd], np.eye(nd), lower=True)
        sig_D = np.zeros((N, N))
        sig_D[:nd, :nd] = Linv.T @ Linv
        for k in range(J, K):
            S, m, o = st.S[k], st.m[k], st.d_offset[k]
            blk = sig_D[o:o + S * m, o:o + S * m].reshape(m, S, m, S)
            out[k] = blk[np.arange(m), :, np.arange(m), :].transpose(1, 2, 0)
    sig_off: dict = {}
    for j in range(J - 1, -1, -1):
        Sj, mj = st.S[j], st.m[j]
        Q = np.zeros((Sj, Sj, mj))
        H = {i: np.zeros_like(f.off[(i, j)]) for i in range(j + 1, top)}
        for k_, i_ in st.all_pairs(j, with_x=with_x):
            g = st._triples(i_, k_, j)
            Bi, Bk = f.off[(g.i, j)], f.off[(g.k, j)]
            if g.in_dense:
                flat = g.flat
                sig = sig_D[flat // N, flat % N]
            else:
                store = out[g.k] if g.i == g.k else sig_off[(g.i, g.k)]
                sig = store.ravel()[g.flat]
            Bp, Bq = Bi[:, :, g.p], Bk[:, :, g.q]
            sB = np.einsum("abt,but->aut", sig, Bq)          # Sigma_ik[a, b] B_q
            w = np.einsum("ast,aut->sut", Bp, sB)            # B_p' Sigma B_q
            cols = st.patterns[(g.i, j)].cols[g.p]
            w2 = w + np.where(g.sym_twice, 1.0, 0.0) * w.transpose(1, 0, 2)
            for s in range(Sj):
                for t in range(Sj):
                    Q[s, t] += np.bincount(cols, weights=w2[s, t], minlength=mj)
            _scatter_add(H[g.i], sB, g.p)
            if np.any(g.sym_twice):
                tw = g.sym_twice
                sBt = np.einsum("abt,ast->bst", sig[:, :, tw], Bp[:, :, tw])
                _scatter_add(H[g.k], sBt, g.q[tw])
        L = f.diag[j]
        Li = batched_inverse_lower(L)
        IQ = Q.copy()
        IQ[np.arange(Sj), np.arange(Sj)] += 1.0
        out[j] = np.einsum("bal,bcl,cdl->adl", Li, IQ, Li)
        for i in range(j + 1, top):
            pat = st.patterns[(i, j)]
            Lg = L if pat.size == mj else L[:, :, pat.cols]
            # Sigma_ij = -H L^{-1}: solve L' X' = H'
            Xt = batched_back_solve(Lg, np.ascontiguousarray(H[i].transpose(1, 0, 2)))
            sig_off[(i, j)] = -Xt.transpose(1, 0, 2)
    return out, sig_off, sig_D


def _scatter_add(target: np.ndarray, vals: np.ndarray, idx: np.ndarray) -> None:
    """target[:, :, idx] += vals (repeated indices summed)."""
    a, b, size = target.shape
    for s in range(a):
        for t in range(b):
            target[s, t] += np.bincount(idx, weights=vals[s, t], minlength=size)
