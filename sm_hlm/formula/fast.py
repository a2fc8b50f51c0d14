"""patsy's design matrices, built directly with numpy for plain numeric columns.

patsy evaluates a formula on the whole frame; for large frames most of that time
is its generic machinery.  When every factor of every term is a bare name of a
numeric (int or float, not bool) column, the design is just products of
columns: this module takes patsy's DesignInfo from a few rows (it has no state
for such factors) and fills the columns with numpy.  Anything else (categorical
columns, transforms, function calls) goes to patsy on the whole frame, so the
result (values, column names, ``design_info``) is always patsy's.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["dmatrices_fast", "dmatrix_fast"]

#: rows handed to patsy to build the DesignInfo on the direct path
_HEAD = 8
#: DesignInfos of the direct path by formula: when every factor is a bare name of a
#: numeric column they depend on nothing else, and :func:`_numeric_columns` checks that
#: again on every frame (another frame's non-numeric or missing column goes to patsy),
#: so a repeated formula skips patsy entirely
_CACHE: dict[tuple, tuple] = {}
_CACHE_SIZE = 64


def _key(kind: str, formula: str, frame: pd.DataFrame) -> tuple:
    return (kind, formula)


def _remember(key: tuple, infos: tuple) -> None:
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = infos


def _numeric_columns(info: Any, frame: pd.DataFrame) -> np.ndarray | None:
    """The design matrix of ``info`` on ``frame`` when its factors are numeric columns."""
    if len(info.terms) != len(info.column_names) or frame.columns.duplicated().any():
        return None
    factors = []
    for term in info.terms:
        names = []
        for f in term.factors:
            fi = info.factor_infos[f]
            name = f.name()
            if (fi.type != "numerical" or fi.num_columns != 1 or name not in frame.columns
                    or frame[name].dtype.kind not in "fiu"):
                return None
            names.append(name)
        factors.append(names)
    # every column written in place (products of the data's columns): no temporaries
    out = np.empty((len(frame), len(factors)), order="F")       # pandas' own block layout
    for i, names in enumerate(factors):
        col = out[:, i]
        if not names:
            col.fill(1.0)
            continue
        np.copyto(col, frame[names[0]].to_numpy(), casting="unsafe")
        for name in names[1:]:
            np.multiply(col, frame[name].to_numpy(), out=col, casting="unsafe")
    return out


def _frame(values: np.ndarray, info: Any, index: pd.Index) -> pd.DataFrame:
    df = pd.DataFrame(values, columns=list(info.column_names), index=index, copy=False)
    df.design_info = info
    return df


def dmatrices_fast(formula: str, frame: pd.DataFrame, *, eval_env: Any) -> tuple[pd.DataFrame,
                                                                                 pd.DataFrame]:
    """``patsy.dmatrices(formula, frame, return_type="dataframe", NA_action="raise")``."""
    from patsy import dmatrices

    if len(frame) > 4 * _HEAD:
        key = _key("dmatrices", formula, frame)
        infos = _CACHE.get(key)
        if infos is None:
            try:        # the head may lack a level the formula names: patsy on all rows then
                y, X = dmatrices(formula, frame.iloc[:_HEAD], return_type="dataframe",
                                 NA_action="raise", eval_env=eval_env)
                infos = (y.design_info, X.design_info)
            except Exception:
                infos = (None, None)
        yv = _numeric_columns(infos[0], frame) if infos[0] is not None else None
        Xv = _numeric_columns(infos[1], frame) if yv is not None else None
        if Xv is not None:
            _remember(key, infos)
            return _frame(yv, infos[0], frame.index), _frame(Xv, infos[1], frame.index)
    return dmatrices(formula, frame, return_type="dataframe", NA_action="raise",
                     eval_env=eval_env)


def dmatrix_fast(formula: str, frame: pd.DataFrame, *, eval_env: Any) -> pd.DataFrame:
    """``patsy.dmatrix(formula, frame, return_type="dataframe", NA_action="raise")``."""
    from patsy import dmatrix

    if len(frame) > 4 * _HEAD:
        key = _key("dmatrix", formula, frame)
        infos = _CACHE.get(key)
        if infos is None:
            try:
                infos = (dmatrix(formula, frame.iloc[:_HEAD], return_type="dataframe",
                                 NA_action="raise", eval_env=eval_env).design_info,)
            except Exception:
                infos = (None,)
        Zv = _numeric_columns(infos[0], frame) if infos[0] is not None else None
        if Zv is not None:
            _remember(key, infos)
            return _frame(Zv, infos[0], frame.index)
    return dmatrix(formula, frame, return_type="dataframe", NA_action="raise",
                   eval_env=eval_env)
