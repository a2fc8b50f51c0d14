"""Predictions of a multilevel fit for the fitted rows or new data.

A row's prediction is X beta plus, with ``random=True``, each factor's
conditional mode for the row's level of that factor.  A level not seen in
the fit contributes zero for its own factor only, so a new class in a known
school gets the school's effect (lme4's ``allow.new.levels = TRUE``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from ..data import formula_variables, nonfinite_rows

if TYPE_CHECKING:
    from .results import MultilevelResults

__all__ = ["predict_multilevel", "factor_labels"]


def factor_labels(data: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """The labels of a factor for rows of ``data``, as the fit labels its levels."""
    if len(columns) == 1:
        return data[columns[0]].to_numpy()
    lab = np.asarray(data[columns[0]].to_numpy()).astype(str)
    for c in columns[1:]:
        lab = np.char.add(np.char.add(lab, ":"), np.asarray(data[c].to_numpy()).astype(str))
    return lab


def _level_codes(res: "MultilevelResults", factor: str, labels: np.ndarray) -> np.ndarray:
    return np.asarray(res.model.factors[factor].labels.get_indexer(labels), dtype=np.intp)


def predict_multilevel(res: "MultilevelResults", exog: Any = None, *, groups: Any = None,
                       exog_re: Mapping[str, Any] | None = None, random: bool = True,
                       missing: str = "raise") -> pd.Series | np.ndarray:
    """See :meth:`MultilevelResults.predict`."""
    from ..exceptions import MissingDataError

    if missing not in ("raise", "nan"):
        raise ValueError(f"missing must be 'raise' or 'nan', got {missing!r}")
    model = res.model
    beta = res.fit_result.fe_params
    if exog is None:
        if groups is not None or exog_re is not None:
            raise TypeError("groups= and exog_re= describe new rows: pass exog too")
        out = model.exog @ beta + (res._random_part() if random else 0.0)
        return res._wrap_rows(out, "predicted")
    blups = {t.factor: b for t, b in zip(model.re_terms, res.fit_result.blups)}
    if isinstance(exog, pd.DataFrame) and getattr(model, "fixed_design_info", None) is not None:
        from ..formula.engines import build_from_spec

        if groups is not None or exog_re is not None:
            raise TypeError("with a DataFrame of new data the groups and random-effects "
                            "designs come from its columns; do not pass groups= or exog_re=")
        data = exog
        used = formula_variables(model.parsed_formula.fixed_rhs)
        if random:
            for s in model.re_specs:
                used |= formula_variables(s.expr)
            need = sorted({c for cols in model._factor_columns.values() for c in cols})
            lacking = [c for c in need if c not in data.columns]
            if lacking:
                raise KeyError(f"new data lack the grouping column(s) {lacking}; add them, or "
                               "predict the population mean X beta with random=False")
            used |= set(need)
        cols = [c for c in data.columns if c in used]
        gcols = {c for v in model._factor_columns.values() for c in v}
        check = {c: (pd.Series(np.where(data[c].isna(), np.nan, 0.0), index=data.index)
                     if c in gcols else data[c]) for c in cols}
        masks = {c: m for c, m in nonfinite_rows(check).items() if m.any()}
        valid = ~np.logical_or.reduce(list(masks.values())) if masks else np.ones(len(data), bool)
        if not valid.all() and missing == "raise":
            detail = ", ".join(f"{k!r} ({int(m.sum())} rows)" for k, m in masks.items())
            first = data.index[int(np.flatnonzero(~valid)[0])]
            raise MissingDataError(
                f"missing (NaN) or infinite values in the new data: {detail}; first at row "
                f"{first!r}. Pass missing='nan' to predict NaN for these rows")
        ok = data if valid.all() else data.loc[valid]
        out = np.full(len(data), np.nan)
        if len(ok):
            X = build_from_spec(model.fixed_design_info, ok).to_numpy(dtype=float)
            pred = X @ beta
            if random:
                for t in model.re_terms:
                    infos = model.re_design_infos[t.factor]
                    Z = np.column_stack([build_from_spec(info, ok).to_numpy(dtype=float)
                                         for _, info in infos])
                    codes = _level_codes(res, t.factor,
                                         factor_labels(ok, model._factor_columns[t.factor]))
                    known = codes >= 0
                    b = np.zeros((len(ok), t.S))
                    b[known] = blups[t.factor][codes[known]]
                    pred = pred + np.einsum("ij,ij->i", Z, b)
            out[valid] = pred
        return pd.Series(out, index=data.index, name="predicted")
    # arrays: exog (n, p); groups {factor: labels}; exog_re {factor: (n, S)}
    X = np.asarray(exog, dtype=float)
    X = X[:, None] if X.ndim == 1 else X
    if X.shape[1] != model.k_fe:
        raise ValueError(f"exog has {X.shape[1]} columns, the model has {model.k_fe} fixed "
                         "effects")
    pred = X @ beta
    if random:
        if groups is None:
            raise TypeError("groups= ({factor: labels}) is needed with random=True; or predict "
                            "the population mean with random=False")
        groups = pd.DataFrame(groups) if not isinstance(groups, pd.DataFrame) else groups
        exog_re = dict(exog_re or {})
        for t in model.re_terms:
            if t.factor not in groups.columns:
                raise KeyError(f"groups lack the factor {t.factor!r}; it has "
                               f"{list(groups.columns)}")
            z = exog_re.get(t.factor)
            if z is None:
                if t.names != ("Intercept",):
                    raise TypeError(f"exog_re[{t.factor!r}] (columns {list(t.names)}) is needed")
                z = np.ones((len(X), 1))
            z = np.asarray(z, dtype=float).reshape(len(X), -1)
            codes = _level_codes(res, t.factor, groups[t.factor].to_numpy())
            known = codes >= 0
            b = np.zeros((len(X), t.S))
            b[known] = blups[t.factor][codes[known]]
            pred = pred + np.einsum("ij,ij->i", z, b)
    if missing == "raise" and not np.all(np.isfinite(pred)):
        raise MissingDataError("missing (NaN) or infinite values in the new arrays; pass "
                               "missing='nan' to predict NaN for these rows")
    return pred
