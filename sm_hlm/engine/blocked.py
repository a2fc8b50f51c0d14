"""The blocked Cholesky factor of Omega(theta) and the profiled deviance.

Notes
-----
With the terms, patterns and triples of
:class:`~sm_hlm.engine.structure.BlockedStructure`, one evaluation
(MixedModels.jl's ``updateL!``; Bates et al. 2015, section 3) is:

1. Fill: L[k, k] = Lambda_k' A[k, k] Lambda_k + I (per level for the BD
   prefix, into D for the rest), L[i, j] = Lambda_i' A[i, j] Lambda_j
   (Lambda = I for the [X y] pseudo-term).
2. For each BD column j in turn: factor L[j, j] level by level (batched
   small Cholesky), L[i, j] <- L[i, j] L[j, j]^{-T} for every block below,
   then L[i, k] -= L[i, j] L[k, j]' for i >= k > j through the triples.
3. Factor the dense block D in place (LAPACK ``potrf``).

The last p + 1 rows of D's factor hold R = [[R_X, 0], [r', r_yy]] with
R_X R_X' = X'V^{-1}X and r_yy^2 = r^2(theta), the penalised residual sum of
squares, V = I + Z Lambda Lambda' Z'.  With log|L|^2 = 2 sum log diag over
all random-effects blocks (= log|Lambda'Z'Z Lambda + I| = log|V|), the
profiled deviances are those of :mod:`sm_hlm.engine.deviance`:

    ML:   log|L|^2 + n (1 + log(2 pi r^2 / n))
    REML: log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from .linalg import (batched_cholesky, batched_forward_solve_T, batched_inverse_lower,
                     single_blas_thread)
from .structure import BlockedStructure
from .terms import RETerm, ThetaLayout

__all__ = ["BlockedFactor", "BlockedDeviance", "LOG2PI"]

LOG2PI = float(np.log(2.0 * np.pi))
#: Below this size the dense factorization runs with the caller's BLAS threads.
_PIN_MIN = 64
def lambda_transform(lam_a: np.ndarray | None, A: np.ndarray, lam_b: np.ndarray) -> np.ndarray:
    """Lambda_a' A_l Lambda_b for a stack A of shape (S_a, S_b, n); ``lam_a`` None is I."""
    Sa, Sb, n = A.shape
    if lam_a is not None:
        A = (lam_a.T @ A.reshape(Sa, Sb * n)).reshape(Sa, Sb, n)
    return np.matmul(lam_b.T, A)


def _stack_transform(lams: list, rows: list, A: np.ndarray, lam_b: np.ndarray) -> np.ndarray:
    """Lambda_i' A[rows of i] Lambda_b for the stacked blocks below a BD column."""
    out = np.matmul(lam_b.T, A)
    K = len(lams) - 1
    for i, pos in rows:
        if i < K:
            S = lams[i].shape[0]
            blk = out[pos:pos + S]
            out[pos:pos + S] = (lams[i].T @ blk.reshape(S, -1)).reshape(blk.shape)
    return out


@dataclass
class BlockedFactor:
    """The factor at one theta.

    Attributes
    ----------
    theta : ndarray
        In the caller's term order.
    lambdas : list of ndarray
        Lambda_k in factorization order.
    diag : list of ndarray
        Lower factors L[j, j] of the BD columns, each (S_j, S_j, m_j).
    off : dict
        L[i, j] below the BD columns, (S_i, S_j, pattern size).
    D : ndarray
        Lower factor of the dense block (upper triangle not cleaned).
    logdet_L, logdet_RX, pwrss : float
    """

    theta: np.ndarray
    lambdas: list
    diag: list
    off: dict
    D: np.ndarray
    logdet_L: float
    logdet_RX: float
    pwrss: float

    def R(self, r: int) -> np.ndarray:
        return np.tril(self.D[-r:, -r:])


