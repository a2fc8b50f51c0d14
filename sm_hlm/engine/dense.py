"""Dense reference computations on small data (n x n matrices; for tests only).

Notes
-----
With Z = [Z_1 ... Z_K] (level-major columns per term), Lambda the block
diagonal of I_{m_k} (x) Lambda_k and V = I + Z Lambda Lambda' Z':

    beta = (X'V^{-1}X)^{-1} X'V^{-1}y,   r^2 = (y - X beta)'V^{-1}(y - X beta),
    u = Lambda'Z'V^{-1}(y - X beta),     b = Lambda u,
    ML   = log|V| + n (1 + log(2 pi r^2 / n)),
    REML = log|V| + log|X'V^{-1}X| + (n - p)(1 + log(2 pi r^2 / (n - p))),
    Var(b | y) = sigma^2 Lambda (Lambda'Z'Z Lambda + I)^{-1} Lambda'.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .terms import RETerm, ThetaLayout

__all__ = ["dense_z", "dense_reference"]


def dense_z(term: RETerm) -> np.ndarray:
    """The n x (S m) model matrix of one term, level-major columns."""
    n, S = term.z.shape
    Z = np.zeros((n, S * term.n_levels))
    rows = np.arange(n)
    for s in range(S):
        Z[rows, term.refs * S + s] = term.z[:, s]
    return Z


def dense_reference(terms: Sequence[RETerm], exog: np.ndarray, endog: np.ndarray,
                    theta: np.ndarray, *, reml: bool) -> dict:
    """Deviance, beta, sigma^2, b and conditional variances from dense n x n algebra."""
    X = np.asarray(exog, float)
    y = np.asarray(endog, float)
    n, p = X.shape
    layout = ThetaLayout(terms)
    lams = layout.lambdas(theta)
    Zs = [dense_z(t) for t in terms]
    Z = np.hstack(Zs)
    blocks = [np.kron(np.eye(t.n_levels), lam) for t, lam in zip(terms, lams)]
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    pos = 0
    for B in blocks:
        Lam[pos:pos + len(B), pos:pos + len(B)] = B
        pos += len(B)
    ZL = Z @ Lam
    V = np.eye(n) + ZL @ ZL.T
    Vi = np.linalg.inv(V)
    xtvx = X.T @ Vi @ X
    beta = np.linalg.solve(xtvx, X.T @ Vi @ y)
    res = y - X @ beta
    pwrss = float(res @ Vi @ res)
    logdet_V = float(np.linalg.slogdet(V)[1])
    if reml:
        dev = logdet_V + float(np.linalg.slogdet(xtvx)[1]) + (n - p) * (
            1 + np.log(2 * np.pi * pwrss / (n - p)))
        sigma2 = pwrss / (n - p)
    else:
        dev = logdet_V + n * (1 + np.log(2 * np.pi * pwrss / n))
        sigma2 = pwrss / n
    u = ZL.T @ Vi @ res
    b = Lam @ u
    P = ZL.T @ ZL + np.eye(q)
    cv = sigma2 * Lam @ np.linalg.inv(P) @ Lam.T
    b_terms, cv_terms = [], []
    pos = 0
    for t in terms:
        size = t.S * t.n_levels
        b_terms.append(b[pos:pos + size].reshape(t.n_levels, t.S))
        blk = cv[pos:pos + size, pos:pos + size]
        cv_terms.append(np.stack([blk[l * t.S:(l + 1) * t.S, l * t.S:(l + 1) * t.S]
                                  for l in range(t.n_levels)]))
        pos += size
    return {"deviance": float(dev), "beta": beta, "sigma2": sigma2, "pwrss": pwrss,
            "b": b_terms, "condvar": cv_terms, "cov_beta": sigma2 * np.linalg.inv(xtvx),
            "logdet_V": logdet_V}
