"""Results of models with a structured residual covariance: parameters, tables,
covariances, the dense oracle and the summary lines.

The fitting is :mod:`sm_hlm.residual_fit`; these functions read a fitted
:class:`~sm_hlm.HLMResults` (see the notes there for the scales and intervals).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .groupwise import _group_rows
from .engine.numdiff import jacobian_richardson

if TYPE_CHECKING:
    from .results import HLMResults
    from .whitening import ResidualKernel

__all__ = ["residual_params", "residual_param_table", "resid_normalized", "residual_cov",
           "marginal_cov", "loglike_dense", "structure_info", "residual_rows",
           "boundary_params", "padded_residual_cov"]

#: distance (unconstrained scale) from the box edge that counts as "ran to the boundary"
_BOUNDARY_TOL = 0.05
#: distance from a finite natural bound, relative to the range, that counts as the boundary
_BOUNDARY_REL = 1e-5




# ================================================================ parameters
def _kernel(results: "HLMResults") -> "ResidualKernel | None":
    return getattr(results.model, "_residual_kernel", None)


def _natural(results: "HLMResults") -> np.ndarray:
    kern = _kernel(results)
    return kern.natural(results.fit_result.residual_free) if kern is not None else np.zeros(0)


def residual_params(results: "HLMResults") -> pd.Series:
    """Natural-scale structure parameters (Phi, Rho, correlations, SD ratios)."""
    kern = _kernel(results)
    names = kern.param_names if kern is not None else []
    return pd.Series(_natural(results), index=names, name="residual_params", dtype=float)


def residual_param_table(results: "HLMResults", alpha: float = 0.05) -> pd.DataFrame:
    """Estimate, standard error and interval of each structure parameter.

    Columns ``Estimate``, ``Std.Err.``, ``[alpha/2``, ``1-alpha/2]``; empty
    for independent errors.
    """
    kern = _kernel(results)
    lo_name, hi_name = f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"
    if kern is None or kern.n_params == 0:
        return pd.DataFrame(columns=["Estimate", "Std.Err.", lo_name, hi_name], dtype=float)
    u = results.fit_result.residual_free
    nat = kern.natural(u)
    J = jacobian_richardson(kern.natural, u)                   # d nat / d u
    cov = J @ results.fit_result.residual_free_cov @ J.T
    se = np.sqrt(np.diag(cov))
    lo, hi = kern.structure.natural_bounds(kern.info)
    z = stats.norm.ppf(1 - alpha / 2)
    lower = np.full(len(nat), np.nan)
    upper = np.full(len(nat), np.nan)
    for i in range(len(nat)):     # loops over the few structure parameters
        if np.isfinite(lo[i]) and np.isfinite(hi[i]):
            x = (nat[i] - lo[i]) / (hi[i] - lo[i])
            g = np.log(x / (1 - x))
            gp = (hi[i] - lo[i]) / ((nat[i] - lo[i]) * (hi[i] - nat[i]))
            inv = lambda v, a=lo[i], b=hi[i]: a + (b - a) / (1 + np.exp(-v))  # noqa: E731
        else:
            g, gp, inv = np.log(nat[i] - lo[i]), 1.0 / (nat[i] - lo[i]), \
                (lambda v, a=lo[i]: a + np.exp(v))
        sl = abs(gp) * se[i]
        lower[i], upper[i] = inv(g - z * sl), inv(g + z * sl)
    return pd.DataFrame({"Estimate": nat, "Std.Err.": se, lo_name: lower, hi_name: upper},
                        index=kern.param_names)


def _boundary(kern: "ResidualKernel", u: np.ndarray) -> dict[str, str]:
    """Parameters at the edge of the optimiser's box, or within 1e-5 of a finite
    natural bound relative to the range (|Phi| > 0.99998: indistinguishable from 1)."""
    nat = kern.natural(u)
    lo, hi = kern.structure.natural_bounds(kern.info)
    out = {}
    for i, name in enumerate(kern.param_names):
        span = hi[i] - lo[i]
        rel = np.isfinite(span)
        near_lo = u[i] <= kern.free_lower[i] + _BOUNDARY_TOL or \
            (rel and (nat[i] - lo[i]) < _BOUNDARY_REL * span)
        near_hi = u[i] >= kern.free_upper[i] - _BOUNDARY_TOL or \
            (rel and (hi[i] - nat[i]) < _BOUNDARY_REL * span)
        if near_lo or near_hi:
            edge = lo[i] if near_lo else hi[i]
            out[name] = (f"{name} = {nat[i]:.7g} ran to its boundary {edge:g}"
                         + (" (the errors behave like a random walk or a group-level constant; "
                            "consider a random intercept)" if name == "Phi" and near_hi else ""))
    return out


def boundary_params(results: "HLMResults") -> list[str]:
    """Names of structure parameters that ran to the edge of their range."""
    kern = _kernel(results)
    if kern is None:
        return []
    return list(_boundary(kern, results.fit_result.residual_free))


# ================================================================ residuals
def resid_normalized(results: "HLMResults") -> np.ndarray:
    """U_j^{-1} (y_j - X_j beta - Z_j b_j) / sigma, caller's row order (nlme "normalized")."""
    resid = np.asarray(results.model.endog - results._fitted_array)
    kern = _kernel(results)
    if kern is None:
        return resid / np.sqrt(results.scale)
    return kern.whiten(results.fit_result.residual_free, resid) / np.sqrt(results.scale)


