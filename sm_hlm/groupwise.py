"""Group-by-group quantities of the course notes, vectorised over groups.

- per-group OLS coefficients (the notes' ``BETA.OLS``) and their ad-hoc mean
  and covariance;
- the marginal covariance Z_j Psi Z_j' + sigma^2 I of a group;
- the marginal log-likelihood computed group by group with the multivariate
  normal density (slow on purpose: a test oracle for the profiled deviance).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .engine.linalg import (ALIAS_TOL, batched_back_solve, batched_cholesky, batched_forward_solve,
                     group_crossprod, sequential_rank_cholesky)

if TYPE_CHECKING:
    from .model import HLM

__all__ = ["group_ols", "group_ols_summary", "marginal_cov", "marginal_loglike_dense"]

_ALIAS_TOL = ALIAS_TOL   # see sm_hlm.engine.linalg.ALIAS_TOL


def group_ols(model: "HLM", *, exog: str = "re") -> pd.DataFrame:
    """Per-group least-squares coefficients (BETA.OLS of the notes).

    Parameters
    ----------
    model
        A fitted or unfitted :class:`~sm_hlm.HLM`.
    exog
        ``"re"`` regresses y_j on the random-effects design Z_j (the notes:
        mscore on ses within each school); ``"fe"`` on X_j.

    Returns
    -------
    DataFrame, one row per group, one column per regressor.  A coefficient
    whose column is aliased in that group (too few rows, or no variation) is
    NaN, as R's ``lm`` reports NA; earlier columns are still estimated.

    Notes
    -----
    beta_hat_j = (X_j'X_j)^{-1} X_j'y_j, solved for all groups at once from
    the per-group cross products with a sequential Cholesky that drops
    aliased columns in order (R's pivoting rule).
    """
    if exog not in ("re", "fe"):
        raise ValueError(f"exog must be 're' or 'fe', got {exog!r}")
    D = model.exog_re if exog == "re" else model.exog
    names = list(model.re_design.names if exog == "re" else model.exog_names)
    Ds = model._sorted_rows(D)
    ys = model._sorted_rows(model.endog)[:, None]
    M = group_crossprod(Ds, Ds, model._starts)
    b = group_crossprod(Ds, ys, model._starts)
    _, kept = sequential_rank_cholesky(M, tol=_ALIAS_TOL)
    k = D.shape[1]
    keep2 = kept[:, None, :] & kept[None, :, :]
    eye = np.eye(k)[:, :, None]
    M2 = np.where(keep2, M, 0.0) + eye * (~kept)[None, :, :]
    L = batched_cholesky(M2)
    coef = batched_back_solve(L, batched_forward_solve(L, b * kept[:, None, :]))[:, 0, :]
    coef = np.where(kept, coef, np.nan)
    return pd.DataFrame(coef.T, index=model.group_labels, columns=names)


def group_ols_summary(model: "HLM", *, exog: str = "re") -> tuple[pd.Series, pd.DataFrame]:
    """Ad-hoc estimates from BETA.OLS: column means (NaN ignored, as
    ``apply(BETA.OLS, 2, mean, na.rm=TRUE)``) and the covariance of the
    complete rows (``cov(BETA.OLS, use="complete.obs")``)."""
    B = group_ols(model, exog=exog)
    return B.mean(axis=0, skipna=True), B.dropna().cov()


def _group_rows(model: "HLM", group: Any) -> np.ndarray:
    try:
        j = model.group_labels.get_loc(group)
    except KeyError:
        raise KeyError(f"group {group!r} is not in {model.group_name!r}") from None
    return np.flatnonzero(model.group_codes == j)


def marginal_cov(model: "HLM", group: Any, cov_re: np.ndarray, scale: float) -> pd.DataFrame:
    """V_j = Z_j Psi Z_j' + sigma^2 I for one group, labelled by row."""
    rows = _group_rows(model, group)
    Z = model.exog_re[rows]
    V = Z @ np.asarray(cov_re) @ Z.T + scale * np.eye(len(rows))
    labels = model.data.row_labels[rows] if model.data.row_labels is not None else rows
    return pd.DataFrame(V, index=labels, columns=labels)


def marginal_loglike_dense(model: "HLM", fe_params: np.ndarray, cov_re: np.ndarray,
                           scale: float) -> float:
    """sum_j log dmvnorm(y_j; X_j beta, Z_j Psi Z_j' + sigma^2 I), group by group.

    This is the notes' likelihood, computed literally with one dense
    multivariate normal density per group.  It loops over groups in Python
    and is meant as an independent check of the fast profiled deviance.
    """
    from scipy.stats import multivariate_normal

    beta = np.asarray(fe_params, dtype=float)
    psi = np.asarray(cov_re, dtype=float)
    total = 0.0
    order = model._order
    bounds = np.append(model._starts, len(order))
    for j in range(model.n_groups):
        rows = order[bounds[j]:bounds[j + 1]]
        Z = model.exog_re[rows]
        V = Z @ psi @ Z.T + scale * np.eye(len(rows))
        total += multivariate_normal.logpdf(model.endog[rows], model.exog[rows] @ beta, V)
    return float(total)
