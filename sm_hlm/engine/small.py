"""Fused deviance-and-gradient kernel for one or two random effects per group.

For the common models with q <= 2 (a random intercept, or an intercept and a
slope) and up to a few thousand groups, an evaluation of the profiled deviance
is dominated by the fixed cost of each numpy call, not by arithmetic.  This
kernel computes the deviance and, when asked, its gradient from the closed-form
2 x 2 inverses M_j^{-1}, with about fifteen whole-array operations per
evaluation and direct LAPACK calls for the small (p + 1) x (p + 1)
factorisation.

Notes
-----
With R_j = F_j' (F_j = [[f0, 0], [f1, f2]], the per-group root of Z_j'Z_j),
G_j = F_j^{-1} Z_j'W and S = Lambda~ Lambda~' (working coordinates):

    M_j = I + R_j S R_j',
    M_00 = 1 + s00 f0^2 + 2 s01 f0 f1 + s11 f1^2,  M_01 = s01 f0 f2 + s11 f1 f2,
    M_11 = 1 + s11 f2^2,
    det M_j = M_00 + M_11 - 1 + det(S) f0^2 f2^2   (a sum of non-negative terms),
    M_j^{-1} = [[M_11, -M_01], [-M_01, M_00]] / det M_j,
    A = sum_j E_j'E_j + sum_j G_j' M_j^{-1} G_j = R R'  (lower R),

and the profiled deviance follows from log|L|^2 = sum_j log det M_j, the
penalised residual sum of squares R[p, p]^2 and log|R_X|^2.  Since M_j >= I,
the entries of M_j^{-1} are bounded by 1.  The gradient with respect to
Lambda~ is 2 B Lambda~ with

    B = sum_j R_j' M_j^{-1} R_j - (dof / r^2) sum_j v_j v_j' - sum_j K_j K_j',
    v_j = R_j' M_j^{-1} G_j u   (u = (-beta, 1)),
    K_j = R_X^{-1} G_jx' M_j^{-1} R_j   (REML only; G_jx the first p columns)

(see :class:`sm_hlm.engine.deviance.ProfiledDeviance`).  The per-group
products f0^2, f0 f1, ..., f0^2 f2^2 are computed once, so M_11, -M_01, M_00 and
det M_j are one (4, 8) x (8, m) product per evaluation (det(S) = det(Lambda~)^2
exactly), and sum_j R_j' M_j^{-1} R_j one (3, m) x (m, 6) product.
"""
from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from scipy.linalg import lapack

from . import compiled

__all__ = ["SmallKernel"]


#: Largest r^2 x 3m (r = p + 1) for which the per-group outer products of G_j's rows
#: (their upper triangle, r (r + 1) / 2 x 3m entries) are kept for the pair-product form
#: of A (at most 8 MB); beyond it A comes from H_j = L_j^{-1} G_j.
PAIR_LIMIT = 1_000_000
#: Largest r = p + 1 for which the compiled loops (:mod:`sm_hlm.engine._csmall`, r^2 / 2
#: scalar multiply-adds per group) are used; beyond it the numpy forms' BLAS products
#: are faster.
COMPILED_MAX_R = 12


