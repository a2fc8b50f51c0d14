"""An independent, numerically stable log-likelihood of a fitted model.

The package computes the profiled deviance from per-group cross products
(Z_j'Z_j, Z_j'W_j, W'W), which loses digits when columns are large or
nearly collinear.  This oracle never forms a cross product: it works with
orthogonal (Householder QR) factorisations of the per-group data, so it is
accurate wherever the problem itself is well posed.  It checks that a
result's ``llf`` is the log-likelihood (or REML criterion) of its reported
estimates.

Notes
-----
With Psi = sigma^2 Lambda Lambda' and V_j = sigma^2 (I + Z_j Lambda Lambda' Z_j'),
for each group j let A_j = [Z_j Lambda; I_q] ((n_j + q) x q) with
A_j = Q_j R_j.  Then

    log|I + Z_j Lambda Lambda' Z_j'| = log|I + Lambda' Z_j'Z_j Lambda| = log|R_j|^2,

and for any columns w, the residual of the augmented least-squares problem
e_j = (I - Q_j Q_j') [w_j; 0] satisfies e_j'e_j = w_j' (I + Z_j Lambda Lambda' Z_j')^{-1} w_j.
Stacking the e_j of all groups into E:

    ML:   -2 l(beta, sigma^2, theta) = n log(2 pi sigma^2) + sum_j log|R_j|^2
                                       + |E(y - X beta)|^2 / sigma^2
    REML: -2 l_R(sigma^2, theta)      = (n - p) log(2 pi sigma^2) + sum_j log|R_j|^2
                                       + log|T_X|^2 + t^2 / sigma^2

where E([X y]) = Q_E T with T upper triangular, T_X its leading p x p block
(T_X'T_X = X'V^{-1}X sigma^2) and t = T[p, p] (the GLS residual norm): the
REML criterion of lme4 at (theta, sigma), which does not depend on beta.

Groups are processed in batches of equal padded size (powers of two; zero
rows change neither R_j nor e_j), so the loop is over a dozen size classes,
not over groups.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["augmented_residuals", "oracle_loglike", "oracle_loglike_results"]

LOG2PI = float(np.log(2.0 * np.pi))


def augmented_residuals(exog_re: np.ndarray, lam: np.ndarray, codes: np.ndarray,
                        columns: np.ndarray) -> tuple[float, np.ndarray]:
    """sum_j log|I + Lambda'Z_j'Z_j Lambda| and the stacked residuals E.

    Parameters
    ----------
    exog_re
        Z, (n, q).
    lam
        Lambda, (q, q).
    codes
        Group code of every row, 0..m-1.
    columns
        W, (n, k): the columns to whiten.

    Returns
    -------
    logdet, E
        E'E = W' (I + Z Lambda Lambda' Z')^{-1} W (block diagonal over groups).
    """
    W = np.asarray(columns, dtype=float)
    if W.ndim == 1:
        W = W[:, None]
    n, k = W.shape
    q = lam.shape[0]
    if q == 0:
        return 0.0, W
    ZL = np.asarray(exog_re, dtype=float) @ lam
    codes = np.asarray(codes)
    m = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=m)
    order = np.argsort(codes, kind="stable")
    cap_of_group = 1 << np.ceil(np.log2(np.maximum(sizes, 1))).astype(int)
    logdet = 0.0
    parts = []
    for cap in np.unique(cap_of_group):                  # a dozen size classes at most
        groups = np.flatnonzero(cap_of_group == cap)
        local = np.full(m, -1)
        local[groups] = np.arange(len(groups))
        rows = order[local[codes[order]] >= 0]
        li = local[codes[rows]]
        A = np.zeros((len(groups), cap + q, q))
        B = np.zeros((len(groups), cap + q, k))
        # position of each selected row within its group (rows keep the sorted order)
        rpos = np.arange(len(rows)) - np.concatenate([[0], np.cumsum(sizes[groups])[:-1]])[li]
        A[li, rpos, :] = ZL[rows]
        B[li, rpos, :] = W[rows]
        A[:, cap:, :] = np.eye(q)
        Q, R = np.linalg.qr(A)
        logdet += 2.0 * float(np.log(np.abs(np.diagonal(R, axis1=1, axis2=2))).sum())
        E = B - Q @ (np.swapaxes(Q, 1, 2) @ B)
        parts.append(E.reshape(-1, k))
    return logdet, np.concatenate(parts, axis=0)


def oracle_loglike(model: Any, theta: np.ndarray, fe_params: np.ndarray, scale: float, *,
                   reml: bool) -> float:
    """Log-likelihood (ML) or REML log-likelihood of ``model`` at given estimates.

    Parameters
    ----------
    model
        An :class:`sm_hlm.HLM` (independent errors).
    theta
        Relative covariance factor's free entries (the model's theta order).
    fe_params
        Fixed effects (ignored for REML, whose criterion does not depend on them).
    scale
        sigma^2.
    reml
        Return lme4's REML log-likelihood -REMLcrit/2 at (theta, sigma^2).
    """
    lam = model.re_design.lambda_(np.asarray(theta, dtype=float))
    y = np.asarray(model.endog, dtype=float)
    X = np.asarray(model.exog, dtype=float)
    n, p = X.shape
    if reml:
        logdet, E = augmented_residuals(model.exog_re, lam, model.group_codes,
                                        np.column_stack([X, y]))
        T = np.linalg.qr(E, mode="r")
        d = np.abs(np.diag(T))
        logdet_x = 2.0 * float(np.log(d[:p]).sum())
        t2 = float(T[p, p] ** 2)
        dev = (n - p) * (LOG2PI + np.log(scale)) + logdet + logdet_x + t2 / scale
    else:
        r = y - X @ np.asarray(fe_params, dtype=float)
        logdet, E = augmented_residuals(model.exog_re, lam, model.group_codes, r)
        dev = n * (LOG2PI + np.log(scale)) + logdet + float(np.sum(E * E)) / scale
    return -0.5 * float(dev)


def oracle_loglike_results(res: Any) -> float:
    """:func:`oracle_loglike` at a result's ``theta``, ``fe_params``, ``scale``."""
    return oracle_loglike(res.model, res.theta, np.asarray(res.fe_params, dtype=float),
                          float(res.scale), reml=bool(res.reml))
