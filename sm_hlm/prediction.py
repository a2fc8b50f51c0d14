"""Predictions from an HLM fit for the fitted rows or new data, with standard errors.

* :func:`predict_new` -- ``results.predict``: X beta (``random=False``) or
  X beta + Z b_j (``random=True``; rows of groups not in the fit get X beta).
* :func:`get_prediction` -- ``results.get_prediction``: the same means with
  standard errors and intervals as statsmodels' ``PredictionResults``.

Rows of new data with a missing (NaN/None) or infinite value in a variable
the prediction uses raise :class:`~sm_hlm.MissingDataError` naming the
columns (``missing="raise"``, the default) or get NaN (``missing="nan"``, as
statsmodels' ``predict``); the other rows are predicted as usual.  The
grouping column is needed only with ``random=True``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import nonfinite_rows

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["predict_new", "get_prediction", "predict_structured", "NewDesign", "frame_design", "array_design"]


class NewDesign:
    """Designs of the rows to predict.

    Attributes
    ----------
    X : (n, p) fixed-effects design (NaN rows where ``valid`` is False)
    Z : (n, q) random-effects design, or None with ``random=False``
    groups : (n,) group labels, or None
    valid : (n,) bool, rows with every variable present
    index : row labels of the new data (None for arrays)
    """

    def __init__(self, X: np.ndarray, Z: np.ndarray | None, groups: np.ndarray | None,
                 valid: np.ndarray, index: Any, bad: dict[str, np.ndarray] | None = None):
        self.X, self.Z, self.groups, self.valid, self.index = X, Z, groups, valid, index
        #: column (or array) name -> mask of its missing rows
        self.bad = bad or {}

    def check(self, missing: str) -> None:
        """Apply the ``missing`` policy: raise naming the columns, or keep NaN rows."""
        if missing not in ("raise", "nan"):
            raise ValueError(f"missing must be 'raise' or 'nan', got {missing!r}")
        if missing == "nan" or self.valid.all():
            return
        from .exceptions import MissingDataError
        detail = ", ".join(f"{k!r} ({int(m.sum())} rows)" for k, m in self.bad.items() if m.any())
        first = int(np.flatnonzero(~self.valid)[0])
        label = self.index[first] if self.index is not None else first
        raise MissingDataError(
            f"missing (NaN) or infinite values in the new data: {detail or 'groups'}; first at "
            f"row {label!r}. Pass missing='nan' to predict NaN for these rows")


def _variables(model: Any, random: bool) -> set[str]:
    from .data import formula_variables
    names = formula_variables(model.parsed_formula.fixed_rhs)
    if random:
        for s in model.re_specs:
            names |= formula_variables(s.expr)
        names.add(model.group_name)
    return names


def _fill(values: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n,) + values.shape[1:], np.nan)
    out[valid] = values
    return out


def _random_design(model: Any, ok: pd.DataFrame, valid: np.ndarray) -> np.ndarray:
    """Z of the complete rows ``ok`` of new data, NaN rows where ``valid`` is False."""
    from .formula.engines import build_from_spec, spec_column_names

    blocks: dict[str, pd.DataFrame] = {}
    for term in model.re_design.terms:
        key = term.expr if term.expr is not None else str(id(term.design_info))
        if key in blocks:     # the terms of one (x || g) share a design
            continue
        if len(ok):
            Zt = build_from_spec(term.design_info, ok)
        else:
            Zt = pd.DataFrame(columns=spec_column_names(term.design_info))
        blocks[key] = Zt
    Zdf = pd.concat(list(blocks.values()), axis=1)
    Zdf = Zdf.loc[:, ~Zdf.columns.duplicated()]
    return _fill(Zdf[list(model.re_design.names)].to_numpy(dtype=float), valid, len(valid))


def frame_design(results: "HLMResults", data: pd.DataFrame, *, random: bool) -> NewDesign:
    """:class:`NewDesign` of a DataFrame of new data for a formula model."""
    from .formula.engines import build_from_spec

    model = results.model
    info = getattr(model, "fixed_design_info", None)
    if info is None:
        raise TypeError("predict(DataFrame) needs a model made by from_formula; pass arrays "
                        "(exog, exog_re=, groups=) instead")
    need_re = random and model.k_re > 0
    gcol = model.group_name
    if need_re and gcol not in data.columns:
        raise KeyError(f"new data lack the grouping column {gcol!r}; add it, or predict the "
                       "population mean X beta with random=False")
    used = [c for c in data.columns if c in _variables(model, need_re)]
    masks = nonfinite_rows({c: data[c] for c in used})
    bad = np.logical_or.reduce(list(masks.values())) if masks else np.zeros(len(data), bool)
    valid = ~bad
    ok = data if valid.all() else data.loc[valid]
    n = len(data)
    if len(ok):
        X = build_from_spec(info, ok).to_numpy(dtype=float)
    else:
        X = np.zeros((0, model.k_fe))
    Z = g = None
    if need_re:
        Z = _random_design(model, ok, valid)
        g = data[gcol].to_numpy()
    return NewDesign(_fill(X, valid, n), Z, g, valid, data.index,
                     {k: m for k, m in masks.items() if m.any()})


def array_design(results: "HLMResults", exog: Any, *, exog_re: Any = None, groups: Any = None,
                 random: bool = True) -> NewDesign:
    """:class:`NewDesign` of array (or DataFrame-of-columns) new data."""
    model = results.model
    X = np.asarray(exog, dtype=float)
    if X.ndim == 1:
        X = X[None, :] if X.shape[0] == model.k_fe else X[:, None]
    if X.shape[1] != model.k_fe:
        raise ValueError(f"exog has {X.shape[1]} columns, the model has {model.k_fe} "
                         "fixed effects")
    Z = g = None
    if random and model.k_re:
        if groups is None:
            raise TypeError("groups are needed for predictions with random=True; pass groups= "
                            "or predict the population mean with random=False")
        g = np.asarray(groups)
        if exog_re is None and not (model.k_re == 1 and model.re_design.names[0] == "Intercept"):
            raise TypeError(f"exog_re (columns {list(model.re_design.names)}) is needed for "
                            "predictions with random=True")
        Z = (np.ones((len(X), 1)) if exog_re is None
             else np.asarray(exog_re, dtype=float).reshape(len(X), -1))
        if Z.shape[1] != model.k_re:
            raise ValueError(f"exog_re has {Z.shape[1]} columns, the model has "
                             f"{model.k_re} random effects")
        if len(g) != len(X):
            raise ValueError(f"groups has {len(g)} values for {len(X)} rows")
    index = exog.index if isinstance(exog, (pd.DataFrame, pd.Series)) else None
    bad = {"exog": ~np.isfinite(X).all(axis=1)}
    if Z is not None:
        bad["exog_re"] = ~np.isfinite(Z).all(axis=1)
        bad["groups"] = np.asarray(pd.isna(g), dtype=bool)
    valid = ~np.logical_or.reduce(list(bad.values()))
    return NewDesign(X, Z, g, valid, index, bad)


def _design(results: "HLMResults", exog: Any, exog_re: Any, groups: Any,
            random: bool, missing: str) -> NewDesign:
    model = results.model
    if isinstance(exog, pd.DataFrame) and getattr(model, "fixed_design_info", None) is not None:
        if exog_re is not None or groups is not None:
            raise TypeError("with a DataFrame of new data the random design and groups come "
                            "from its columns; do not pass exog_re= or groups=")
        d = frame_design(results, exog, random=random)
    else:
        d = array_design(results, exog, exog_re=exog_re, groups=groups, random=random)
    d.check(missing)
    return d


def _group_codes(results: "HLMResults", d: NewDesign) -> np.ndarray:
    """Index of each row's group among the fitted groups (-1: unseen or missing)."""
    codes = results.model.group_labels.get_indexer(pd.Index(d.groups))
    codes[~d.valid] = -1
    return codes