class SmallKernel:
    """Deviance pieces and gradient for q in (1, 2), all groups in one block.

    Parameters
    ----------
    F : (q, q, m)
        Lower-triangular per-group roots (R_j = F_j').
    Gt : (p + 1, q, m)
        G_j in the layout ``G.transpose(1, 0, 2)``.
    within : (p + 1, p + 1)
        sum_j E_j'E_j.

    Notes
    -----
    When the per-group outer products fit in :data:`PAIR_LIMIT` entries,
    A = sum_j E_j'E_j + sum_j G_j' M_j^{-1} G_j is one matrix-vector product of
    the precomputed products g_ja g_jb' (a <= b) with the entries of the 2 x 2
    inverses M_j^{-1} (a sum of positive semi-definite terms); otherwise it is
    H H' with H_j = L_j^{-1} G_j (L_j the closed-form Cholesky factor of M_j).
    """

    def __init__(self, F: np.ndarray, Gt: np.ndarray, within: np.ndarray):
        q, m = F.shape[1], F.shape[2]
        if q not in (1, 2):
            raise ValueError(f"the small kernel handles q = 1 or 2, got q = {q}")
        self.q, self.m = q, m
        r = self.r = Gt.shape[0]
        # [G_j0 | G_j1] side by side: G_j u for both columns in one product
        self.Gc = np.ascontiguousarray(Gt).reshape(r, q * m)
        self.G0 = self.Gc[:, :m]
        self.G1 = self.Gc[:, m:] if q == 2 else None
        self._u = np.ones(r)                   # (-beta, 1)
        f0 = np.ascontiguousarray(F[0, 0])
        self.f0 = f0
        if q == 2:
            self.f1, self.f2 = np.ascontiguousarray(F[1, 0]), np.ascontiguousarray(F[1, 1])
        self.within = np.ascontiguousarray(within, dtype=float)
        # the compiled loops (one pass over the groups per call) where built and r is small
        self._c = compiled.csmall() if r <= COMPILED_MAX_R else None
        if self._c is not None:
            # group-major copies: each group's f's and G_j contiguous (one stream per call)
            self._fp = np.stack([f0, self.f1, self.f2], axis=1) if q == 2 else f0
            self._gp = np.ascontiguousarray(Gt.transpose(2, 1, 0)).reshape(m, q * r)
        npair = 1 if q == 1 else 3
        self.pairs: np.ndarray | None = None
        self._H = None
        if self._c is not None:
            pass                                   # neither the pairs nor H are needed
        elif r * r * npair * m <= PAIR_LIMIT:
            # rows (a, b), a <= b, of the upper triangle of A (A is symmetric); columns
            # [00 | 01 + 10 | 11] per group, matching the entries (a, b, d) of M_j^{-1}
            iu = np.triu_indices(r)
            self._iu, self._il = iu, (iu[1], iu[0])
            G0a, G0b = self.G0[iu[0]], self.G0[iu[1]]
            blocks = [G0a * G0b]
            if q == 2:
                G1a, G1b = self.G1[iu[0]], self.G1[iu[1]]
                blocks += [G0a * G1b + G1a * G0b, G1a * G1b]
            self.pairs = np.concatenate(blocks, axis=1)
            self._H = None
        else:
            self._H = np.empty((r, q * m))

    @cached_property
    def P(self) -> np.ndarray:
        """The per-group products: rows f0^2, f0 f1, f1^2, f0 f2, f1 f2, f2^2, f0^2 f2^2
        and ones (q = 2); f0^2 and ones (q = 1)."""
        f0 = self.f0
        if self.q == 1:
            return np.stack([f0 * f0, np.ones(self.m)])
        f1, f2 = self.f1, self.f2
        P = np.empty((8, self.m))
        for k, (x, y) in enumerate([(f0, f0), (f0, f1), (f1, f1), (f0, f2), (f1, f2),
                                    (f2, f2)]):
            np.multiply(x, y, out=P[k])
        np.multiply(P[0], P[5], out=P[6])
        P[7] = 1.0
        return P

    @cached_property
    def _FA(self) -> np.ndarray:
        """Rows f0, f1: v_j = (f0, f1) w_j0 + (0, f2) w_j1 (the numpy gradient, q = 2)."""
        return np.stack([self.f0, self.f1])

    def _entries(self, lam: np.ndarray) -> np.ndarray:
        """Rows (M_11, -M_01, M_00, det M_j) for q = 2, (M_00,) for q = 1, at Lambda~ = lam."""
        if self.q == 1:
            return np.array([[float(lam[0, 0]) ** 2, 1.0]]) @ self.P
        (l00, l01), (l10, l11) = lam.tolist()
        s00, s01, s11 = l00 * l00 + l01 * l01, l00 * l10 + l01 * l11, l10 * l10 + l11 * l11
        det_s = (l00 * l11 - l01 * l10) ** 2                   # det(S), S = lam lam'
        C = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, s11, 0.0, 1.0],
                      [0.0, 0.0, 0.0, -s01, -s11, 0.0, 0.0, 0.0],
                      [s00, 2.0 * s01, s11, 0.0, 0.0, 0.0, 0.0, 1.0],
                      [s00, 2.0 * s01, s11, 0.0, 0.0, s11, det_s, 1.0]])
        return C @ self.P

    def _inverse_entries(self, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """det M_j (m,) and the distinct entries of M_j^{-1}, (a,) or (a, b, d) rows
        (M_j^{-1} = [[a, b], [b, d]]), from :meth:`_entries`."""
        if self.q == 1:
            return E[0], 1.0 / E
        return E[3], E[:3] / E[3]

    def k_inverse_entries(self, lam: np.ndarray) -> np.ndarray:
        """The distinct entries of K_j^{-1} = (I + Lambda~' R_j'R_j Lambda~)^{-1}: (a,) or
        (a, b, d) rows, at Lambda~ = lam (any q x q matrix).

        With Y_j = R_j Lambda~, K_j = I + Y_j'Y_j has entries quadratic in
        (f0, f1, f2), i.e. linear in the precomputed products, and
        det K_j = det M_j = 1 + tr(K_j - I) + det(Lambda~)^2 f0^2 f2^2.
        """
        if self.q == 1:
            return 1.0 / (np.array([[float(lam[0, 0]) ** 2, 1.0]]) @ self.P)
        (l00, l01), (l10, l11) = lam.tolist()
        k11 = [l01 * l01, 2.0 * l01 * l11, l11 * l11, 0.0, 0.0, l11 * l11, 0.0, 1.0]
        k01 = [l00 * l01, l00 * l11 + l10 * l01, l10 * l11, 0.0, 0.0, l10 * l11, 0.0, 0.0]
        k00 = [l00 * l00, 2.0 * l00 * l10, l10 * l10, 0.0, 0.0, l10 * l10, 0.0, 1.0]
        det = [a + b for a, b in zip(k00, k11)]
        det[6], det[7] = (l00 * l11 - l01 * l10) ** 2, 1.0
        E = np.array([k11, [-v for v in k01], k00, det]) @ self.P
        return E[:3] / E[3]

    def factor(self, lam: np.ndarray):
        """The Cholesky factor of A(theta) and the pieces of the gradient; None where not PD.

        ``lam`` is Lambda~ (q x q).  Returns ``(R, logdet_L, inv)``: the lower
        Cholesky factor R of A, log|L|^2 and the distinct entries of the M_j^{-1}
        as rows (see :meth:`_inverse_entries`).
        """
        q, m = self.q, self.m
        if self._c is not None:
            return self._compiled_factor(lam)
        E = self._entries(lam)
        det, inv = self._inverse_entries(E)
        logdet = float(np.log(det).sum())
        if self.pairs is not None:
            upper = self.pairs @ inv.reshape(-1)
            A = np.empty((self.r, self.r))
            A[self._iu] = upper
            A[self._il] = upper
            A += self.within
        else:
            H = self._H
            m00 = E[0] if q == 1 else E[2]
            i00 = 1.0 / np.sqrt(m00)             # L_j = [[l00, 0], [l10, l11]]
            if q == 1:
                np.multiply(self.G0, i00, out=H)
            else:
                H0, H1 = H[:, :m], H[:, m:]
                np.multiply(self.G0, i00, out=H0)
                np.multiply(H0, -E[1] * i00, out=H1)               # l10 = m01 / l00
                np.subtract(self.G1, H1, out=H1)
                H1 *= np.sqrt(m00 / det)                           # 1 / l11
            A = self.within + H @ H.T
        R, info = lapack.dpotrf(A, lower=1, clean=1)
        if info != 0 or not np.isfinite(logdet):
            return None
        return R, logdet, inv

    def _compiled_factor(self, lam: np.ndarray):
        """:meth:`factor` by the compiled loop (:func:`sm_hlm.engine._csmall.factor`)."""
        q = self.q
        if q == 1:
            s = np.array([float(lam[0, 0]) ** 2])
        else:
            (l00, l01), (l10, l11) = lam.tolist()
            s = np.array([l00 * l00 + l01 * l01, l00 * l10 + l01 * l11, l10 * l10 + l11 * l11,
                          (l00 * l11 - l01 * l10) ** 2])
        R = self.within.copy()
        inv = np.empty((self.m, 3 if q == 2 else 1))               # group-major
        logdet, info = self._c.factor(q, self._gp, self._fp, s, R, inv)
        if info != 0 or not math.isfinite(logdet):
            return None
        return R, logdet, inv.T

    @property
    def compiled(self) -> bool:
        """Whether the compiled loops (:mod:`sm_hlm.engine._csmall`) serve this kernel."""
        return self._c is not None

    def moments(self, u: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        """The moment start's pieces in one compiled pass (compiled kernels only).

        Returns ``(n_full, rank, var_b, mean_sinv)``: the number of groups with a
        full-rank Z_j, the number of positive roots over all groups, and over the
        full-rank groups the variance (about the mean, divided by n_full) of
        b_j = R_j^{-1} G_j u and the mean of diag((Z_j'Z_j)^{-1}) (see
        :meth:`sm_hlm.engine.deviance.ProfiledDeviance.moment_start`).
        """
        n_full, rank, var_b, mean_sinv = self._c.moments(self.q, self._gp, self._fp,
                                                         np.ascontiguousarray(u, dtype=float))
        return n_full, rank, np.array(var_b), np.array(mean_sinv)

    def conditional_modes(self, u: np.ndarray, lam: np.ndarray, TL: np.ndarray,
                          scale: float) -> tuple[np.ndarray, np.ndarray]:
        """BLUPs b_j = scale TL K_j^{-1} Lambda~' R_j' G_j u (m, q) and TL K_j^{-1} TL'
        (q, q, m), K_j = I + Lambda~' R_j'R_j Lambda~, in one compiled pass (compiled
        kernels only; see
        :meth:`sm_hlm.engine.deviance.ProfiledDeviance.conditional_modes`)."""
        q, m = self.q, self.m
        b, cov = np.empty((m, q)), np.empty((q, q, m))
        self._c.blups(q, self._gp, self._fp, np.ascontiguousarray(u, dtype=float),
                      np.ascontiguousarray(lam, dtype=float),
                      np.ascontiguousarray(TL, dtype=float), float(scale), b, cov)
        return b, cov

    def gradient_inner(self, R: np.ndarray, inv: np.ndarray, *, p: int, dof: float,
                       pwrss: float, reml: bool) -> np.ndarray:
        """The q x q matrix B of the gradient (see the module notes) at the factor's theta."""
        q, m = self.q, self.m
        c = dof / pwrss
        inner = np.empty((q, q))
        if self._c is not None:         # beta from R (p = r - 1) in the compiled loop
            self._c.gradient(q, self._gp, self._fp, inv.T, R, c, reml and p > 0, inner)
            return inner
        u = self._u
        if p:
            beta, info = lapack.dtrtrs(R[:p, :p], R[p, :p], lower=1, trans=1)
            np.negative(beta, out=u[:p])
        hg = u @ self.Gc                                       # g_j = G_j u, both columns
        if q == 1:
            a = inv[0]
            v0 = hg * a
            v0 *= self.f0                                      # R_j' M_j^{-1} g_j
            inner[0, 0] = a @ self.P[0] - c * (v0 @ v0)
            if reml and p:
                Y, _ = lapack.dtrtrs(R[:p, :p], self.G0[:p] * (a * self.f0), lower=1)
                inner[0, 0] -= float(np.einsum("ij,ij->", Y, Y))
            return inner
        a, b, d = inv
        W = inv[:2] * hg[:m]                                   # M_j^{-1} g_j: rows w_j0, w_j1
        W += inv[1:] * hg[m:]
        V = self._FA * W[0]                                    # v_j = R_j' M_j^{-1} g_j
        V[1] += self.f2 * W[1]
        vv = V @ V.T
        T = inv @ self.P[:6].T         # T[k, l] = sum_j inv_kj P_lj (P: f0^2, f0 f1, ...)
        inner[0, 0] = T[0, 0] - c * vv[0, 0]                          # a f0^2
        inner[0, 1] = inner[1, 0] = T[0, 1] + T[1, 3] - c * vv[0, 1]  # a f0 f1 + b f0 f2
        inner[1, 1] = T[0, 2] + 2.0 * T[1, 4] + T[2, 5] - c * vv[1, 1]
        if reml and p:
            Gx0, Gx1 = self.G0[:p], self.G1[:p]
            W0 = Gx0 * a                                       # G_jx' M_j^{-1}
            W0 += Gx1 * b
            W1 = Gx0 * b
            W1 += Gx1 * d
            Kx = np.empty((p, 2 * m))                          # G_jx' M_j^{-1} R_j
            np.multiply(W0, self.f0, out=Kx[:, :m])
            np.multiply(W0, self.f1, out=Kx[:, m:])
            Kx[:, m:] += W1 * self.f2
            Y, _ = lapack.dtrtrs(R[:p, :p], Kx, lower=1)
            Y0, Y1 = Y[:, :m], Y[:, m:]
            inner[0, 0] -= float(np.einsum("ij,ij->", Y0, Y0))
            inner[1, 1] -= float(np.einsum("ij,ij->", Y1, Y1))
            inner[0, 1] = inner[1, 0] = inner[0, 1] - float(np.einsum("ij,ij->", Y0, Y1))
        return inner
