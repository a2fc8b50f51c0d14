"""Input checks shared by the array and formula interfaces.

Every check names the offending column, group or value; nothing is dropped
silently.
"""
from __future__ import annotations

import ast
import builtins
import functools
import warnings
from collections.abc import Container, Iterable, Mapping

import numpy as np
import pandas as pd

from .exceptions import DroppedRowsWarning, MissingDataError

__all__ = ["ScopeNames", "factorize_sorted", "factorize_groups", "group_order", "nonfinite_rows", "handle_missing", "formula_variables", "check_columns",
           "check_numeric_response"]


def _bad_mask(values: object) -> np.ndarray:
    """Rows that are missing (None/NaN/NaT) or infinite."""
    bad = _bad_rows(values)
    return np.zeros(len(values), dtype=bool) if bad is None else bad


def _bad_rows(values: object) -> np.ndarray | None:
    """:func:`_bad_mask`, or None for numeric data known clean without a mask."""
    # numpy-backed numeric data: one vectorised pass (the general path below is slow at 10^7 rows)
    arr = None
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, pd.Series) and isinstance(values.dtype, np.dtype):
        arr = values.to_numpy()
    elif isinstance(values, pd.DataFrame) and values.shape[1]:
        # numpy-backed numeric columns come out as one numeric block (a view for a frame
        # of one dtype); anything else (object, nullable extension types) as objects
        arr = values.to_numpy()
        if arr.dtype.kind not in "iubf":
            arr = None
    if arr is not None and arr.dtype.kind in "iub":
        return None
    if arr is not None and arr.dtype.kind == "f":
        # a sum is finite only when every term is (NaN and inf propagate): one pass
        # without temporaries answers for clean data; an overflowing sum checks row by row
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(arr, axis=0)).all():
                return None
        bad = ~np.isfinite(arr)
        return bad if bad.ndim == 1 else bad.reshape(len(arr), -1).any(axis=1)
    s = values if isinstance(values, (pd.Series, pd.DataFrame)) else pd.DataFrame(np.asarray(values))
    if isinstance(s, pd.Series):
        s = s.to_frame()
    mask = s.isna().to_numpy().any(axis=1)
    num = s.select_dtypes(include=[np.number])
    if num.shape[1]:
        mask |= np.isinf(num.to_numpy(dtype=float)).any(axis=1)
    return mask


def nonfinite_rows(columns: Mapping[str, object]) -> dict[str, np.ndarray]:
    """For each named column (or block of columns), the mask of NaN/inf rows."""
    return {name: _bad_mask(v) for name, v in columns.items()}


def handle_missing(columns: Mapping[str, object], missing: str, *,
                   index: pd.Index | None = None) -> np.ndarray | None:
    """Apply the ``missing`` policy to aligned columns.

    Parameters
    ----------
    columns
        Name -> column (Series, DataFrame, array) of equal length.
    missing
        ``"raise"``/``"none"``: raise :class:`MissingDataError` naming the
        columns and the number of rows with NaN or inf.  ``"drop"``: return
        the mask of rows to keep and warn (:class:`DroppedRowsWarning`) with
        the number dropped.

    Returns
    -------
    Boolean mask of rows to keep, or None when nothing is missing.
    """
    if missing not in ("none", "raise", "drop"):
        raise ValueError(f"missing must be 'none', 'drop' or 'raise', got {missing!r}")
    bad: dict[str, np.ndarray] = {}
    for k, v in columns.items():
        m = _bad_rows(v)
        if m is not None and m.any():
            bad[k] = m
    if not bad:
        return None
    any_bad = np.logical_or.reduce(list(bad.values()))
    detail = ", ".join(f"{k!r} ({int(m.sum())} rows)" for k, m in bad.items())
    if missing == "drop":
        n = int(any_bad.sum())
        warnings.warn(f"dropped {n} of {len(any_bad)} rows with missing or infinite values in "
                      f"{detail}", DroppedRowsWarning, stacklevel=4)
        return ~any_bad
    first = int(np.flatnonzero(any_bad)[0])
    label = index[first] if index is not None else first
    raise MissingDataError(
        f"missing (NaN) or infinite values in {detail}; first at row {label!r}. "
        "Pass missing='drop' to drop these rows")


def formula_variables(formula_rhs: str) -> set[str]:
    """Names used as variables by the factors of a patsy formula side (a new set)."""
    return set(_formula_variables(formula_rhs))


