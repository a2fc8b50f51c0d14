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
2. per-group partial statistics, split by a hash of the group label into
   buckets; each bucket's pieces are summed by its own tree (partials of a group
   spread over several partitions meet there), reduced to the per-group roots
   F_j and G_j where the bucket lives, and persisted on the cluster.

The client receives the roots' numbers only (m groups x a few numbers, no
labels) and optimises.  The BLUPs are computed per bucket on the workers and
the fitted values and residuals join the rows to them: lazy Dask collections
(:class:`DaskHLMResults`).  Storing the data clustered by group (e.g. sorted by
the group column) keeps every partial small.

Several grouping factors (nested, ``(x | school) + (1 | school:klass)``, or
crossed) go through :mod:`sm_hlm.scale.cells`: step 0 also finds the levels of
every grouping column, and step 2 sums per *cell* (combination of all grouping
columns' levels) the row count, the column sums and the Gram matrix of
[X y Z], in hashed buckets of whole cells, each turned into at most c
pseudo-rows on its worker; the client gathers the pseudo-rows (O(cells x c^2)
numbers; the innermost units of nested data) and fits the in-memory blocked
engine on them with the true number of observations
(:class:`~sm_hlm.scale.cells.CellHLM`).  Fitted values and residuals are lazy
Dask Series (each partition joined to the per-level BLUP tables).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from .stats import (ChunkDesign, GroupRoots, Moments, SummedHLM, SummedHLMResults,
                    bucket_roots, chunk_moments, chunk_partial, combine_moments, combine_pieces,
                    is_multilevel, split_partial, stats_from_roots, working_maps)

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


def _levels(ddf, design_cols: list[str], response: str, group: str | None, *,
            group_columns: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Levels of the categorical design columns and of every column in ``group_columns``
    (any dtype), in one pass over the data."""
    dask = _require_dask()
    levels: dict[str, list[Any]] = {}
    todo = []
    for c in list(design_cols) + [g for g in group_columns if g not in design_cols]:
        if c in (response, group):
            continue
        dt = ddf.dtypes[c]
        if dt.kind in "fiu" and c not in group_columns:
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
    """:class:`~sm_hlm.scale.stats.SummedHLM` whose rows are a Dask DataFrame.

    The per-group statistics stay on the cluster, reduced to their roots in
    buckets of whole groups (``roots``: persisted Dask objects, one per bucket);
    the client holds the roots' numbers only (no labels) while it optimises.
    """

    _client_blups = False

    def __init__(self, *args: Any, roots: list[Any] = (), group_dtype: Any = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.roots = list(roots)
        self.group_dtype = group_dtype

    def _results(self, fit: Any) -> "DaskHLMResults":
        return DaskHLMResults(self, fit)


class _FixedLambda:
    """Lambda at the fitted theta (picklable, for the workers)."""

    def __init__(self, lam: np.ndarray):
        self.lam = lam

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        return self.lam


def _bucket_blups(roots: GroupRoots, fit: dict[str, Any]) -> pd.DataFrame:
    """The BLUPs of one bucket's groups, on the worker that holds the bucket."""
    from ..engine.deviance import ProfiledDeviance
    st = stats_from_roots(fit["design"], roots.F, roots.Gt, fit["WtW"], fit["n"],
                          within=fit["within"])
    dev = ProfiledDeviance(st, _FixedLambda(fit["lam"]), reml=fit["reml"],
                           reparam=fit["reparam"], theta_index=fit["theta_index"])
    b, _ = dev.conditional_modes(fit["theta"], fit["beta"])
    return pd.DataFrame(b, index=roots.labels, columns=fit["names"])


def _fitted_chunk(chunk: pd.DataFrame, design: ChunkDesign, beta: np.ndarray,
                  bcols: list[str], resid: bool) -> pd.Series:
    """X beta + Z b_j (or y minus it) of the complete rows of a chunk joined to its BLUPs."""
    index = chunk.index
    chunk = chunk.set_axis(pd.RangeIndex(len(chunk)))        # positions: the index may repeat
    y, X, Z, _, _ = design.build(chunk)
    kept = design.prepare(chunk)[0].index.to_numpy()
    b = chunk[bcols].to_numpy(dtype=float)[kept]
    b[np.isnan(b)] = 0.0                                       # a group not in the fit
    fit = X @ beta + np.einsum("ik,ik->i", Z, b)
    return pd.Series(y - fit if resid else fit, index=index[kept],
                     name="resid" if resid else "fitted")


class DaskHLMResults(SummedHLMResults):
    """Results of a :class:`DaskHLM`: results per group or per row are lazy Dask collections.

    ``random_effects`` (one row per group, indexed by the group label) is computed
    on the workers from the buckets of group roots; ``fittedvalues`` and ``resid``
    join the rows to it (a Dask merge on the group column) and are computed per
    partition.  Nothing is gathered to the client until ``.compute()``.
    """

    def _fit_args(self) -> dict[str, Any]:
        m = self.model
        theta = np.asarray(self.theta, dtype=float)
        dev = m.deviance_function(reml=self.reml)
        return {"design": m.design, "WtW": m._work.WtW, "n": m._work.nobs,
                "within": dev._within, "lam": m.re_design.lambda_(theta),
                "reml": self.reml, "reparam": m._reparam,
                "theta_index": m.re_design.lambda_index, "theta": theta,
                "beta": self.fe_params.to_numpy(), "names": list(m.re_design.names)}

    @functools.cached_property
    def random_effects(self):
        """BLUPs b_j, a lazy Dask DataFrame indexed by group (one partition per bucket)."""
        dask = _require_dask()
        import dask.dataframe as dd
        m = self.model
        args = dask.delayed(self._fit_args(), pure=True)
        names = list(m.re_design.names)
        meta = pd.DataFrame({c: pd.Series(dtype=float) for c in names},
                            index=pd.Index([], dtype=m.group_dtype, name=m.group_name))
        parts = [dask.delayed(_bucket_blups)(r, args) for r in m.roots]
        return dd.from_delayed(parts, meta=meta, verify_meta=False)

    def _rows(self, resid: bool):
        m = self.model
        ddf = m.source
        bcols = [f"__b{k}__" for k in range(m.k_re)]
        re = self.random_effects.rename(columns=dict(zip(m.re_design.names, bcols)))
        joined = ddf.merge(re, left_on=m.group_name, right_index=True, how="left")
        name = "resid" if resid else "fitted"
        return joined.map_partitions(_fitted_chunk, m.design, self.fe_params.to_numpy(), bcols,
                                     resid, meta=pd.Series(dtype=float, name=name))

    def fittedvalues_of(self, chunk: pd.DataFrame, *, include_re: bool = True) -> pd.Series:
        """Not for a Dask fit: its BLUPs live on the cluster (see :attr:`fittedvalues`)."""
        raise NotImplementedError(
            "the BLUPs of a Dask fit live on the cluster: use the lazy .fittedvalues and .resid "
            "(Dask Series), or .random_effects.compute() to bring the BLUPs to the client")

    def resid_of(self, chunk: pd.DataFrame) -> pd.Series:
        """Not for a Dask fit (see :attr:`resid`)."""
        return self.fittedvalues_of(chunk)

    @property
    def fittedvalues(self):
        """X beta + Z b_j per complete row, a lazy Dask Series indexed as the data."""
        return self._rows(False)

    @property
    def resid(self):
        """Conditional residuals y - X beta - Z b_j, a lazy Dask Series."""
        return self._rows(True)


def from_dask(formula: str, data: Any, *, levels: dict[str, list[Any]] | None = None,
              missing: str = "drop", split_every: int = 8, n_buckets: int | None = None,
              **kwargs: Any) -> Any:
    """A model whose sufficient statistics are computed on Dask workers.

    Parameters
    ----------
    formula
        lme4-style formula, ``"y ~ x + (x | g)"``; several grouping factors
        (``(1 | school/klass)``, ``(x | a) + (1 | a:b)``, crossed
        ``(1 | subj) + (1 | item)``) give a :class:`~sm_hlm.scale.cells.CellHLM`
        (client memory O(cells x c^2), see :mod:`sm_hlm.scale.cells`).
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
    n_buckets
        Buckets of whole groups (cells, for several factors) the statistics are
        reduced into (for one factor they stay on the cluster, one persisted
        object each); default: the number of partitions, at most 64.

    Returns
    -------
    DaskHLM or CellHLM
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
    if n_buckets is not None and int(n_buckets) < 1:
        raise ValueError(f"n_buckets must be a positive integer, got {n_buckets!r}")
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
    multi = is_multilevel(parsed.random)
    group = parsed.random[0].group if parsed.random and not multi else None
    gcols = tuple(dict.fromkeys(c for sp in parsed.random for c in sp.columns)) if multi else ()
    absent = [c for c in gcols if c not in data.columns]
    if absent:
        raise KeyError(f"grouping column(s) {absent} are not in the data")
    found = _levels(data, sorted(used), parsed.response, group, group_columns=gcols)
    found.update(levels or {})
    design = ChunkDesign(formula, sample, levels=found, missing=missing)
    parts = data.to_delayed()
    mom = _tree(dask, [dask.delayed(chunk_moments)(design, p) for p in parts],
                _fold_moments, split_every).compute()
    if multi:
        return _cells_model(dask, design, sample, mom, found, data, parts, split_every,
                            n_buckets)
    rp = working_maps(design, mom)
    # the per-group statistics in buckets of whole groups (a hash of the label): each
    # bucket's pieces are summed by a tree, reduced to their roots where they are, and kept
    # on the cluster; the client receives the roots' numbers only
    k = max(1, min(int(n_buckets), data.npartitions)) if n_buckets else \
        max(1, min(64, data.npartitions))
    pieces = [dask.delayed(split_partial, nout=k)(dask.delayed(chunk_partial)(design, rp, p), k)
              for p in parts]
    roots = [dask.delayed(bucket_roots)(design, _tree(dask, [pc[b] for pc in pieces],
                                                      combine_pieces, split_every))
             for b in range(k)]
    roots = list(dask.persist(*roots))
    sizes = dask.compute(*[dask.delayed(_root_totals)(r) for r in roots])
    q, r = design.q, design.k_fe + 1
    m = sum(s[0] for s in sizes)
    F = np.empty((q, q, m))
    Gt = np.empty((r, q, m))
    pos = 0
    for root, (mk, _, _) in zip(roots, sizes):       # one bucket at a time: no second copy
        Fk, Gk = dask.compute(dask.delayed(_root_arrays)(root))[0]
        F[:, :, pos:pos + mk] = Fk
        Gt[:, :, pos:pos + mk] = Gk
        pos += mk
        del Fk, Gk
    if not m:
        raise ValueError("empty data: no complete rows")
    st = stats_from_roots(design, F, Gt, sum(s[1] for s in sizes), int(sum(s[2] for s in sizes)))
    return DaskHLM(design, st, rp, None, n_dropped=mom.dropped, source=data, roots=roots,
                   group_dtype=sample[group].dtype)


def _cells_model(dask, design: ChunkDesign, sample: pd.DataFrame, mom: Moments,
                 found: dict[str, list[Any]], data: Any, parts: list, split_every: int,
                 n_buckets: int | None):
    """Several grouping factors: per-cell statistics in buckets of whole cells (a hash of
    the cell key), each summed by a tree and turned into pseudo-rows on the workers; the
    client gathers the pseudo-rows (see :mod:`sm_hlm.scale.cells`)."""
    from .cells import CellRows, cell_rows, chunk_cells, model_from_cells

    k = max(1, min(int(n_buckets), data.npartitions)) if n_buckets else \
        max(1, min(64, data.npartitions))

    def run(layout, maps, codes) -> CellRows:
        d_design, d_layout, d_maps, d_codes = (dask.delayed(o, pure=True)
                                               for o in (design, layout, maps, codes))
        pieces = [dask.delayed(split_partial, nout=k)(
            dask.delayed(chunk_cells)(d_design, d_layout, d_maps, d_codes, p), k) for p in parts]
        buckets = [dask.delayed(cell_rows)(_tree(dask, [pc[b] for pc in pieces],
                                                 combine_pieces, split_every), layout.c)
                   for b in range(k)]
        return CellRows.concat(list(dask.compute(*buckets)))

    return model_from_cells(design, sample, mom, found, run, n_dropped=mom.dropped, source=data,
                            dask_source=True)


def _root_totals(roots: GroupRoots) -> tuple[int, np.ndarray, int]:
    return roots.F.shape[2], roots.WtW, roots.n


def _root_arrays(roots: GroupRoots) -> tuple[np.ndarray, np.ndarray]:
    return roots.F, roots.Gt