def _wrap(values: np.ndarray, index: Any, name: str) -> pd.Series | np.ndarray:
    return pd.Series(values, index=index, name=name) if index is not None else values


def predict_new(results: "HLMResults", exog: Any = None, *, exog_re: Any = None,
                groups: Any = None, random: bool = True,
                missing: str = "raise") -> pd.Series | np.ndarray:
    """See :meth:`HLMResults.predict`."""
    model = results.model
    fit = results.fit_result
    if exog is None:
        if exog_re is not None or groups is not None:
            raise TypeError("exog_re and groups go with new exog")
        if model.exog is None:
            raise ValueError("the data were removed (remove_data()); pass new data to predict")
        if random:
            return results.fittedvalues
        return results._wrap_rows(model.exog @ fit.fe_params, "predicted")
    d = _design(results, exog, exog_re, groups, random, missing)
    pred = d.X @ fit.fe_params
    if d.Z is not None:
        codes = _group_codes(results, d)
        known = codes >= 0
        b = np.zeros((len(pred), model.k_re))
        b[known] = fit.blups[codes[known]]
        pred = pred + np.einsum("ij,ij->i", np.where(d.valid[:, None], d.Z, 0.0), b)
        pred[~d.valid] = np.nan
    return _wrap(pred, d.index, "predicted")


# ---------------------------------------------------------------------------
# standard errors and intervals
# ---------------------------------------------------------------------------

