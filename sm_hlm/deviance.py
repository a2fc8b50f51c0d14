"""The profiled deviance of a two-level linear mixed model.

Notes
-----
Following Bates, Maechler, Bolker & Walker (2015), write the random effects
as b = Lambda(theta) u with u ~ N(0, sigma^2 I).  For group j let

    L_j L_j' = Lambda' Z_j' Z_j Lambda + I,
    C_j = L_j^{-1} Lambda' Z_j' [X_j  y_j].

With W = [X y], the (p+1) x (p+1) matrix

    A(theta) = W'W - sum_j C_j' C_j = R R'   (R lower triangular)

is W' V^{-1} W up to sigma^2, where V = I + Z Lambda Lambda' Z'.  Its
Cholesky factor gives everything else: the GLS estimate
beta(theta) = R_X^{-T} r with R_X = R[:p, :p] and r = R[p, :p]', the
penalised residual sum of squares r^2(theta) = R[p, p]^2 and
log|R_X|^2.  With log|L|^2 = 2 sum_j sum_i log L_j[i, i], the profiled
deviances (-2 log-likelihood with beta and sigma^2 profiled out) are

    ML:   log|L|^2 + n (1 + log(2 pi r^2 / n))
    REML: log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))).

Only per-group sufficient statistics (Z_j'Z_j, Z_j'W_j, W'W) enter, so an
evaluation costs O(m q^3 + m q^2 p + m q p^2) with m groups and never
touches n x n matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linalg import batched_cholesky, batched_forward_solve_T, batched_inverse_lower

__all__ = ["SufficientStats", "DevianceTerms", "ProfiledDeviance"]

LOG2PI = float(np.log(2.0 * np.pi))
#: Largest number of entries of the per-group pair products for the fast path: beyond it
#: (many groups) the memory traffic of the pair products outweighs the saved numpy calls.
_PAIR_PRODUCT_LIMIT = 1_000_000
#: adj(M) rows from M's rows for a 2 x 2 matrix stored as (M00, M01, M10, M11).
_ADJ2 = np.array([[0, 0, 0, 1], [0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], dtype=float)


@dataclass(frozen=True)
class SufficientStats:
    """Per-group cross products of a (possibly whitened) model.

    Attributes
    ----------
    ZtZ : (q, q, m)
    ZtW : (q, p + 1, m)   Z_j' [X_j y_j]
    WtW : (p + 1, p + 1)  [X y]' [X y]
    nobs, k_fe
    """

    ZtZ: np.ndarray
    ZtW: np.ndarray
    WtW: np.ndarray
    nobs: int
    k_fe: int

    @property
    def q(self) -> int:
        return self.ZtZ.shape[0]


@dataclass(frozen=True)
class DevianceTerms:
    """The pieces of the profiled deviance at one theta."""

    theta: np.ndarray
    L: np.ndarray          # (q, q, m) per-group lower factors
    C: np.ndarray          # (q, p + 1, m)
    R: np.ndarray          # (p + 1, p + 1) lower factor of A(theta)
    beta: np.ndarray       # GLS estimate
    pwrss: float           # r^2(theta)
    logdet_L: float        # log|L|^2
    logdet_RX: float       # log|R_X|^2

    @property
    def xtvix(self) -> np.ndarray:
        """X' V^{-1} X (V relative to sigma^2)."""
        p = len(self.beta)
        RX = self.R[:p, :p]
        return RX @ RX.T


