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

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["dmatrices_fast", "dmatrix_fast"]

#: rows handed to patsy to build the DesignInfo on the direct path
_HEAD = 8
#: DesignInfos of the direct path by formula, with their plans (:func:`_plan`) and column
#: labels: when every factor is a bare name of a numeric column they depend on nothing
#: else, and :func:`_numeric_columns` checks the columns again on every frame (another
#: frame's non-numeric or missing column goes to patsy), so a repeated formula skips patsy
#: entirely
_CACHE: dict[tuple, tuple] = {}
_CACHE_SIZE = 64
#: plan and column labels of a DesignInfo (the DesignInfos of :data:`_CACHE` and others)
_PLANS: dict[int, tuple[Any, tuple[tuple[str, ...], ...] | None, pd.Index]] = {}


def _key(kind: str, formula: str, frame: pd.DataFrame) -> tuple:
    return (kind, formula)


def _remember(key: tuple, infos: tuple) -> None:
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = infos


def _plan(info: Any) -> tuple[tuple[tuple[str, ...], ...] | None, pd.Index]:
    """The factor names of each column of ``info`` (None unless every factor is one
    numerical column), and the column labels as a pandas Index (built once per info)."""
    hit = _PLANS.get(id(info))
    if hit is not None and hit[0] is info:
        return hit[1], hit[2]
    plan: tuple[tuple[str, ...], ...] | None = None
    if len(info.terms) == len(info.column_names):
        cols = []
        for term in info.terms:
            names = []
            for f in term.factors:
                fi = info.factor_infos[f]
                if fi.type != "numerical" or fi.num_columns != 1:
                    break
                names.append(f.name())
            else:
                cols.append(tuple(names))
                continue
            break
        else:
            plan = tuple(cols)
    labels = pd.Index(list(info.column_names))
    if len(_PLANS) >= 4 * _CACHE_SIZE:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[id(info)] = (info, plan, labels)      # the info itself keeps its id unique
    return plan, labels


def _numeric_columns(info: Any, frame: pd.DataFrame,
                     columns: Mapping[str, pd.Series] | None = None) -> np.ndarray | None:
    """The design matrix of ``info`` on ``frame`` when its factors are numeric columns.

    ``columns`` (optional) holds some of ``frame``'s columns already taken out of it
    (name -> Series with the frame's rows), read instead of the frame's.
    """
    plan = _plan(info)[0]
    if plan is None or not frame.columns.is_unique:
        return None
    arrays: dict[str, np.ndarray] = {}
    for names in plan:
        for name in names:
            if name in arrays:
                continue
            s = columns.get(name) if columns is not None else None
            if s is None:
                if name not in frame.columns:
                    return None
                s = frame[name]
            if s.dtype.kind not in "fiu":
                return None
            arrays[name] = s.to_numpy()
    # every column written in place (products of the data's columns): no temporaries
    out = np.empty((len(frame), len(plan)), order="F")       # pandas' own block layout
    for i, names in enumerate(plan):
        col = out[:, i]
        if not names:
            col.fill(1.0)
            continue
        np.copyto(col, arrays[names[0]], casting="unsafe")
        for name in names[1:]:
            np.multiply(col, arrays[name], out=col, casting="unsafe")
    return out


def _frame(values: np.ndarray, info: Any, index: pd.Index) -> pd.DataFrame:
    # a view of the cached labels: their data shared, their name the frame's own
    df = pd.DataFrame(values, columns=_plan(info)[1].view(), index=index, copy=False)
    # the attribute as pandas would set it, without its search of the column labels first
    object.__setattr__(df, "design_info", info)
    return df


def dmatrices_fast(formula: str, frame: pd.DataFrame, *, eval_env: Any,
                   columns: Mapping[str, pd.Series] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``patsy.dmatrices(formula, frame, return_type="dataframe", NA_action="raise")``.

    ``columns``: some of ``frame``'s columns already taken out (name -> Series).
    """
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
        yv = _numeric_columns(infos[0], frame, columns) if infos[0] is not None else None
        Xv = _numeric_columns(infos[1], frame, columns) if yv is not None else None
        if Xv is not None:
            _remember(key, infos)
            return _frame(yv, infos[0], frame.index), _frame(Xv, infos[1], frame.index)
    return dmatrices(formula, frame, return_type="dataframe", NA_action="raise",
                     eval_env=eval_env)


def dmatrix_fast(formula: str, frame: pd.DataFrame, *, eval_env: Any,
                 columns: Mapping[str, pd.Series] | None = None) -> pd.DataFrame:
    """``patsy.dmatrix(formula, frame, return_type="dataframe", NA_action="raise")``.

    ``columns``: some of ``frame``'s columns already taken out (name -> Series).
    """
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
        Zv = _numeric_columns(infos[0], frame, columns) if infos[0] is not None else None
        if Zv is not None:
            _remember(key, infos)
            return _frame(Zv, infos[0], frame.index)
    return dmatrix(formula, frame, return_type="dataframe", NA_action="raise",
                   eval_env=eval_env)