def _residual_variance(results: "HLMResults", exog: Any, residual_data: Any,
                       n: int) -> np.ndarray:
    """sigma^2 R_ii of each row: sigma^2 times the squared SD ratio of its variance level."""
    scale = float(results.scale)
    kern = getattr(results.model, "_residual_kernel", None)
    if kern is None or not kern.has_by:
        return np.full(n, scale)
    from .residual_results import _natural, _new_values
    vals = _new_values(results, exog, residual_data, n)
    code = kern.by_code_of(vals["by"])
    if np.any(code < 0):
        unseen = sorted(set(np.asarray(vals["by"])[code < 0].tolist()), key=str)
        raise ValueError(f"level(s) {unseen[:10]} of the variance covariate "
                         f"{kern.structure.by_name!r} were never seen in the fit")
    sd = np.asarray(kern.structure.sd_levels(_natural(results), kern.info), dtype=float)
    return scale * sd[code] ** 2


def _fitted_cross_products(results: "HLMResults") -> np.ndarray:
    """Z_j' X_j per group (q, p, m), whitened by the residual structure if any."""
    model = results.model
    fit = results.fit_result
    p = model.k_fe
    if getattr(model, "_residual_kernel", None) is None:
        return model._stats.ZtW[:, :p, :]
    dev = model.deviance_function(reml=bool(fit.reml), residual_free=fit.residual_free)
    return dev.stats.ZtW[:, :p, :]


def get_prediction(results: "HLMResults", exog: Any = None, *, exog_re: Any = None,
                   groups: Any = None, random: bool = True, residual_data: Any = None,
                   missing: str = "raise") -> Any:
    """See :meth:`HLMResults.get_prediction`."""
    from statsmodels.regression._prediction import PredictionResults

    model = results.model
    fit = results.fit_result
    if exog is None:
        if exog_re is not None or groups is not None:
            raise TypeError("exog_re and groups go with new exog")
        if model.exog is None:
            raise ValueError("the data were removed (remove_data()); pass new data")
        d = NewDesign(model.exog, model.exog_re if random and model.k_re else None,
                      np.asarray(model.groups) if random and model.k_re else None,
                      np.ones(len(model.exog), bool), model.data.row_labels)
        resid_src = None
        if model._residual_kernel is not None and model._residual_kernel.has_by:
            raise NotImplementedError("get_prediction() for the fitted rows of a model with a "
                                      "variance covariate: pass the data as exog")
    else:
        d = _design(results, exog, exog_re, groups, random, missing)
        resid_src = exog
    n = len(d.X)
    X = np.where(d.valid[:, None], d.X, 0.0)
    H = np.asarray(fit.cov_fe, dtype=float)
    mean = X @ fit.fe_params
    var_resid = _residual_variance(results, resid_src, residual_data, n) \
        if model._residual_kernel is not None else np.full(n, float(results.scale))
    if d.Z is None:
        # marginal: Var(x'beta_hat) and, for a new observation, z'Psi z + sigma^2 R_ii
        var_mean = np.einsum("ij,jk,ik->i", X, H, X)
        if model.k_re:
            Zm = _marginal_z(results, exog, exog_re, d)
            if Zm is not None:
                var_resid = var_resid + np.einsum("ij,jk,ik->i", Zm, fit.cov_re, Zm)
    else:
        Z = np.where(d.valid[:, None], d.Z, 0.0)
        codes = _group_codes(results, d)
        known = codes >= 0
        q, p = model.k_re, model.k_fe
        C = np.repeat(np.asarray(fit.cov_re, float)[None], n, axis=0)       # (n, q, q)
        A = np.zeros((n, q, p))
        bc = np.moveaxis(fit.blup_cov, -1, 0)                              # (m, q, q)
        C[known] = bc[codes[known]]
        ZtX = np.moveaxis(_fitted_cross_products(results), -1, 0)          # (m, q, p)
        A_groups = np.einsum("mab,mbp->map", bc, ZtX) / float(results.scale)
        A[known] = A_groups[codes[known]]
        b = np.zeros((n, q))
        b[known] = fit.blups[codes[known]]
        mean = mean + np.einsum("ij,ij->i", Z, b)
        D = X - np.einsum("iqp,iq->ip", A, Z)
        var_mean = np.einsum("ij,jk,ik->i", D, H, D) + np.einsum("ia,iab,ib->i", Z, C, Z)
    mean[~d.valid] = np.nan
    var_mean[~d.valid] = np.nan
    var_resid = np.where(d.valid, var_resid, np.nan)
    labels = d.index if d.index is not None else None
    return PredictionResults(mean, var_mean, var_resid, dist="norm", row_labels=labels)