def _residual_block(results: "HLMResults", rows: np.ndarray) -> np.ndarray:
    kern = _kernel(results)
    if kern is None:
        return results.scale * np.eye(len(rows))
    nat = _natural(results)
    key = kern.key[rows]
    if kern.kind == "dense":
        key = key.astype(np.intp)
    elif kern.kind == "identity":
        key = np.arange(len(rows))
    by = kern.by_codes[rows]
    return kern.cov_rows(nat, results.scale, key[:, None], by[:, None], key[None, :],
                         by[None, :])


def _labels(results: "HLMResults", rows: np.ndarray, label: str) -> Any:
    model = results.model
    if label == "row":
        return model.data.row_labels[rows] if model.data.row_labels is not None else rows
    if label == "time":
        kern = _kernel(results)
        if kern is None or kern.kind == "identity":
            raise ValueError("label='time' needs a structure with a time or position variable")
        if kern.kind == "dense" and kern.slot_levels is not None:
            return pd.Index(kern.slot_levels[kern.key[rows].astype(np.intp)],
                            name=kern.info.index_name)
        return pd.Index(kern.key[rows], name=kern.info.index_name)
    raise ValueError(f"label must be 'row' or 'time', got {label!r}")


def residual_cov(results: "HLMResults", group: Any, *, label: str = "row") -> pd.DataFrame:
    """Sigma_j = sigma^2 S_j C_j S_j of one group, rows in the caller's order.

    ``label="row"`` labels rows and columns by the caller's row labels,
    ``label="time"`` by the time/position values.
    """
    rows = _group_rows(results.model, group)
    lab = _labels(results, rows, label)
    return pd.DataFrame(_residual_block(results, rows), index=lab, columns=lab)


def marginal_cov(results: "HLMResults", group: Any) -> pd.DataFrame:
    """Z_j Psi Z_j' + Sigma_j of one group, labelled by row."""
    model = results.model
    rows = _group_rows(model, group)
    Z = model.exog_re[rows]
    V = Z @ results.fit_result.cov_re @ Z.T + _residual_block(results, rows)
    lab = _labels(results, rows, "row")
    return pd.DataFrame(V, index=lab, columns=lab)


