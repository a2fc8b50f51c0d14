"""Out of core on one machine: statistics from parquet record batches.

Reads a parquet file or a directory of them with :mod:`pyarrow.dataset`, one
record batch at a time (only the columns the formula uses), in the same two
passes as :mod:`sm_hlm.scale.dask` (plus one for the levels of categorical
columns without given levels), with a tqdm progress bar over each pass.
Memory holds one batch and the per-group statistics (m groups x a few numbers).
"""
from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from .stats import (ChunkDesign, SummedHLM, chunk_moments, chunk_partial, combine_moments,
                    combine_partials, is_multilevel, stats_from_partial, working_maps)

__all__ = ["from_parquet"]


def _batches(dataset, columns: list[str], batch_size: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=dataset.count_rows(), unit="rows", desc=desc, disable=not progress)
    try:
        for b in dataset.to_batches(columns=columns, batch_size=batch_size):
            bar.update(b.num_rows)
            yield b.to_pandas()
    finally:
        bar.close()


def from_parquet(formula: str, path: Any, *, levels: dict[str, list[Any]] | None = None,
                 missing: str = "drop", batch_size: int = 1_000_000,
                 combine_every: int = 16, progress: bool = True) -> Any:
    """A model whose statistics are summed over the record batches of parquet data.

    Parameters
    ----------
    formula
        lme4-style formula: one grouping factor (summed per-group statistics), or
        several, nested or crossed (per-cell statistics, a
        :class:`~sm_hlm.scale.cells.CellHLM`; one more pass finds the levels of
        the grouping columns).
    path
        A parquet file or a directory of them (anything
        :func:`pyarrow.dataset.dataset` opens).
    levels
        Levels of categorical columns; found in one extra pass when omitted.
    missing
        ``"drop"`` or ``"raise"``.
    batch_size
        Rows per record batch.
    combine_every
        Partial statistics are summed every this many batches (bounds memory
        when groups are spread over batches).
    progress
        Show a tqdm progress bar over each pass.
    """
    import pyarrow.dataset as ds

    from ..data import formula_variables
    from ..formula.parse import parse_formula

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    dataset = ds.dataset(path, format="parquet")
    parsed = parse_formula(formula)
    used = set(formula_variables(parsed.fixed_formula))
    for s in parsed.random:
        used |= formula_variables(s.expr)
    multi = is_multilevel(parsed.random)
    gcols = {c for sp in parsed.random for c in sp.columns}
    group = parsed.random[0].group if parsed.random and not multi else None
    cols = sorted(used | gcols)
    absent = [c for c in cols if c not in dataset.schema.names]
    if absent:
        raise KeyError(f"column(s) {absent} used by the formula are not in {path!r}")
    found: dict[str, list[Any]] = {}
    cat_cols = [c for c in cols if c not in (parsed.response, group)
                and (multi and c in gcols or not pd.api.types.is_numeric_dtype(
                    dataset.schema.field(c).type.to_pandas_dtype()))]
    todo = [c for c in cat_cols if c not in (levels or {}) or multi and c in gcols]
    if todo:
        seen: dict[str, set] = {c: set() for c in todo}
        for df in _batches(dataset, todo, batch_size, "levels", progress):
            for c in todo:
                seen[c].update(df[c].dropna().unique().tolist())
        for c in todo:
            try:
                found[c] = sorted(seen[c])
            except TypeError:
                found[c] = list(seen[c])
    found.update(levels or {})
    sample = dataset.head(1000, columns=cols).to_pandas()
    design = ChunkDesign(formula, sample, levels=found, missing=missing)
    mom = functools.reduce(combine_moments, (chunk_moments(design, df) for df in
                                             _batches(dataset, cols, batch_size, "moments",
                                                      progress)))
    if multi:
        def run(layout, maps, codes):
            from .cells import CellRows, cell_rows, chunk_cells
            acc, parts = None, []
            for df in _batches(dataset, cols, batch_size, "cells", progress):
                parts.append(chunk_cells(design, layout, maps, codes, df))
                if len(parts) >= combine_every:
                    acc = combine_partials(([acc] if acc is not None else []) + parts)
                    parts = []
            total = combine_partials(([acc] if acc is not None else []) + parts)
            return CellRows.concat([cell_rows(total, layout.c)])

        from .cells import model_from_cells
        return model_from_cells(design, sample, mom, found, run, n_dropped=mom.dropped,
                                source=path)
    rp = working_maps(design, mom)
    acc, parts = None, []
    for df in _batches(dataset, cols, batch_size, "statistics", progress):
        parts.append(chunk_partial(design, rp, df))
        if len(parts) >= combine_every:
            acc = combine_partials(([acc] if acc is not None else []) + parts)
            parts = []
    total = combine_partials(([acc] if acc is not None else []) + parts)
    st, labels = stats_from_partial(design, total)
    return SummedHLM(design, st, rp, labels, n_dropped=mom.dropped, source=path)