class BlockedDeviance:
    """Callable profiled ML or REML deviance of theta, for any number of factors.

    Parameters
    ----------
    terms
        Random-effects terms (caller's order; theta follows it).
    exog, endog
        X (n x p) and y.
    reml
        REML criterion instead of -2 log-likelihood.
    pin_blas_threads
        Run the dense factorization with one BLAS thread (OpenBLAS's threads
        oversubscribe small matrices on few cores).
    memory_limit, nobs
        Passed to :class:`BlockedStructure` (``nobs``: the number of
        observations the rows stand for, when they are pseudo-rows).

    Notes
    -----
    See the module notes; the symbolic work is done once in the constructor.
    """

    def __init__(self, terms: Sequence[RETerm], exog: np.ndarray, endog: np.ndarray, *,
                 reml: bool, pin_blas_threads: bool = True, memory_limit: int | None = None,
                 nobs: int | None = None):
        self.structure = BlockedStructure(terms, exog, endog, memory_limit=memory_limit,
                                          nobs=nobs)
        self.layout = ThetaLayout(terms)
        self.reml = bool(reml)
        self.pin_blas_threads = bool(pin_blas_threads)
        self.n_evals = 0
        self._work: np.ndarray | None = None

    def with_response(self, exog: np.ndarray, endog: np.ndarray) -> "BlockedDeviance":
        """The same deviance (terms, theta, symbolic analysis) for new [X y] data of the
        same shape (see :meth:`BlockedStructure.with_response`)."""
        import copy

        new = copy.copy(self)
        new.structure = self.structure.with_response(exog, endog)
        new.n_evals = 0
        new._work = None
        return new

    # ------------------------------------------------------------------ numeric factor
    def _sorted_lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        lams = self.layout.lambdas(theta)
        return [lams[k] for k in self.structure.order]

    def factor(self, theta: np.ndarray, *, reuse: bool = False) -> BlockedFactor | None:
        """The blocked factor at ``theta``; None where Omega(theta) is not positive definite.

        ``reuse=True`` factors the dense block in a buffer kept between calls
        (the deviance needs only the log-determinants; a later call overwrites
        the returned factor's ``D``).
        """
        st = self.structure
        K, J, r, N = st.K, st.J, st.r, st.N_D
        lams = self._sorted_lambdas(theta) + [np.eye(r)]
        # 1. fill
        diag = []
        for j in range(J):
            M = lambda_transform(lams[j], st.A_diag[j], lams[j])
            M[np.arange(st.S[j]), np.arange(st.S[j])] += 1.0
            diag.append(M)
        stack = [_stack_transform(lams, st.stack_rows[j], st.A_stack[j], lams[j])
                 for j in range(J)]
        off: dict = {(i, j): lambda_transform(lams[i], st.A_off[(i, j)], lams[j])
                     for j in range(J) for i in st.crossed_rows[j]}
        if reuse:
            if self._work is None:
                self._work = np.zeros((N, N))
            D = self._work
            D.fill(0.0)
        else:
            D = np.zeros((N, N))
        vals = []
        for k in range(J, K + 1):
            for i in range(k, K + 1):
                if i == k:
                    A = st.A_diag[k] if k < K else st.WtW[:, :, None]
                else:
                    A = st.A_off[(i, k)]
                vals.append(lambda_transform(lams[i] if i < K else None, A, lams[k]).ravel())
        Df = D.ravel()
        Df[st.d_fill_pos] = np.concatenate(vals)
        Df[st.d_term_diag] += 1.0
        logdet = 0.0
        # 2. block-diagonal columns
        for j in range(J):
            L = batched_cholesky(diag[j])
            dl = L[np.arange(st.S[j]), np.arange(st.S[j])]
            if not (np.all(np.isfinite(L)) and np.all(dl > 0)):
                return None
            logdet += 2.0 * float(np.log(dl).sum())
            diag[j] = L
            B = stack[j] = batched_forward_solve_T(L, stack[j])
            for i, pos in st.stack_rows[j]:
                off[(i, j)] = B[pos:pos + st.S[i]]
            for i in st.crossed_rows[j]:
                pat = st.patterns[(i, j)]
                # every level occurs, so a pattern with m_j pairs has cols == 0..m_j-1
                Lg = L if pat.size == st.m[j] else L[:, :, pat.cols]
                off[(i, j)] = batched_forward_solve_T(Lg, off[(i, j)])
            # nested parents and [X y]: products per level, summed over runs of levels
            for k, pos in st.stack_rows[j]:
                if k == K:
                    BX = B[pos:].reshape(r, -1)
                    D[N - r:, N - r:] -= BX @ BX.T
                    continue
                Sk = st.S[k]
                prod = np.einsum("asc,bsc->cab", B[pos:], B[pos:pos + Sk])
                agg = (st.aggregate[(j, k)] @ prod.reshape(st.m[j], -1)).T
                agg = agg.reshape(-1, Sk, st.m[k])
                diag[k] -= agg[:Sk]
                stack[k] -= agg[Sk:]
            # crossed terms: triples
            G = _relative_cov(L, lams[j]) if st.linear_columns[j] else None
            slots, dvals = [], []
            for g in st.updates[j]:
                tgt = Df if g.in_dense else off[(g.i, g.k)].reshape(-1)
                if g.mode == "linear":
                    U = (g.P @ G).reshape(g.lin_flat.shape)
                    tgt[g.lin_flat.ravel()] -= lambda_transform(
                        lams[g.i] if g.i < K else None, U, lams[g.k]).ravel()
                else:
                    prod = _products(off[(g.i, j)], off[(g.k, j)], g.p_gather, g.q_gather)
                    if g.in_dense:
                        slots.append(g.d_slot)
                        dvals.append(prod.ravel())
                    else:
                        tgt -= np.bincount(g.flat.ravel(), weights=prod.ravel(),
                                           minlength=tgt.size)
            if dvals:
                Df[st.d_update_pos[j]] -= np.bincount(np.concatenate(slots),
                                                      weights=np.concatenate(dvals),
                                                      minlength=len(st.d_update_pos[j]))
        # 3. dense block (C-order lower triangle = Fortran-order upper triangle)
        if self.pin_blas_threads and N >= _PIN_MIN:
            with single_blas_thread():
                _, info = lapack.dpotrf(D.T, lower=0, clean=0, overwrite_a=1)
        else:
            _, info = lapack.dpotrf(D.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            return None
        dd = np.diagonal(D)
        if not np.all(np.isfinite(dd)) or np.any(dd[:st.d_terms] <= 0):
            return None
        logdet += 2.0 * float(np.log(dd[:st.d_terms]).sum())
        p = st.k_fe
        rdiag = dd[st.d_terms:]
        pwrss = float(rdiag[p] ** 2)
        if not (np.isfinite(pwrss) and pwrss > 0) or (p and np.any(rdiag[:p] <= 0)):
            return None
        logdet_RX = 2.0 * float(np.log(rdiag[:p]).sum())
        return BlockedFactor(np.asarray(theta, float), lams[:K], diag, off, D, logdet,
                             logdet_RX, pwrss)

    # ------------------------------------------------------------------ deviance
    def profiled(self, pwrss: float, logdet_L: float, logdet_RX: float) -> float:
        """The profiled deviance from r^2, log|L|^2 and log|R_X|^2."""
        n, p = self.structure.nobs, self.structure.k_fe
        if self.reml:
            dof = n - p
            return float(logdet_L + logdet_RX + dof * (1.0 + LOG2PI + np.log(pwrss / dof)))
        return float(logdet_L + n * (1.0 + LOG2PI + np.log(pwrss / n)))

    def from_factor(self, f: BlockedFactor) -> float:
        return self.profiled(f.pwrss, f.logdet_L, f.logdet_RX)

    def __call__(self, theta: np.ndarray) -> float:
        self.n_evals += 1
        f = self.factor(theta, reuse=True)
        return np.inf if f is None else self.from_factor(f)

    @property
    def theta_lower(self) -> np.ndarray:
        return self.layout.lower

    def theta_start(self) -> np.ndarray:
        return self.layout.start()


def _relative_cov(L: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """vec of G_c = Lambda M_c^{-1} Lambda' for all levels, (s, t, c) flattened.

    With M_c = L_c L_c', G_c = (L_c^{-1} Lambda')' (L_c^{-1} Lambda').
    """
    S, _, m = L.shape
    if S == 1:
        return (lam[0, 0] / L[0, 0]) ** 2
    Li = batched_inverse_lower(L)
    F = np.einsum("abm,cb->acm", Li, lam)          # L^{-1} Lambda'
    return np.einsum("bam,bcm->acm", F, F).reshape(-1)


def _products(Li: np.ndarray, Lk: np.ndarray, p: np.ndarray | None,
              q: np.ndarray | None) -> np.ndarray:
    """prod[a, b, t] = sum_s Li[a, s, p_t] Lk[b, s, q_t], shape (S_i, S_k, T).

    ``p`` / ``q`` None means all stored blocks in order (no gather).
    """
    Gi = Li if p is None else Li[:, :, p]
    Gk = Lk if q is None else Lk[:, :, q]
    if Li.shape[1] == 1:
        return Gi[:, 0, None, :] * Gk[None, :, 0, :]
    return np.einsum("ast,bst->abt", Gi, Gk)
