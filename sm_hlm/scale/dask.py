"""Fits on Dask DataFrames: statistics on the workers, optimisation on the client.

``HLM.from_formula(formula, data=ddf)`` (and ``hlm(formula, ddf)``) with a
:class:`dask.dataframe.DataFrame` call :func:`from_dask`.  Data on disk is read
with :func:`dask.dataframe.read_parquet`.

Notes
-----
Three steps, each a map over partitions and a tree reduction (``split_every``
partials at a time) built from :func:`dask.delayed`:

0. levels of categorical columns (known categories are used as they are;
   otherwise one pass of ``unique``), so that every partition builds the same
   design;
1. column moments, for the working coordinates (see :mod:`sm_hlm.scale.stats`);
2. per-group partial statistics; partials of a group spread over several
   partitions are summed when two partials meet in the tree.

Only the per-group statistics (m groups x a few numbers) reach the client.
Storing the data clustered by group (e.g. sorted by the group column) keeps
every partial small.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from .stats import (ChunkDesign, Moments, Partial, SummedHLM, SummedHLMResults, chunk_moments,
                    chunk_partial, combine_moments, combine_partials, stats_from_partial,
                    working_maps)

__all__ = ["DaskHLM", "DaskHLMResults", "from_dask", "is_dask_collection"]


def is_dask_collection(data: Any) -> bool:
    """True for a Dask DataFrame (without importing Dask for other data)."""
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr")


def _require_dask():
    try:
        import dask
        import dask.dataframe  # noqa: F401
    except ImportError as e:       # pragma: no cover - exercised without the extra
        raise ImportError("Dask support needs the optional dependencies: "
                          "pip install \"sm_hlm[dask]\"") from e
    return dask


def _fold_moments(parts: list[Moments]) -> Moments:
    return functools.reduce(combine_moments, parts)


def _tree(dask, parts: list, fn, split_every: int):
    """A tree reduction of delayed values, ``split_every`` at a time."""
    parts = list(parts)
    while len(parts) > 1:
        parts = [dask.delayed(fn)(parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    return dask.delayed(fn)(parts) if parts else None


def _levels(ddf, design_cols: list[str], response: str, group: str) -> dict[str, list[Any]]:
    dask = _require_dask()
    levels: dict[str, list[Any]] = {}
    todo = []
    for c in design_cols:
        if c in (response, group):
            continue
        dt = ddf.dtypes[c]
        if dt.kind in "fiu":
            continue
        if isinstance(dt, pd.CategoricalDtype) and ddf[c].cat.known:
            levels[c] = list(dt.categories)
        else:
            todo.append(c)
    if todo:
        found = dask.compute(*[ddf[c].dropna().unique() for c in todo])
        for c, u in zip(todo, found):
            vals = list(pd.unique(np.asarray(u)))
            try:
                vals = sorted(vals)
            except TypeError:
                pass
            levels[c] = vals
    return levels


class DaskHLM(SummedHLM):
    """:class:`~sm_hlm.scale.stats.SummedHLM` whose rows are a Dask DataFrame."""

    def fit(self, *args: Any, **kwargs: Any) -> "DaskHLMResults":
        res = super().fit(*args, **kwargs)
        out = DaskHLMResults.__new__(DaskHLMResults)
        out.__dict__.update(res.__dict__)
        return out


class DaskHLMResults(SummedHLMResults):
    """Results of a :class:`DaskHLM`; row-level results are lazy Dask collections."""

    @property
    def fittedvalues(self):
        """X beta + Z b_j per row, a lazy Dask Series (partitions as the data)."""
        ddf = self.model.source
        return ddf.map_partitions(self.fittedvalues_of, meta=pd.Series(dtype=float,
                                                                          name="fitted"))

    @property
    def resid(self):
        """Conditional residuals, a lazy Dask Series."""
        ddf = self.model.source
        return ddf.map_partitions(self.resid_of, meta=pd.Series(dtype=float, name="resid"))


def from_dask(formula: str, data: Any, *, levels: dict[str, list[Any]] | None = None,
              missing: str = "drop", split_every: int = 8, **kwargs: Any) -> DaskHLM:
    """A model whose sufficient statistics are computed on Dask workers.

    Parameters
    ----------
    formula
        lme4-style formula with one grouping factor, ``"y ~ x + (x | g)"``.
    data
        A :class:`dask.dataframe.DataFrame` (e.g. from
        :func:`dask.dataframe.read_parquet`).
    levels
        Levels of categorical columns; found in one pass when omitted
        (known ``category`` dtypes are used as they are).
    missing
        ``"drop"`` rows with missing values in a used column, or ``"raise"``.
    split_every
        Fan-in of the tree reductions.

    Returns
    -------
    DaskHLM
        ``.fit(reml=...)`` optimises on the client.
    """
    dask = _require_dask()
    if kwargs:
        bad = sorted(kwargs)
        if "residual" in kwargs:
            raise NotImplementedError(
                "residual structures are not available for Dask data: their whitening needs the "
                "rows of whole groups in memory (fit sm_hlm.HLM on a pandas DataFrame)")
        raise TypeError(f"from_dask() got unexpected keyword argument(s) {bad}")
    if int(split_every) < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every!r}")
    # the design is built from the first partition's rows (more partitions only if it is tiny)
    sample = data.head(1000, npartitions=1, compute=True)
    if len(sample) < 50 and data.npartitions > 1:
        sample = data.head(1000, npartitions=min(data.npartitions, 16), compute=True)
    from ..data import formula_variables
    from ..formula.parse import parse_formula
    parsed = parse_formula(formula)
    used = set(formula_variables(parsed.fixed_formula))
    for s in parsed.random:
        used |= formula_variables(s.expr)
    missing_cols = sorted(c for c in used if c not in data.columns)
    if missing_cols:
        raise KeyError(f"column(s) {missing_cols} used by the formula are not in the data")
    group = parsed.random[0].group if parsed.random else None
    found = _levels(data, sorted(used), parsed.response, group)
    found.update(levels or {})
    design = ChunkDesign(formula, sample, levels=found, missing=missing)
    parts = data.to_delayed()
    mom = _tree(dask, [dask.delayed(chunk_moments)(design, p) for p in parts],
                _fold_moments, split_every).compute()
    rp = working_maps(design, mom)
    total = _tree(dask, [dask.delayed(chunk_partial)(design, rp, p) for p in parts],
                  combine_partials, split_every).compute()
    st, labels = stats_from_partial(design, total)
    return DaskHLM(design, st, rp, labels, n_dropped=mom.dropped, source=data)
