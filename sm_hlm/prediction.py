"""Predictions from an HLM fit for the fitted rows or new data."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import handle_missing

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["predict_new", "new_design"]


def new_design(results: "HLMResults", data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed design, random design and group labels of new data for a formula model."""
    from patsy import build_design_matrices

    model = results.model
    info = getattr(model, "fixed_design_info", None)
    if info is None:
        raise TypeError("predict(DataFrame) needs a model made by from_formula; pass arrays "
                        "(exog, exog_re=, groups=) instead")
    # the response is not needed; check only the predictors' columns
    handle_missing({c: data[c] for c in data.columns if c in _variables(model)}, "raise",
                   index=data.index)
    (X,) = build_design_matrices([info], data, NA_action="raise", return_type="matrix")
    blocks = []
    seen = set()
    for term in model.re_design.terms:
        if id(term.design_info) in seen:
            continue
        seen.add(id(term.design_info))
        (Z,) = build_design_matrices([term.design_info], data, NA_action="raise",
                                     return_type="dataframe")
        blocks.append(Z)
    if blocks:
        Zdf = pd.concat(blocks, axis=1)
        Z = Zdf[list(model.re_design.names)].to_numpy(dtype=float)
    else:
        Z = np.zeros((len(data), 0))
    gcol = model.group_name
    if gcol not in data.columns:
        raise KeyError(f"new data lacks the grouping column {gcol!r}")
    return np.asarray(X, dtype=float), Z, data[gcol].to_numpy()


def _variables(model: Any) -> set[str]:
    from .data import formula_variables
    names = formula_variables(model.parsed_formula.fixed_rhs)
    for s in model.re_specs:
        names |= formula_variables(s.expr)
    return names | {model.group_name}


def predict_new(results: "HLMResults", exog: Any = None, *, exog_re: Any = None,
                groups: Any = None, random: bool = True) -> pd.Series | np.ndarray:
    """See :meth:`HLMResults.predict`."""
    model = results.model
    fit = results.fit_result
    if exog is None:
        if exog_re is not None or groups is not None:
            raise TypeError("exog_re and groups go with new exog")
        if random:
            return results.fittedvalues
        return results._wrap_rows(model.exog @ fit.fe_params, "predicted")
    index = None
    if isinstance(exog, pd.DataFrame) and getattr(model, "fixed_design_info", None) is not None:
        index = exog.index
        X, Z, g = new_design(results, exog)
    else:
        X = np.asarray(exog, dtype=float)
        if X.ndim == 1:
            X = X[None, :] if X.shape[0] == model.k_fe else X[:, None]
        if X.shape[1] != model.k_fe:
            raise ValueError(f"exog has {X.shape[1]} columns, the model has {model.k_fe} "
                             "fixed effects")
        if random and model.k_re:
            if groups is None:
                raise TypeError("groups are needed for predictions with random=True")
            g = np.asarray(groups)
            Z = (np.ones((len(X), 1)) if exog_re is None and model.k_re == 1
                 else np.asarray(exog_re, dtype=float).reshape(len(X), -1))
            if Z.shape[1] != model.k_re:
                raise ValueError(f"exog_re has {Z.shape[1]} columns, the model has "
                                 f"{model.k_re} random effects")
            if len(g) != len(X):
                raise ValueError(f"groups has {len(g)} values for {len(X)} rows")
        if isinstance(exog, (pd.DataFrame, pd.Series)):
            index = exog.index
    pred = X @ fit.fe_params
    if random and model.k_re:
        codes = model.group_labels.get_indexer(pd.Index(g))
        known = codes >= 0
        b = np.zeros((len(X), model.k_re))
        b[known] = fit.blups[codes[known]]
        pred = pred + np.einsum("ij,ij->i", Z, b)
    if index is not None:
        return pd.Series(pred, index=index, name="predicted")
    return pred