def padded_residual_cov(results: "HLMResults", *,
                        scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every group's residual covariance sigma^2 S_j R_j S_j, padded to the largest group.

    Returns
    -------
    rows : ndarray (m, k)
        Caller-order row of each slot (0 in the padding); within a group the
        rows are sorted by time/position.
    inside : ndarray (m, k), bool
        Which slots hold a row.
    cov : ndarray (m, k, k)
        The covariances (``scale`` instead of sigma^2 when given), identity
        on the padding.

    Notes
    -----
    m k^2 numbers, k the largest group: for panels and short series, as
    the inference of a structured model needs whole groups (dense per-group
    algebra, batched over the groups).
    """
    kern = _kernel(results)
    nat = _natural(results)
    s2 = float(results.scale if scale is None else scale)
    n = len(kern.order)
    sizes, starts = np.asarray(kern.sizes), np.asarray(kern.starts)
    k = int(sizes.max())
    inside = np.arange(k)[None, :] < sizes[:, None]                      # (m, k)
    rows = np.where(inside, kern.order[np.minimum(starts[:, None] + np.arange(k), n - 1)], 0)
    if kern.kind == "dense":
        key = kern.key.astype(np.intp)
    elif kern.kind == "identity":       # uncorrelated rows: a distinct key per row
        key = np.arange(n, dtype=float)
    else:
        key = kern.key
    by = kern.by_codes
    pair = inside[:, :, None] & inside[:, None, :]
    ra = np.broadcast_to(rows[:, :, None], pair.shape)[pair]
    rb = np.broadcast_to(rows[:, None, :], pair.shape)[pair]
    S = np.broadcast_to(np.eye(k), pair.shape).copy()
    S[pair] = kern.cov_rows(nat, s2, key[ra], by[ra], key[rb], by[rb])
    # the diagonal is the row's variance, whatever the correlation of equal keys
    sd = np.asarray(kern.structure.sd_levels(nat, kern.info), float) if kern.has_by else None
    diag = np.full(rows.shape, s2) if sd is None else s2 * sd[by[rows]] ** 2
    idx = np.arange(k)
    S[:, idx, idx] = np.where(inside, diag, 1.0)
    return rows, inside, S


def loglike_dense(results: "HLMResults") -> float:
    """ML log-likelihood at the estimates with one dense normal density per group (slow oracle)."""
    from scipy.stats import multivariate_normal

    model = results.model
    beta = results.fit_result.fe_params
    total = 0.0
    for g in model.group_labels:          # test oracle: loops over groups on purpose
        rows = _group_rows(model, g)
        V = marginal_cov(results, g).to_numpy()
        total += multivariate_normal.logpdf(model.endog[rows], model.exog[rows] @ beta, V)
    return float(total)


# ================================================================ prediction
def _new_values(results: "HLMResults", exog: Any, residual_data: Any,
                n_new: int) -> dict[str, np.ndarray]:
    """Role -> values of the new rows' time/position and variance covariate.

    Looked up in ``residual_data`` (a mapping or DataFrame keyed by the
    variable's name or by ``"time"``/``"position"``/``"by"``, or an array
    when the structure has one variable), else in ``exog`` when it is a
    DataFrame holding the column.
    """
    kern = _kernel(results)
    s = kern.structure
    keys = {"index": s.index_keyword, "by": "by"}
    needed = {r: nm for r, nm in (("index", s.index_name), ("by", s.by_name)) if nm is not None}
    single = len(set(needed.values())) == 1
    out = {}
    for role, name in needed.items():
        src = None
        if isinstance(residual_data, (dict, pd.DataFrame)):
            for k in (name, keys[role]):
                if k in residual_data:
                    src = residual_data[k]
                    break
        elif residual_data is not None and single:
            src = residual_data
        if src is None and isinstance(exog, pd.DataFrame) and name in exog.columns:
            src = exog[name]
        if src is None:
            what = "variance covariate" if role == "by" else "time/position variable"
            raise KeyError(f"the new data lack the {what} {name!r} of {s!r}; include the "
                           f"column (formula models) or pass residual_data={{{name!r}: values}}")
        arr = np.asarray(src)
        if len(arr) != n_new:
            raise ValueError(f"{name!r} has {len(arr)} values for {n_new} new rows")
        out[role] = arr
    return out


def structure_info(results: "HLMResults") -> dict[str, str]:
    """Summary lines describing the structure in nlme's terms."""
    kern = _kernel(results)
    if kern is None:
        return {}
    out = kern.structure.describe(_natural(results), kern.info)
    bnd = boundary_params(results)
    if bnd:
        out["Boundary:"] = ", ".join(bnd)
    return out


def residual_rows(results: "HLMResults") -> list[dict[str, Any]]:
    """Residual rows of the random-effects table (one per variance level)."""
    kern = _kernel(results)
    scale = results.scale
    if kern is None or not kern.has_by:
        return [{"Groups": "Residual", "Name": "", "Variance": scale, "Std.Dev.": np.sqrt(scale)}]
    sd = kern.structure.sd_levels(_natural(results), kern.info)
    from .residual import _fmt_level
    rows = []
    for i, (lv, r) in enumerate(zip(kern.info.by_levels, sd)):
        rows.append({"Groups": "Residual" if i == 0 else "",
                     "Name": f"{kern.info.by_name}={_fmt_level(lv)}",
                     "Variance": scale * r ** 2, "Std.Dev.": np.sqrt(scale) * r})
    return rows
