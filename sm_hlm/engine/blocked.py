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
profiled deviances are those of :mod:`sm_hlm.deviance`:

    ML:   log|L|^2 + n (1 + log(2 pi r^2 / n))
    REML: log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController

from ..linalg import batched_cholesky, batched_forward_solve_T
from .structure import BlockedStructure
from .terms import RETerm, ThetaLayout

__all__ = ["BlockedFactor", "BlockedDeviance", "LOG2PI"]

LOG2PI = float(np.log(2.0 * np.pi))
#: Below this size the dense factorization runs with the caller's BLAS threads.
_PIN_MIN = 64
_CONTROLLER: ThreadpoolController | None = None


def _controller() -> ThreadpoolController:
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _kron_t(lam_a: np.ndarray, lam_b: np.ndarray) -> np.ndarray:
    """kron(Lambda_a', Lambda_b'): vec-row (alpha, beta) of Lambda_a' B Lambda_b."""
    return np.kron(lam_a.T, lam_b.T)


def lambda_transform(lam_a: np.ndarray, A: np.ndarray, lam_b: np.ndarray) -> np.ndarray:
    """Lambda_a' A_l Lambda_b for a stack A of shape (S_a, S_b, n)."""
    Sa, Sb, n = A.shape
    return (_kron_t(lam_a, lam_b) @ A.reshape(Sa * Sb, n)).reshape(Sa, Sb, n)


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
    memory_limit
        Passed to :class:`BlockedStructure`.

    Notes
    -----
    See the module notes; the symbolic work is done once in the constructor.
    """

    def __init__(self, terms: Sequence[RETerm], exog: np.ndarray, endog: np.ndarray, *,
                 reml: bool, pin_blas_threads: bool = True, memory_limit: int | None = None):
        self.structure = BlockedStructure(terms, exog, endog, memory_limit=memory_limit)
        self.layout = ThetaLayout(terms)
        self.reml = bool(reml)
        self.pin_blas_threads = bool(pin_blas_threads)
        self.n_evals = 0

    # ------------------------------------------------------------------ numeric factor
    def _sorted_lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        lams = self.layout.lambdas(theta)
        return [lams[k] for k in self.structure.order]

    def factor(self, theta: np.ndarray) -> BlockedFactor | None:
        """The blocked factor at ``theta``; None where Omega(theta) is not positive definite."""
        st = self.structure
        K, J, r, N = st.K, st.J, st.r, st.N_D
        lams = self._sorted_lambdas(theta) + [np.eye(r)]
        # 1. fill
        diag = []
        for j in range(J):
            M = lambda_transform(lams[j], st.A_diag[j], lams[j])
            M[np.arange(st.S[j]), np.arange(st.S[j])] += 1.0
            diag.append(M)
        off = {(i, j): lambda_transform(lams[i], st.A_off[(i, j)], lams[j])
               for j in range(J) for i in range(j + 1, K + 1)}
        D = np.zeros((N, N))
        vals = []
        for k in range(J, K + 1):
            for i in range(k, K + 1):
                if i == k:
                    A = st.A_diag[k] if k < K else st.WtW[:, :, None]
                else:
                    A = st.A_off[(i, k)]
                vals.append(lambda_transform(lams[i], A, lams[k]).ravel())
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
            for i in range(j + 1, K + 1):
                pat = st.patterns[(i, j)]
                # every level occurs, so a pattern with m_j pairs has cols == 0..m_j-1
                Lg = L if pat.size == st.m[j] else L[:, :, pat.cols]
                off[(i, j)] = batched_forward_solve_T(Lg, off[(i, j)])
            dvals = []
            for g in st.updates[j]:
                prod = _products(off[(g.i, j)], off[(g.k, j)], g.p, g.q)
                if g.in_dense:
                    dvals.append((g.d_slot.ravel(), prod.ravel()))
                else:
                    tgt = diag[g.k] if g.i == g.k else off[(g.i, g.k)]
                    upd = np.bincount(g.flat.ravel(), weights=prod.ravel(), minlength=tgt.size)
                    tgt -= upd.reshape(tgt.shape)
            if dvals:
                slots = np.concatenate([s for s, _ in dvals])
                w = np.concatenate([v for _, v in dvals])
                Df[st.d_update_pos[j]] -= np.bincount(slots, weights=w,
                                                      minlength=len(st.d_update_pos[j]))
        # 3. dense block (C-order lower triangle = Fortran-order upper triangle)
        if self.pin_blas_threads and N >= _PIN_MIN:
            with _controller().limit(limits=1, user_api="blas"):
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
        f = self.factor(theta)
        return np.inf if f is None else self.from_factor(f)

    @property
    def theta_lower(self) -> np.ndarray:
        return self.layout.lower

    def theta_start(self) -> np.ndarray:
        return self.layout.start()


def _products(Li: np.ndarray, Lk: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """prod[a, b, t] = sum_s Li[a, s, p_t] Lk[b, s, q_t], shape (S_i, S_k, T)."""
    Si, Sj, _ = Li.shape
    Sk = Lk.shape[0]
    if Sj == 1:
        return Li[:, 0, p][:, None, :] * Lk[:, 0, q][None, :, :]
    Gi, Gk = Li[:, :, p], Lk[:, :, q]
    out = Gi[:, None, 0, :] * Gk[None, :, 0, :]
    for s in range(1, Sj):
        out += Gi[:, None, s, :] * Gk[None, :, s, :]
    return out
