"""Fused deviance-and-gradient kernel for one or two random effects per group.

For the common models with q <= 2 (a random intercept, or an intercept and a
slope) and up to a few thousand groups, an evaluation of the profiled deviance
is dominated by the fixed cost of each numpy call, not by arithmetic.  This
kernel computes the deviance and, when asked, its gradient in one pass with the
closed-form 2 x 2 Cholesky factors, about twenty whole-array operations and
direct LAPACK calls for the small (p + 1) x (p + 1) factorisation.

Notes
-----
With R_j = F_j' (F_j = [[f0, 0], [f1, f2]], the per-group root of Z_j'Z_j),
G_j = F_j^{-1} Z_j'W and S = Lambda~ Lambda~' (working coordinates):

    M_j = I + R_j S R_j' = L_j L_j',
    M_00 = 1 + s00 f0^2 + 2 s01 f0 f1 + s11 f1^2,  M_01 = s01 f0 f2 + s11 f1 f2,
    M_11 = 1 + s11 f2^2,
    l00 = sqrt(M_00), l10 = M_01 / l00, l11 = sqrt(det M_j / M_00),
    H_j = L_j^{-1} G_j,   A = sum_j E_j'E_j + sum_j H_j'H_j = R R'  (lower R),

and the profiled deviance follows from log|L|^2 = sum_j log det M_j, the
penalised residual sum of squares R[p, p]^2 and log|R_X|^2.  The gradient with
respect to Lambda~ is 2 [sum_j J_j'J_j - (dof / r^2) sum_j v_j v_j'
- sum_j Y_j'Y_j] Lambda~ with J_j = L_j^{-1} R_j, v_j = J_j' H_j u
(u = (-beta, 1)) and, for REML, Y_j = R_X^{-1} (J_j' H_jx)'
(see :class:`sm_hlm.engine.deviance.ProfiledDeviance`).  The per-group
products f0^2, f0 f1, ... are computed once, so M_j - I is one (3, 6) x (6, m)
product per evaluation.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

__all__ = ["SmallKernel"]


#: Largest number of entries of the per-group outer products G_j' G_j (r^2 x 3m) kept
#: for the pair-product form of A (8 MB); beyond it A comes from H_j = L_j^{-1} G_j.
PAIR_LIMIT = 1_000_000


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
    inverses M_j^{-1} (a sum of positive semi-definite terms, as the H_j form);
    the gradient then needs H_j only through H_j u = L_j^{-1} (G_j u), and for
    REML through its first p columns.
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
        self._V = np.empty((6, m)) if q == 2 else None
        f0 = np.ascontiguousarray(F[0, 0])
        self.f0 = f0
        if q == 2:
            f1, f2 = np.ascontiguousarray(F[1, 0]), np.ascontiguousarray(F[1, 1])
            self.f1, self.f2 = f1, f2
            self.P = np.stack([f0 * f0, f0 * f1, f1 * f1, f0 * f2, f1 * f2, f2 * f2])
        else:
            self.P = (f0 * f0)[None, :]
        self.within = within
        npair = 1 if q == 1 else 3
        self.pairs: np.ndarray | None = None
        if r * r * npair * m <= PAIR_LIMIT:
            G0, G1 = self.G0, self.G1
            prods = [G0[:, None, :] * G0[None, :, :]]
            if q == 2:
                cross = G0[:, None, :] * G1[None, :, :]
                prods += [cross + cross.transpose(1, 0, 2), G1[:, None, :] * G1[None, :, :]]
            # (r^2, npair * m): columns [00 | 01 + 10 | 11] per group
            self.pairs = np.ascontiguousarray(np.concatenate(prods, axis=2).reshape(r * r, -1))
            self._coef = np.empty(npair * m)
            self._H = None
        else:
            self._H = np.empty((r, q * m))

    def _m_entries(self, S: np.ndarray) -> np.ndarray:
        """The distinct entries of M_j = I + R_j S R_j' as rows: (m00,) or (m00, m01, m11)."""
        if self.q == 1:
            Mb = S[0, 0] * self.P
        else:
            C = np.array([[S[0, 0], 2.0 * S[0, 1], S[1, 1], 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, S[0, 1], S[1, 1], 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, S[1, 1]]])
            Mb = C @ self.P
            Mb[2] += 1.0
        Mb[0] += 1.0
        return Mb

    def m_inverse(self, S: np.ndarray) -> np.ndarray:
        """M_j^{-1} as (q, q, m) (closed form)."""
        q, m = self.q, self.m
        Mb = self._m_entries(S)
        out = np.empty((q, q, m))
        if q == 1:
            np.divide(1.0, Mb[0], out=out[0, 0])
            return out
        m00, m01, m11 = Mb
        idet = 1.0 / (m00 * m11 - m01 * m01)
        np.multiply(m11, idet, out=out[0, 0])
        np.multiply(m00, idet, out=out[1, 1])
        np.multiply(m01, idet, out=out[0, 1])
        np.negative(out[0, 1], out=out[0, 1])
        out[1, 0] = out[0, 1]
        return out

    def factor(self, S: np.ndarray):
        """Closed-form pieces of M_j and the Cholesky factor of A(theta); None where not PD.

        Returns ``(R, logdet_L, i00, l10, i11)``: the lower Cholesky factor R of
        A, log|L|^2, 1 / l00, l10 and 1 / l11 (the last two None for q = 1).
        """
        q, m = self.q, self.m
        if q == 1:
            m00 = self._m_entries(S)[0]
            logdet = float(np.log(m00).sum())
            i00 = 1.0 / np.sqrt(m00)
            l10 = i11 = None
            if self.pairs is not None:
                np.multiply(i00, i00, out=self._coef)
        else:
            m00, m01, m11 = self._m_entries(S)
            det = m00 * m11 - m01 * m01
            logdet = float(np.log(det).sum())
            i00 = 1.0 / np.sqrt(m00)
            l10 = m01 * i00
            i11 = np.sqrt(m00 / det)
            if self.pairs is not None:
                idet = 1.0 / det                          # M_j^{-1} = [[m11, -m01], [., m00]] / det
                c = self._coef
                np.multiply(m11, idet, out=c[:m])
                np.multiply(m01, idet, out=c[m:2 * m])
                np.negative(c[m:2 * m], out=c[m:2 * m])
                np.multiply(m00, idet, out=c[2 * m:])
        if self.pairs is not None:
            A = self.within + (self.pairs @ self._coef).reshape(self.r, self.r)
        else:
            H = self._H
            if q == 1:
                np.multiply(self.G0, i00, out=H)
            else:
                H0, H1 = H[:, :m], H[:, m:]
                np.multiply(self.G0, i00, out=H0)
                np.multiply(H0, l10, out=H1)
                np.subtract(self.G1, H1, out=H1)
                H1 *= i11
            A = self.within + H @ H.T
        R, info = lapack.dpotrf(A, lower=1, clean=1)
        if info != 0 or not np.isfinite(logdet):
            return None
        return R, logdet, i00, l10, i11

    def _hx(self, i00, l10, i11, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``rows`` of H_j0 and H_j1 (as (k, m) arrays) from the factor's pieces."""
        if self._H is not None:
            H = self._H
            return H[rows, :self.m], (H[rows, self.m:] if self.q == 2 else None)
        H0 = self.G0[rows] * i00
        if self.q == 1:
            return H0, None
        return H0, (self.G1[rows] - l10 * H0) * i11

    def gradient_inner(self, R: np.ndarray, pieces: tuple, *, p: int, dof: float,
                       pwrss: float, reml: bool) -> np.ndarray:
        """The q x q bracket of the gradient (see the module notes) at the factor's theta."""
        q = self.q
        i00, l10, i11 = pieces
        u = self._u
        if p:
            beta, info = lapack.dtrtrs(R[:p, :p], R[p, :p], lower=1, trans=1)
            np.negative(beta, out=u[:p])
        hg = u @ self.Gc                                       # G_j u, both columns
        h0 = hg[:self.m]
        h0 *= i00                                              # H_j u = L_j^{-1} G_j u
        inner = np.empty((q, q))
        if q == 1:
            J00 = self.f0 * i00
            v0 = J00 * h0
            inner[0, 0] = J00 @ J00 - (dof / pwrss) * (v0 @ v0)
            if reml and p:
                Hx0, _ = self._hx(i00, l10, i11, slice(0, p))
                Y, _ = lapack.dtrtrs(R[:p, :p], Hx0 * J00, lower=1)
                inner[0, 0] -= float(np.einsum("ij,ij->", Y, Y))
            return inner
        h1 = hg[self.m:]
        h1 -= l10 * h0
        h1 *= i11
        # rows J00, J10, J01, J11, v_j0, v_j1 of one buffer: C = V V' in one product
        V = self._V
        J00, J10, J01, J11 = V[0], V[1], V[2], V[3]
        np.multiply(self.f0, i00, out=J00)
        np.multiply(self.f1, i00, out=J01)
        np.multiply(l10, J00, out=J10)
        J10 *= i11
        np.negative(J10, out=J10)
        np.multiply(l10, J01, out=J11)
        np.subtract(self.f2, J11, out=J11)
        J11 *= i11
        np.multiply(J00, h0, out=V[4])
        V[4] += J10 * h1
        np.multiply(J01, h0, out=V[5])
        V[5] += J11 * h1
        C = V @ V.T
        c = dof / pwrss
        inner[0, 0] = C[0, 0] + C[1, 1] - c * C[4, 4]
        inner[0, 1] = inner[1, 0] = C[0, 2] + C[1, 3] - c * C[4, 5]
        inner[1, 1] = C[2, 2] + C[3, 3] - c * C[5, 5]
        if reml and p:
            m = self.m
            Hx0, Hx1 = self._hx(i00, l10, i11, slice(0, p))
            Kx = np.empty((p, 2 * m))
            np.multiply(Hx0, J00, out=Kx[:, :m])
            Kx[:, :m] += Hx1 * J10
            np.multiply(Hx0, J01, out=Kx[:, m:])
            Kx[:, m:] += Hx1 * J11
            Y, _ = lapack.dtrtrs(R[:p, :p], Kx, lower=1)
            Y0, Y1 = Y[:, :m], Y[:, m:]
            inner[0, 0] -= float(np.einsum("ij,ij->", Y0, Y0))
            inner[1, 1] -= float(np.einsum("ij,ij->", Y1, Y1))
            inner[0, 1] = inner[1, 0] = inner[0, 1] - float(np.einsum("ij,ij->", Y0, Y1))
        return inner