@functools.lru_cache(maxsize=256)
def _formula_variables(formula_rhs: str) -> frozenset[str]:
    from patsy import ModelDesc

    desc = ModelDesc.from_formula(formula_rhs)
    names: set[str] = set()
    for term in list(desc.lhs_termlist) + list(desc.rhs_termlist):
        for factor in term.factors:
            code = getattr(factor, "code", None)
            if code is None:
                continue
            tree = ast.parse(code, mode="eval")
            called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
            attr_bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and id(node) not in called and id(node) not in attr_bases:
                    names.add(node.id)
    return frozenset(names)


class ScopeNames:
    """The names a formula can use besides the data's columns: those of its namespaces
    (a patsy ``EvalEnvironment``'s) and ``extra`` ones (the formula engine's functions).

    Only membership is asked, so the namespaces are searched, never merged (a
    notebook's namespace can hold thousands of names).
    """

    def __init__(self, env: object, extra: Iterable[str] = ()) -> None:
        self._namespaces = list(getattr(env, "_namespaces", ()))
        self._extra = frozenset(extra)

    def __contains__(self, name: object) -> bool:
        return name in self._extra or any(name in ns for ns in self._namespaces)


def check_columns(names: set[str] | list[str], data: pd.DataFrame,
                  env_names: Container[str] = frozenset(),
                  *, what: str = "formula") -> None:
    """Raise KeyError naming the variables found neither in ``data`` nor in scope."""
    missing = sorted(n for n in names if n not in data.columns and n not in env_names
                     and not hasattr(builtins, n))
    if missing:
        avail = ", ".join(map(str, list(data.columns)[:30]))
        raise KeyError(f"column(s) {missing} used in the {what} are not in the data "
                       f"(columns: {avail})")


def check_numeric_response(y: pd.Series | np.ndarray, name: str) -> None:
    """The response must be numeric (or boolean)."""
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
        raise TypeError(f"the response {name!r} must be numeric, got dtype {dtype}")


def group_order(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """The stable permutation sorting rows by their group codes (0..n_groups-1).

    A counting sort (pandas' group sorter, O(n + m)) instead of a comparison
    sort; ``np.argsort(codes, kind="stable")`` when pandas does not offer it.
    """
    codes = np.asarray(codes, dtype=np.intp)
    try:
        from pandas.core.sorting import get_group_index_sorter
        order = get_group_index_sorter(codes, n_groups)
    except (ImportError, TypeError):                      # pragma: no cover - other pandas
        order = np.argsort(codes, kind="stable")
    return np.asarray(order, dtype=np.intp)


def factorize_sorted(values: object) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and the distinct labels, sorted when the labels can be ordered.

    Labels that cannot be ordered (mixed types) keep their order of first
    appearance.  Codes are ``np.intp``; labels keep the name of a Series.
    """
    return factorize_groups(values)[:2]


def factorize_groups(values: object) -> tuple[np.ndarray, pd.Index, np.ndarray, bool]:
    """:func:`factorize_sorted`, with each group's first row in the sorted order.

    Returns ``(codes, labels, starts, is_sorted)``: ``starts[k]`` is the index of
    group k's first row once the rows are sorted by code (stable), and
    ``is_sorted`` whether they are already (codes non-decreasing).
    """
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    name = getattr(values, "name", None)
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iu" and len(s):
        # integer labels already in order (data sorted by group, the common layout): the
        # codes are a running count of changes, without hashing
        v = s.to_numpy()
        new = np.empty(len(v), dtype=bool)
        new[0] = True
        np.not_equal(v[1:], v[:-1], out=new[1:])
        first = np.flatnonzero(new)
        runs = v[first]                 # the label of each run of equal labels
        if np.all(runs[1:] > runs[:-1]):                  # increasing: the rows are sorted
            codes = np.repeat(np.arange(len(first), dtype=np.intp),
                              np.diff(np.append(first, len(v))))
            return codes, pd.Index(runs, name=name), first.astype(np.intp, copy=False), True
    try:
        codes, labels = pd.factorize(s, sort=True)
    except TypeError:
        codes, labels = pd.factorize(s, sort=False)
    codes = np.asarray(codes, dtype=np.intp)
    counts = np.bincount(codes, minlength=len(labels))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    return codes, pd.Index(labels, name=name), starts, bool(np.all(codes[1:] >= codes[:-1]))
