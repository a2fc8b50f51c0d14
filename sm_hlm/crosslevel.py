"""Cross-level (group-level / level-2) variables in two-level data.

Helpers for the usual multilevel preprocessing steps:

* :func:`group_aggregate` -- a level-2 variable built from a level-1 column,
  e.g. the school mean of ``flp`` (R: ``tapply(flp, school, mean)``),
  optionally broadcast back to the students;
* :func:`center` -- group-mean or grand-mean centering;
* :func:`within_between` / :func:`add_within_between` -- the within/between
  (Mundlak) decomposition ``x_ij = (x_ij - xbar_j) + xbar_j``;
* :func:`is_constant_within`, :func:`check_constant_within`,
  :func:`level2_columns` -- which columns are group-level variables;
* :func:`warn_level2_in_random` -- flags group-level columns put in the
  random part ``Z_j`` of a model.

Conventions shared by every function:

* ``groups`` is either the name of a column of ``data`` or an array-like
  with one entry per row of ``data`` (a :class:`pandas.Series` whose index
  differs from ``data.index`` is aligned on the index labels when both are
  unique and hold the same labels, otherwise it is rejected).  Group ids may
  be of any hashable type (integers, strings, categories); missing group ids
  raise :class:`ValueError`.
* Missing values (NaN / ``pd.NA``) in the analysed columns are ignored by the
  aggregates, like R's ``na.rm = TRUE``; rows are never dropped: row-level
  outputs keep ``data.index`` and the row order, with NaN where the input
  was NaN.
* Per-group outputs are indexed by the group ids (sorted when they can be
  sorted, in order of first appearance otherwise), the index being named
  after the group column.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Union

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_complex_dtype, is_numeric_dtype

from .data import factorize_sorted

__all__ = [
    "Level2Error",
    "Level2InRandomWarning",
    "group_aggregate",
    "center",
    "within_between",
    "add_within_between",
    "is_constant_within",
    "check_constant_within",
    "level2_columns",
    "warn_level2_in_random",
]

#: A column label, or a list of column labels.
Columns = Union[Hashable, Sequence[Hashable]]
#: A column name of ``data`` or one group id per row.
#: a column label, one group id per row, or a list of column labels ``[outer, inner]`` for
#: the units of ``inner`` within ``outer`` (class within school: lme4's ``school:klass``)
Groups = Union[Hashable, Sequence[Any], np.ndarray, pd.Series, pd.Index]

_BUILTIN_FUNCS = ("mean", "sum", "median", "std", "min", "max", "count")
_NUMERIC_FUNCS = frozenset({"mean", "sum", "median", "std"})
_INTERCEPT_NAMES = frozenset({"Intercept", "(Intercept)"})
#: Default tolerance of :func:`warn_level2_in_random` (a spread within every group at most this)
LEVEL2_ATOL = 1e-10
_MAX_SHOWN = 10


class Level2Error(ValueError):
    """A variable expected to be constant within groups varies within some.

    Attributes
    ----------
    column
        The offending column.
    group_ids
        All group ids in which the column varies.
    n_groups
        Total number of groups.
    """

    def __init__(self, message: str, *, column: Hashable, group_ids: list[Any],
                 n_groups: int) -> None:
        super().__init__(message)
        self.column = column
        self.group_ids = group_ids
        self.n_groups = n_groups


class Level2InRandomWarning(UserWarning):
    """A group-level (level-2) variable was given a random slope."""


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------

class _Grouping:
    """Integer group codes of the rows plus the group ids."""

    __slots__ = ("codes", "uniques", "label", "description")

    def __init__(self, codes: np.ndarray, uniques: pd.Index, label: Hashable | None,
                 description: str) -> None:
        self.codes = codes
        self.uniques = uniques
        self.label = label
        self.description = description

    @property
    def n_groups(self) -> int:
        return len(self.uniques)


def _check_frame(data: Any) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    return data


def _missing_column(data: pd.DataFrame, column: Hashable, what: str = "column") -> KeyError:
    return KeyError(f"{what} {column!r} not found in data; available columns: "
                    f"{list(data.columns)!r}")


def _is_label(obj: Any) -> bool:
    """A single column label (str or other scalar hashable), not an array-like."""
    if isinstance(obj, str):
        return True
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series, pd.Index, pd.DataFrame, set,
                        dict)):
        return False
    return isinstance(obj, Hashable) and np.ndim(obj) == 0


def _get_column(data: pd.DataFrame, column: Hashable, what: str = "column") -> pd.Series:
    try:
        present = column in data.columns
    except TypeError:
        present = False
    if not present:
        raise _missing_column(data, column, what)
    col = data[column]
    if isinstance(col, pd.DataFrame):
        raise ValueError(f"{what} {column!r} is duplicated in data "
                         f"({col.shape[1]} columns share that name)")
    return col


def _column_list(data: pd.DataFrame, column: Columns, *,
                 argname: str = "column") -> tuple[list[Hashable], bool]:
    """Validate ``column`` (one label or a list); return (labels, was_a_list)."""
    if _is_label(column):
        _get_column(data, column)
        return [column], False
    if isinstance(column, (list, tuple, pd.Index, np.ndarray)):
        cols = list(column)
        if not cols:
            raise ValueError(f"{argname} must name at least one column, got an empty list")
        for c in cols:
            if not _is_label(c):
                raise TypeError(f"{argname} entries must be column labels, got {c!r}")
            _get_column(data, c)
        dup = sorted({repr(c) for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"{argname} lists the same column more than once: "
                             f"{', '.join(dup)}")
        return cols, True
    raise TypeError(f"{argname} must be a column label or a list of column labels, "
                    f"got {type(column).__name__}")


def _single_column(data: pd.DataFrame, column: Any, *, func: str) -> pd.Series:
    if not _is_label(column):
        raise TypeError(f"{func}() takes a single column label, got {column!r}")
    return _get_column(data, column)


def _resolve_groups(data: pd.DataFrame, groups: Groups) -> _Grouping:
    """Turn ``groups`` into integer codes 0..G-1 (one per row) and the group ids."""
    n = len(data)
    if (isinstance(groups, (list, tuple)) and 0 < len(groups) < n
            and all(_is_label(g) and g in data.columns for g in groups)):
        # [outer, inner]: the units of the innermost column within the outer ones
        # (class within school), as lme4's school:klass
        for g in groups:
            col = _get_column(data, g, what="groups column")
            if col.isna().any():
                raise ValueError(f"groups column {g!r} has missing group ids in "
                                 f"{int(col.isna().sum())} of {n} rows")
        from .multilevel.factors import factor_from_columns
        f = factor_from_columns(data, [str(g) for g in groups] if all(
            isinstance(g, str) for g in groups) else list(groups))
        name = ":".join(map(str, groups))
        return _Grouping(f.codes, pd.Index(f.labels, name=name), name,
                         f"groups {name!r} (the interaction of {list(groups)})")
    if _is_label(groups):
        series = _get_column(data, groups, what="groups column")
        label: Hashable | None = groups
        description = f"groups column {groups!r}"
    else:
        if isinstance(groups, pd.DataFrame):
            raise TypeError("groups must be a column name or a 1-d array-like, "
                            "got a DataFrame")
        if isinstance(groups, pd.Series):
            series = groups
        elif isinstance(groups, pd.Index):
            series = pd.Series(groups, index=None, name=groups.name)
        else:
            arr = np.asarray(groups, dtype=object) if isinstance(groups, (list, tuple)) \
                else np.asarray(groups)
            if arr.ndim != 1:
                raise ValueError(f"groups must be 1-dimensional, got an array of shape "
                                 f"{arr.shape}")
            series = pd.Series(arr)
            if isinstance(groups, (list, tuple)):
                series = series.infer_objects()
        if len(series) != n:
            raise ValueError(f"groups has length {len(series)} but data has {n} rows; "
                             "pass a column name or one group id per row")
        label = series.name
        description = ("the groups array" if label is None
                       else f"the groups array {label!r}")
        if isinstance(groups, pd.Series) and not series.index.equals(data.index):
            same_labels = (series.index.is_unique and data.index.is_unique
                           and series.index.sort_values().equals(data.index.sort_values()))
            if not same_labels:
                raise ValueError("groups is a Series whose index does not match data.index; "
                                 "pass groups.to_numpy() to match rows by position")
            series = series.reindex(data.index)
    missing = series.isna().to_numpy()
    n_missing = int(missing.sum())
    if n_missing:
        raise ValueError(f"{description} has missing group ids in {n_missing} of {n} rows")
    codes, uniques = factorize_sorted(series)   # unorderable ids keep first-appearance order
    return _Grouping(codes, uniques.rename(label), label, description)


def _float_values(col: pd.Series, *, purpose: str) -> np.ndarray:
    """Numeric column as float64 with NaN for missing values."""
    if not is_numeric_dtype(col.dtype) or is_complex_dtype(col.dtype):
        raise TypeError(f"column {col.name!r} must be numeric for {purpose}, "
                        f"got dtype {col.dtype}")
    return col.to_numpy(dtype=float, na_value=np.nan)


def _group_means(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """NaN-ignoring group means by bincount (NaN for all-missing groups).

    A second pass adds the mean residual, which removes most of the rounding
    error of the naive sums.
    """
    ok = ~np.isnan(x)
    c = codes[ok]
    xo = x[ok]
    cnt = np.bincount(c, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.bincount(c, weights=xo, minlength=n_groups) / cnt
        resid = xo - m[c]
        corr = np.bincount(c, weights=resid, minlength=n_groups) / cnt
    fix = np.isfinite(corr)
    m[fix] += corr[fix]
    return m


def _func_name(func: str | Callable[..., Any]) -> str:
    if isinstance(func, str):
        return func
    name = getattr(func, "__name__", "agg")
    return "agg" if name == "<lambda>" else name


def _aggregate_one(col: pd.Series, g: _Grouping, func: str | Callable[..., Any]) -> pd.Series:
    """Per-group aggregate of one column, positional index 0..G-1."""
    G = g.n_groups
    if func == "mean":
        x = _float_values(col, purpose="func='mean'")
        return pd.Series(_group_means(x, g.codes, G))
    if isinstance(func, str) and func in _NUMERIC_FUNCS:
        _float_values(col, purpose=f"func={func!r}")
    keep = col.notna().to_numpy()
    values = col.iloc[keep]
    if isinstance(func, str) and is_bool_dtype(values.dtype) and func in ("median", "std"):
        values = values.astype(float)
    grouped = values.groupby(g.codes[keep], sort=True)
    if func == "count":
        return grouped.count().reindex(range(G), fill_value=0)
    if func == "sum":
        return grouped.sum().reindex(range(G), fill_value=0)
    if isinstance(func, str):
        return getattr(grouped, func)().reindex(range(G))
    try:
        out = grouped.agg(func)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"func {_func_name(func)!r} failed on column {col.name!r}: it must "
                         f"map the non-missing values of one group (a Series) to a scalar "
                         f"({exc})") from exc
    if not isinstance(out, pd.Series) or (
            out.dtype == object and bool(out.map(pd.api.types.is_list_like).any())):
        raise ValueError(f"func {_func_name(func)!r} must return one scalar per group "
                         f"(column {col.name!r}), got array-like results")
    return out.reindex(range(G))


def _names(cols: list[Hashable], name: Any, default: Callable[[Hashable], str],
           was_list: bool) -> list[Hashable]:
    if name is None:
        return _unique_names([default(c) for c in cols], "pass distinct names with name=[...]")
    if not was_list:
        if not _is_label(name):
            raise TypeError(f"name must be a single label for a single column, got {name!r}")
        return [name]
    if _is_label(name) or len(name) != len(cols):
        raise ValueError(f"name must list one new name per column ({len(cols)}), got {name!r}")
    return _unique_names(list(name), "name must not repeat a name")


def _unique_names(names: list[Hashable], hint: str) -> list[Hashable]:
    """``names`` unchanged; raise rather than let one output column overwrite another."""
    dup = sorted({repr(n) for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"several output columns would be named {', '.join(dup)}; {hint}")
    return names


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def group_aggregate(
    data: pd.DataFrame,
    column: Columns,
    groups: Groups,
    *,
    func: str | Callable[..., Any] = "mean",
    name: Hashable | Sequence[Hashable] | None = None,
    broadcast: bool = False,
) -> pd.Series | pd.DataFrame:
    """Per-group aggregate of a level-1 column: a level-2 variable.

    Parameters
    ----------
    data
        Level-1 (long) data, one row per unit.
    column
        Column label, or list of labels (then a DataFrame is returned).
    groups
        Group column name in ``data``, one group id per row, or ``[outer, inner]``
        column names for the units of ``inner`` within ``outer`` (class within school).
    func
        ``"mean"``, ``"sum"``, ``"median"``, ``"std"`` (sample SD, ``ddof=1``
        like R's ``sd``), ``"min"``, ``"max"``, ``"count"`` (number of
        non-missing values) or a callable mapping the non-missing values of
        one group (a Series) to a scalar.  The first four need a numeric
        column.
    name
        Name of the result (a list of names when ``column`` is a list).
        Defaults to ``f"{column}_{func}"``, e.g. ``"flp_mean"`` (a callable
        contributes its ``__name__``, a lambda ``"agg"``).
    broadcast
        If False, one value per group; if True, one value per row of
        ``data`` (each row gets its group's value), keeping ``data.index``
        and the row order.

    Returns
    -------
    Series or DataFrame
        Indexed by group id (index named after the group column), or by
        ``data.index`` when ``broadcast=True``.

    Raises
    ------
    KeyError
        A column is not in ``data``.
    TypeError
        ``data`` is not a DataFrame, or a numeric ``func`` meets a non-numeric
        column.
    ValueError
        Unknown ``func``, bad ``groups`` (wrong length, missing ids), bad
        ``name`` (or default names that collide) or a callable that does not
        return scalars.

    Notes
    -----
    With ``I_j = {i : g_i = j}`` and ``O_j = {i in I_j : x_i not missing}``
    the mean is ``xbar_j = sum_{i in O_j} x_i / |O_j|`` (R:
    ``tapply(x, g, mean, na.rm = TRUE)``).  A group whose values are all
    missing gets NaN, except for ``"sum"`` and ``"count"`` which give 0.
    Broadcasting returns ``xbar_{g_i}`` for every row ``i``.

    Examples
    --------
    >>> df = pd.DataFrame({"school": [1, 1, 2], "flp": [1.0, 3.0, 2.0]})
    >>> group_aggregate(df, "flp", "school").tolist()
    [2.0, 2.0]
    """
    data = _check_frame(data)
    cols, was_list = _column_list(data, column)
    if isinstance(func, str):
        if func not in _BUILTIN_FUNCS:
            raise ValueError(f"unknown func {func!r}; use one of {list(_BUILTIN_FUNCS)} "
                             "or a callable")
    elif not callable(func):
        raise TypeError(f"func must be a string or a callable, got {type(func).__name__}")
    if not isinstance(broadcast, (bool, np.bool_)):
        raise TypeError(f"broadcast must be True or False, got {broadcast!r}")
    fname = _func_name(func)
    names = _names(cols, name, lambda c: f"{c}_{fname}", was_list)
    g = _resolve_groups(data, groups)
    results: dict[Hashable, pd.Series] = {}
    for c, nm in zip(cols, names):  # loop over requested columns, not groups
        agg = _aggregate_one(data[c], g, func)
        if broadcast:
            agg = agg.iloc[g.codes].set_axis(data.index)
        else:
            agg = agg.set_axis(g.uniques)
        results[nm] = agg.rename(nm)
    if not was_list:
        return results[names[0]]
    out = pd.DataFrame(results)
    out.columns = pd.Index(names)
    return out


def center(
    data: pd.DataFrame,
    column: Columns,
    *,
    groups: Groups | None = None,
    how: str = "group",
    name: Hashable | Sequence[Hashable] | None = None,
) -> pd.Series | pd.DataFrame:
    """Group-mean or grand-mean centering of a level-1 column.

    Parameters
    ----------
    data
        Level-1 data.
    column
        Numeric column label (or list of labels, then a DataFrame).
    groups
        Group column name or one group id per row; required for
        ``how="group"`` and ignored for ``how="grand"``.
    how
        ``"group"`` (centering within cluster) or ``"grand"``.
    name
        Name of the result; defaults to ``f"{column}_cwc"`` (centered within
        cluster) or ``f"{column}_cgm"`` (centered at the grand mean).

    Returns
    -------
    Series or DataFrame
        Aligned to ``data.index`` (same rows, same order); NaN where the
        input is NaN.

    Raises
    ------
    TypeError
        ``how="group"`` without ``groups``, non-DataFrame data or a
        non-numeric column.
    KeyError
        A column is not in ``data``.
    ValueError
        Unknown ``how`` or bad ``groups``.

    Notes
    -----
    Group-mean centering: ``x_ij - xbar_j`` with ``xbar_j`` the mean of the
    non-missing values of group ``j``; the centered values average 0 within
    every group and are uncorrelated with any level-2 variable.

    Grand-mean centering: ``x_ij - xbar`` with ``xbar`` the mean of all
    non-missing values (not the mean of the group means when groups are
    unbalanced); this only shifts the intercept.
    """
    data = _check_frame(data)
    if how not in ("group", "grand"):
        raise ValueError(f"how must be 'group' or 'grand', got {how!r}")
    if how == "group" and groups is None:
        raise TypeError("center(how='group') needs groups (a group column name or one "
                        "group id per row); use how='grand' for grand-mean centering")
    cols, was_list = _column_list(data, column)
    suffix = "_cwc" if how == "group" else "_cgm"
    names = _names(cols, name, lambda c: f"{c}{suffix}", was_list)
    g = _resolve_groups(data, groups) if how == "group" else None
    results: dict[Hashable, pd.Series] = {}
    for c, nm in zip(cols, names):  # loop over requested columns, not groups
        x = _float_values(data[c], purpose=f"center(how={how!r})")
        if g is not None:
            ref = _group_means(x, g.codes, g.n_groups)[g.codes]
        else:
            ref = _group_means(x, np.zeros(len(x), dtype=np.intp), 1)[0] if len(x) else 0.0
        results[nm] = pd.Series(x - ref, index=data.index, name=nm)
    if not was_list:
        return results[names[0]]
    out = pd.DataFrame(results)
    out.columns = pd.Index(names)
    return out


def within_between(
    data: pd.DataFrame,
    column: Columns,
    groups: Groups,
    *,
    suffixes: tuple[str, str] = ("_within", "_between"),
) -> pd.DataFrame:
    """Within/between (Mundlak) decomposition of level-1 columns.

    Parameters
    ----------
    data
        Level-1 data.
    column
        Numeric column label or list of labels.
    groups
        Group column name or one group id per row.
    suffixes
        Suffixes of the within and the between parts.

    Returns
    -------
    DataFrame
        Aligned to ``data.index``, with columns ``x_within`` and
        ``x_between`` for every ``x`` (in that order, column after column).

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`center`; ``ValueError`` also for bad ``suffixes`` (including
        suffixes that give two output columns the same name).

    Notes
    -----
    ``x_ij = (x_ij - xbar_j) + xbar_j``: the within part varies only inside
    groups (group means 0), the between part only across groups.  Putting
    both in the fixed part of a random-intercept model separates the
    within-group slope from the between-group (contextual) slope (Mundlak
    1978).  ``xbar_j`` ignores missing values; where ``x_ij`` is missing the
    within part is NaN while the between part is still ``xbar_j`` (as with
    ``group_aggregate(..., broadcast=True)``), so ``within + between``
    reproduces ``x`` including its NaNs.
    """
    data = _check_frame(data)
    if (not isinstance(suffixes, (tuple, list)) or len(suffixes) != 2
            or not all(isinstance(s, str) for s in suffixes)):
        raise ValueError(f"suffixes must be a pair of strings, got {suffixes!r}")
    if suffixes[0] == suffixes[1]:
        raise ValueError(f"the two suffixes must differ, got {suffixes!r}")
    cols, _ = _column_list(data, column)
    names = _unique_names([f"{c}{sfx}" for c in cols for sfx in suffixes],
                          f"choose suffixes other than {suffixes!r}")
    g = _resolve_groups(data, groups)
    results: dict[str, np.ndarray] = {}
    for c, w, b in zip(cols, names[::2], names[1::2]):  # loop over columns, not groups
        x = _float_values(data[c], purpose="within_between")
        between = _group_means(x, g.codes, g.n_groups)[g.codes]
        results[w] = x - between
        results[b] = between
    return pd.DataFrame(results, index=data.index)


def add_within_between(
    data: pd.DataFrame,
    columns: Columns,
    groups: Groups,
    *,
    suffixes: tuple[str, str] = ("_within", "_between"),
    overwrite: bool = False,
) -> pd.DataFrame:
    """Copy of ``data`` with the within/between columns appended.

    Parameters
    ----------
    data, columns, groups, suffixes
        As :func:`within_between`.
    overwrite
        Whether existing columns with the new names may be replaced.

    Returns
    -------
    DataFrame
        A new frame (``data`` is not modified) with the same index and row
        order, e.g. ready for ``"y ~ ses_within + ses_between + (1 | school)"``.

    Raises
    ------
    ValueError
        A new column name already exists in ``data`` and ``overwrite`` is
        False (plus the errors of :func:`within_between`).

    Notes
    -----
    See :func:`within_between` for the decomposition
    ``x_ij = (x_ij - xbar_j) + xbar_j``.
    """
    wb = within_between(data, columns, groups, suffixes=suffixes)
    clash = [c for c in wb.columns if c in data.columns]
    if clash and not overwrite:
        raise ValueError(f"data already has column(s) {clash!r}; pass overwrite=True or "
                         "other suffixes")
    out = data.copy()
    for c in wb.columns:  # loop over new columns, not groups
        out[c] = wb[c].to_numpy()
    return out


def _varying_groups(col: pd.Series, g: _Grouping, *, rtol: float, atol: float) -> np.ndarray:
    """Boolean array over groups: does ``col`` vary within the group?"""
    if rtol < 0 or atol < 0 or not (np.isfinite(rtol) and np.isfinite(atol)):
        raise ValueError(f"rtol and atol must be finite and non-negative, got rtol={rtol!r}, "
                         f"atol={atol!r}")
    G = g.n_groups
    missing = col.isna().to_numpy()
    n_missing = np.bincount(g.codes, weights=missing, minlength=G)
    n_rows = np.bincount(g.codes, minlength=G)
    mixed = (n_missing > 0) & (n_missing < n_rows)
    keep = ~missing
    if is_numeric_dtype(col.dtype) and not is_complex_dtype(col.dtype):
        x = pd.Series(col.to_numpy(dtype=float, na_value=np.nan)[keep])
        grouped = x.groupby(g.codes[keep], sort=True)
        lo = grouped.min().reindex(range(G)).to_numpy()
        hi = grouped.max().reindex(range(G)).to_numpy()
        with np.errstate(invalid="ignore"):
            spread = hi - lo
            within_tol = np.isfinite(spread) & (
                spread <= atol + rtol * np.maximum(np.abs(lo), np.abs(hi)))
        # hi > lo is False for equal values (+-inf included) and all-missing groups (NaN);
        # a finite value next to an infinite one (infinite spread) varies
        varies = (hi > lo) & ~within_tol
    else:
        nunique = col.iloc[keep].groupby(g.codes[keep], sort=True).nunique()
        varies = nunique.reindex(range(G), fill_value=0).to_numpy() > 1
    return np.asarray(varies, dtype=bool) | mixed


def is_constant_within(
    data: pd.DataFrame,
    column: Hashable,
    groups: Groups,
    *,
    rtol: float = 0.0,
    atol: float = 1e-10,
) -> bool:
    """Whether ``column`` takes a single value within every group.

    Parameters
    ----------
    data
        Level-1 data.
    column
        Column label (numeric or not).
    groups
        Group column name or one group id per row.
    rtol, atol
        Tolerances for numeric columns; other columns compare exactly.

    Returns
    -------
    bool

    Raises
    ------
    KeyError, TypeError, ValueError
        Missing column, non-DataFrame data, bad ``groups`` or tolerances.

    Notes
    -----
    A numeric column is constant in group ``j`` when
    ``max_j x - min_j x <= atol + rtol * max(|min_j x|, |max_j x|)`` over
    its non-missing values (a group holding an infinite value: only when
    all its values are equal).  Missing values count as a distinct value
    only when a group has both missing and non-missing values: a group that
    is entirely missing is constant, a group mixing NaN and numbers is not.
    """
    data = _check_frame(data)
    col = _single_column(data, column, func="is_constant_within")
    g = _resolve_groups(data, groups)
    return not bool(_varying_groups(col, g, rtol=rtol, atol=atol).any())


def check_constant_within(
    data: pd.DataFrame,
    column: Hashable,
    groups: Groups,
    *,
    rtol: float = 0.0,
    atol: float = 1e-10,
) -> None:
    """Raise :class:`Level2Error` unless ``column`` is constant within groups.

    Parameters
    ----------
    data, column, groups, rtol, atol
        As :func:`is_constant_within`.

    Raises
    ------
    Level2Error
        The column varies within some groups; the message names the column,
        up to 10 offending group ids and how many groups offend in total
        (all ids are in ``exc.group_ids``).

    Notes
    -----
    Same criterion as :func:`is_constant_within`: numeric spread within a
    group at most ``atol + rtol * max(|min|, |max|)``; a group with both
    missing and non-missing values counts as varying, an all-missing group
    as constant.
    """
    data = _check_frame(data)
    col = _single_column(data, column, func="check_constant_within")
    g = _resolve_groups(data, groups)
    varies = _varying_groups(col, g, rtol=rtol, atol=atol)
    n_bad = int(varies.sum())
    if not n_bad:
        return
    bad_ids = g.uniques[varies].tolist()
    shown = ", ".join(repr(v) for v in bad_ids[:_MAX_SHOWN])
    more = f" (and {n_bad - _MAX_SHOWN} more)" if n_bad > _MAX_SHOWN else ""
    raise Level2Error(
        f"column {column!r} is not constant within groups ({g.description}): it varies "
        f"within {n_bad} of {g.n_groups} groups, group ids {shown}{more}",
        column=column, group_ids=bad_ids, n_groups=g.n_groups)


def level2_columns(
    data: pd.DataFrame,
    groups: Groups,
    *,
    columns: Sequence[Hashable] | None = None,
    rtol: float = 0.0,
    atol: float = 1e-10,
) -> list[Hashable]:
    """Columns that are constant within every group (group-level variables).

    Parameters
    ----------
    data
        Level-1 data.
    groups
        Group column name or one group id per row.
    columns
        Columns to examine; default all columns except the group column.
    rtol, atol
        As :func:`is_constant_within`.

    Returns
    -------
    list
        The level-2 columns, in the order of ``columns`` (or of ``data``).

    Notes
    -----
    Uses the criterion of :func:`is_constant_within`.  With singleton
    groups only, every column is trivially constant within groups.
    """
    data = _check_frame(data)
    g = _resolve_groups(data, groups)
    if columns is None:
        cols = [c for c in data.columns if not (_is_label(groups) and c == groups)]
    else:
        if _is_label(columns):
            columns = [columns]
        cols, _ = _column_list(data, list(columns), argname="columns")
    return [c for c in cols  # loop over columns, not groups
            if not _varying_groups(_get_column(data, c), g, rtol=rtol, atol=atol).any()]


def warn_level2_in_random(
    data: pd.DataFrame,
    re_columns: Hashable | Sequence[Hashable],
    groups: Groups,
    *,
    atol: float = LEVEL2_ATOL,
    stacklevel: int = 2,
) -> list[Hashable]:
    """Warn about group-level columns in the random-effects design.

    Parameters
    ----------
    data
        Data holding the random-effects columns (the model frame or the
        random-effects design itself).
    re_columns
        Names of the non-intercept columns of the random-effects design
        ``Z``; ``"Intercept"`` and ``"(Intercept)"`` are skipped.
    groups
        Group column name or one group id per row.
    atol
        Tolerance of :func:`is_constant_within`.
    stacklevel
        Passed to :func:`warnings.warn` (2 points at the caller).

    Returns
    -------
    list
        The columns of ``re_columns`` constant within every group, each of
        which triggered one :class:`Level2InRandomWarning`.

    Notes
    -----
    For group ``j`` the model is ``y_j = X_j beta + Z_j b_j + e_j``.  If a
    column ``w`` of ``Z_j`` is constant within group ``j`` (``w_ij = w_j``)
    it equals ``w_j`` times the intercept column, so ``Z_j b_j`` only
    involves ``b_0j + w_j b_wj``: the variance of the slope ``b_w`` is not
    identified separately from the random-intercept variance (it just makes
    the intercept variance depend on ``w``).  Group-level regressors belong
    in the fixed part ``X_j``.
    """
    data = _check_frame(data)
    cols = [re_columns] if _is_label(re_columns) else list(re_columns)  # type: ignore[arg-type]
    cols = [c for c in cols if c not in _INTERCEPT_NAMES]
    if not cols:
        return []
    cols, _ = _column_list(data, cols, argname="re_columns")
    g = _resolve_groups(data, groups)
    flagged: list[Hashable] = []
    for c in cols:  # loop over random-effects columns, not groups
        if not _varying_groups(_get_column(data, c), g, rtol=0.0, atol=atol).any():
            flagged.append(c)
            warnings.warn(
                f"random-effects column {c!r} is constant within every group "
                f"({g.description}): it is a group-level (level-2) variable. Group-level "
                f"regressors belong in the fixed part X_j, not in Z_j: within a group its "
                f"column of Z_j is a multiple of the intercept column, so the variance of "
                f"its random slope is not identified separately from the random-intercept "
                f"variance. Drop it from the random part and keep it as a fixed effect.",
                Level2InRandomWarning, stacklevel=stacklevel)
    return flagged