def _marginal_z(results: "HLMResults", exog: Any, exog_re: Any, d: NewDesign) -> np.ndarray | None:
    """Z of the rows for the marginal observation variance (no groups needed)."""
    model = results.model
    if exog is None:
        return model.exog_re
    if isinstance(exog, pd.DataFrame) and getattr(model, "fixed_design_info", None) is not None:
        try:
            return _random_design(model, exog.loc[d.valid], d.valid)
        except Exception as exc:        # noqa: BLE001 - name what is missing
            raise KeyError(f"the observation intervals of marginal predictions need the "
                           f"random-effects variables {[s.expr for s in model.re_specs]}: "
                           f"{exc}") from exc
    if exog_re is None:
        if model.k_re == 1 and model.re_design.names[0] == "Intercept":
            return np.ones((len(d.X), 1))
        raise TypeError(f"exog_re (columns {list(model.re_design.names)}) is needed for the "
                        "observation intervals of marginal predictions")
    return np.asarray(exog_re, dtype=float).reshape(len(d.X), -1)


def predict_structured(results: "HLMResults", exog: Any, *, exog_re: Any = None,
                       groups: Any = None, random: bool = True, residual_data: Any = None,
                       correlated: bool = True, missing: str = "raise") -> pd.Series | np.ndarray:
    """Predictions for new rows that account for the residual structure.

    Notes
    -----
    For a new row i of a fitted group j the best linear predictor is

        x_i' beta + z_i' b_j + Sigma_{i,j} Sigma_j^{-1} (y_j - X_j beta - Z_j b_j),

    the last term the conditional mean of the new row's error given the
    group's residuals (zero for independent errors, Phi^d times the last
    residual for AR(1) forecasts d steps ahead).  ``correlated=False`` drops
    it (nlme's ``predict``).  Rows of unseen groups get x_i' beta.
    """
    from .residual_results import _kernel, _natural, _new_values
    from .whitening import _plain

    model = results.model
    kern = _kernel(results)
    base = predict_new(results, exog, exog_re=exog_re, groups=groups, random=random,
                       missing=missing)
    if exog is None:
        return base
    if not (random and correlated and kern.kind != "identity"):
        return base          # the residual structure does not enter: nothing to look up
    pred = np.asarray(base, dtype=float).copy()
    n_new = len(pred)
    vals = _new_values(results, exog, residual_data, n_new)
    s = kern.structure
    if "index" not in vals:      # exchangeable rows without positions
        key_new = np.full(n_new, -1.0)
    elif kern.kind == "markov":
        from .whitening import _numeric_time
        key_new = _numeric_time(pd.Series(vals["index"], name=s.index_name), s)
    else:
        key_new = kern.slot_of(vals["index"])
        if np.any(key_new < 0):
            unseen = sorted(set(np.asarray(vals["index"])[key_new < 0].tolist()), key=str)
            raise ValueError(
                f"position(s) {unseen[:10]} of {s.index_name!r} in the new data were never "
                f"seen in the fit (positions {[_plain(v) for v in kern.info.slot_labels]}): "
                f"{s!r} has no correlation or variance for them")
    if "by" in vals:
        by_new = kern.by_code_of(vals["by"])
        if np.any(by_new < 0):
            unseen = sorted(set(np.asarray(vals["by"])[by_new < 0].tolist()), key=str)
            raise ValueError(f"level(s) {unseen[:10]} of the variance covariate {s.by_name!r} "
                             f"in the new data were never seen in the fit (levels "
                             f"{[_plain(v) for v in kern.info.by_levels]})")
    else:
        by_new = np.zeros(n_new, dtype=np.intp)
    if isinstance(exog, pd.DataFrame) and getattr(model, "fixed_design_info", None) is not None:
        g_new = exog[model.group_name].to_numpy()
    else:
        if groups is None:
            return base
        g_new = np.asarray(groups)
        if g_new.shape != (n_new,):
            raise ValueError(f"groups has shape {g_new.shape} for {n_new} new rows")
    codes = model.group_labels.get_indexer(pd.Index(g_new))
    known = np.flatnonzero(codes >= 0)
    if len(known) == 0:
        return base
    resid = model.endog - results._fitted_array
    w = kern.solve(results.fit_result.residual_free, resid)          # R^-1 e, caller order
    j = codes[known]
    nr = kern.sizes[j]
    rep = np.repeat(np.arange(len(known)), nr)
    offs = np.arange(nr.sum()) - np.repeat(np.cumsum(nr) - nr, nr)
    pos_sorted = kern.starts[j][rep] + offs
    rows = kern.order[pos_sorted]
    key_old = kern.key[rows]
    if kern.kind == "dense":
        key_old = key_old.astype(np.intp)
        ka = key_new[known][rep].astype(np.intp)
    else:
        ka = key_new[known][rep]
    c = kern.cov_rows(_natural(results), 1.0, ka, by_new[known][rep], key_old,
                      kern.by_codes[rows])
    pred[known] += np.bincount(rep, weights=c * w[rows], minlength=len(known))
    if isinstance(base, pd.Series):
        return pd.Series(pred, index=base.index, name=base.name)
    return pred


# ================================================================ summary