class ProfiledDeviance:
    """Callable profiled ML or REML deviance of theta.

    Parameters
    ----------
    stats
        The model's sufficient statistics.
    lambda_
        Maps theta to the q x q relative covariance factor.
    reml
        REML criterion instead of -2 log-likelihood.

    Notes
    -----
    The hot path (``__call__``) uses a (p+1, q, m) layout for Lambda' Z_j'W_j
    so that sum_j C_j'C_j is a single matrix product, forms
    Lambda' Z_j'Z_j Lambda for all groups with one (q^2 x q^2) product, and
    skips the GLS solve for beta (only r^2 and the log-determinants matter).
    """

    def __init__(self, stats: SufficientStats, lambda_, *, reml: bool):
        self.stats = stats
        self.lambda_ = lambda_
        self.reml = reml
        self.n_evals = 0
        q, m = stats.q, stats.ZtZ.shape[2] if stats.q else 0
        self._q = q
        self._m = m
        self._eye = np.eye(q).reshape(q * q, 1)
        self._ZtZ = stats.ZtZ.reshape(q * q, m)
        self._WtZ = np.ascontiguousarray(stats.ZtW.transpose(1, 0, 2))   # (p+1, q, m)
        self._diag = (np.arange(q), np.arange(q))
        # Pair products S_ab,j = W_j'z_a z_b'W_j (+ its transpose for a < b) so that
        # sum_j C_j'C_j = sum_{a<=b} sum_j G_j[a, b] S_ab,j with G_j = Lambda M_j^-1 Lambda'
        # is one matrix-vector product per evaluation (when it fits in memory).  They are
        # built at the second evaluation, so a deviance evaluated once (a structured
        # residual fit makes one per evaluation) never pays for them.
        r = stats.k_fe + 1
        self._pairs = [(a, b) for a in range(q) for b in range(a, q)]
        self._pair_flat = np.array([a * q + b for a, b in self._pairs], dtype=int)
        self._S: np.ndarray | None = None
        self._use_pairs = bool(q) and r * r * len(self._pairs) * m <= _PAIR_PRODUCT_LIMIT
        self._system_calls = 0

    def _build_pair_products(self) -> None:
        r, m = self.stats.k_fe + 1, self._m
        WtZ = self._WtZ
        S = np.empty((r, r, len(self._pairs), m))
        for k, (a, b) in enumerate(self._pairs):
            prod = WtZ[:, None, a, :] * WtZ[None, :, b, :]
            S[:, :, k, :] = prod + prod.transpose(1, 0, 2) if a != b else prod
        self._S = S.reshape(r * r, len(self._pairs) * m)

    def _factor(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """L (q, q, m), C (p+1, q, m), A (p+1, p+1) and log|L|^2 at theta."""
        s, q, m = self.stats, self._q, self._m
        if not q:
            return (np.zeros((0, 0, 0)), np.zeros((s.k_fe + 1, 0, 0)), s.WtW, 0.0)
        lam = self.lambda_(theta)
        lt = lam.T
        K = (lt[:, None, :, None] * lt[None, :, None, :]).reshape(q * q, q * q)
        M = (K @ self._ZtZ + self._eye).reshape(q, q, m)
        L = batched_cholesky(M)
        C = batched_forward_solve_T(L, np.matmul(lt, self._WtZ))
        Cf = C.reshape(C.shape[0], q * m)
        A = s.WtW - Cf @ Cf.T
        logdet_L = 2.0 * float(np.log(L[self._diag]).sum())
        return L, C, A, logdet_L

    def _inverse_factor(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        """A(theta) and log|L|^2 through G_j = Lambda M_j^-1 Lambda' (fast path)."""
        s, q, m = self.stats, self._q, self._m
        lam = self.lambda_(theta)
        lt = lam.T
        K = (lt[:, None, :, None] * lt[None, :, None, :]).reshape(q * q, q * q)
        M = K @ self._ZtZ + self._eye                    # (q*q, m), row a*q+b = M[a, b]
        if q == 1:
            logdet_L = float(np.log(M).sum())
            G = (lam[0, 0] ** 2) / M
        elif q == 2:
            # M^-1 = adj(M) / det(M); adj(M) is a fixed signed permutation of M's rows
            det = M[0] * M[3] - M[1] * M[1]
            logdet_L = float(np.log(det).sum())
            kl = (lam[:, None, :, None] * lam[None, :, None, :]).reshape(4, 4)
            G = ((kl @ _ADJ2)[self._pair_flat] @ M) / det
        else:
            L = batched_cholesky(M.reshape(q, q, m))
            logdet_L = 2.0 * float(np.log(L[self._diag]).sum())
            Li = batched_inverse_lower(L)
            Minv = np.einsum("kim,kjm->ijm", Li, Li).reshape(q * q, m)
            kl = (lam[:, None, :, None] * lam[None, :, None, :]).reshape(q * q, q * q)
            G = (kl @ Minv)[self._pair_flat]
        r = s.k_fe + 1
        A = s.WtW - (self._S @ G.reshape(-1)).reshape(r, r)
        return A, logdet_L

    def _system(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        """A(theta) and log|L|^2 by the fastest available path."""
        self._system_calls += 1
        if self._S is None and self._use_pairs and self._system_calls >= 2:
            self._build_pair_products()
        if self._S is not None:
            return self._inverse_factor(theta)
        _, _, A, logdet_L = self._factor(theta)
        return A, logdet_L

    def terms(self, theta: np.ndarray) -> DevianceTerms | None:
        """All pieces at ``theta``; None where A(theta) is not positive definite."""
        p = self.stats.k_fe
        L, C, A, logdet_L = self._factor(theta)
        try:
            R = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        RX = R[:p, :p]
        beta = np.linalg.solve(RX.T, R[p, :p]) if p else np.zeros(0)
        return DevianceTerms(theta=np.asarray(theta, float), L=L, C=C.transpose(1, 0, 2), R=R,
                             beta=beta, pwrss=float(R[p, p] ** 2), logdet_L=logdet_L,
                             logdet_RX=2.0 * float(np.log(np.diag(RX)).sum()))

    def _reduced(self, theta: np.ndarray) -> tuple[np.ndarray, float, float, float] | None:
        """Cholesky factor R of A(theta), r^2, log|L|^2 and log|R_X|^2 (None if A is not PD)."""
        p = self.stats.k_fe
        A, logdet_L = self._system(theta)
        try:
            R = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        pwrss = R[p, p] ** 2
        if not (np.isfinite(pwrss) and pwrss > 0):
            return None
        return R, pwrss, logdet_L, 2.0 * float(np.log(np.diag(R)[:p]).sum())

    def _profiled(self, pwrss: float, logdet_L: float, logdet_RX: float) -> float:
        n, p = self.stats.nobs, self.stats.k_fe
        if self.reml:
            dof = n - p
            return float(logdet_L + logdet_RX + dof * (1.0 + LOG2PI + np.log(pwrss / dof)))
        return float(logdet_L + n * (1.0 + LOG2PI + np.log(pwrss / n)))

    def __call__(self, theta: np.ndarray) -> float:
        self.n_evals += 1
        red = self._reduced(theta)
        return np.inf if red is None else self._profiled(*red[1:])

    def from_terms(self, t: DevianceTerms) -> float:
        return self._profiled(t.pwrss, t.logdet_L, t.logdet_RX)

    def scale(self, t: DevianceTerms) -> float:
        """The profiled sigma^2: r^2 / n (ML) or r^2 / (n - p) (REML)."""
        n, p = self.stats.nobs, self.stats.k_fe
        return t.pwrss / (n - p if self.reml else n)

    def deviance_at(self, theta: np.ndarray, beta: np.ndarray, scale: float) -> float:
        """-2 log-likelihood (or REML criterion) at given theta, beta and sigma^2.

        Not profiled: used for the observed information of the covariance
        parameters.  For REML ``beta`` is ignored (the criterion does not
        depend on it).
        """
        n, p = self.stats.nobs, self.stats.k_fe
        red = self._reduced(theta)
        if red is None:
            return np.inf
        R, pwrss, logdet_L, logdet_RX = red
        RX = R[:p, :p]
        if self.reml:
            return logdet_L + logdet_RX + (n - p) * (LOG2PI + np.log(scale)) + pwrss / scale
        # pwrss(beta) = r^2 + |R_X'(beta - beta_theta)|^2
        beta_theta = np.linalg.solve(RX.T, R[p, :p])
        pw = pwrss + float(np.sum((RX.T @ (np.asarray(beta) - beta_theta)) ** 2))
        return logdet_L + n * (LOG2PI + np.log(scale)) + pw / scale
