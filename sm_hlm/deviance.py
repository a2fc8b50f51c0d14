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

from .linalg import batched_cholesky, batched_forward_solve

__all__ = ["SufficientStats", "DevianceTerms", "ProfiledDeviance"]

LOG2PI = float(np.log(2.0 * np.pi))


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
    """

    def __init__(self, stats: SufficientStats, lambda_, *, reml: bool):
        self.stats = stats
        self.lambda_ = lambda_
        self.reml = reml
        self.n_evals = 0
        self._eye = np.eye(stats.q)[:, :, None]

    def terms(self, theta: np.ndarray) -> DevianceTerms | None:
        """All pieces at ``theta``; None where A(theta) is not positive definite."""
        s = self.stats
        p = s.k_fe
        if s.q:
            lam = self.lambda_(theta)
            T = np.tensordot(lam.T, s.ZtZ, axes=(1, 0))            # (q, q, m): Lam' ZtZ
            M = np.tensordot(T, lam, axes=(1, 0)).transpose(0, 2, 1) + self._eye
            L = batched_cholesky(M)
            C = batched_forward_solve(L, np.tensordot(lam.T, s.ZtW, axes=(1, 0)))
            A = s.WtW - np.tensordot(C, C, axes=([0, 2], [0, 2]))
            logdet_L = 2.0 * float(sum(np.log(L[i, i]).sum() for i in range(s.q)))
        else:
            L = np.zeros((0, 0, 0))
            C = np.zeros((0, p + 1, 0))
            A = s.WtW
            logdet_L = 0.0
        try:
            R = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        RX = R[:p, :p]
        beta = np.linalg.solve(RX.T, R[p, :p]) if p else np.zeros(0)
        diag = np.diag(RX)
        return DevianceTerms(theta=np.asarray(theta, float), L=L, C=C, R=R, beta=beta,
                             pwrss=float(R[p, p] ** 2), logdet_L=logdet_L,
                             logdet_RX=2.0 * float(np.log(diag).sum()))

    def from_terms(self, t: DevianceTerms) -> float:
        n, p = self.stats.nobs, self.stats.k_fe
        if self.reml:
            dof = n - p
            return t.logdet_L + t.logdet_RX + dof * (1.0 + LOG2PI + np.log(t.pwrss / dof))
        return t.logdet_L + n * (1.0 + LOG2PI + np.log(t.pwrss / n))

    def __call__(self, theta: np.ndarray) -> float:
        self.n_evals += 1
        t = self.terms(theta)
        if t is None or not np.isfinite(t.pwrss) or t.pwrss <= 0:
            return np.inf
        return float(self.from_terms(t))

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
        t = self.terms(theta)
        if t is None:
            return np.inf
        n, p = self.stats.nobs, self.stats.k_fe
        if self.reml:
            return (t.logdet_L + t.logdet_RX + (n - p) * (LOG2PI + np.log(scale))
                    + t.pwrss / scale)
        # pwrss(beta) = r^2 + (beta - beta_theta)' X'V^-1X (beta - beta_theta)
        d = np.asarray(beta) - t.beta
        RX = t.R[:p, :p]
        pw = t.pwrss + float(np.sum((RX.T @ d) ** 2))
        return t.logdet_L + n * (LOG2PI + np.log(scale)) + pw / scale
