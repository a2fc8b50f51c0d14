"""Several grouping factors from summed per-cell statistics (Dask, parquet batches).

A *cell* is one combination of the levels of every grouping column of the
formula (``school`` and ``klass`` for ``(x | school) + (1 | school:klass)``;
``subj`` and ``item`` for crossed ``(1 | subj) + (1 | item)``).  Within a cell
all rows share the level of every factor, so every cross product the blocked
Cholesky engine (:mod:`sm_hlm.engine.structure`) reads -- Z_k'Z_l, Z_k'W and
W'W, W = [X y] -- is a sum over cells of pieces of the cell's Gram matrix
A_c'A_c, A_c = [X~ y~ E~] restricted to the cell's rows (E the columns of Z
that are not columns of X; ``~``: the working coordinates below).

Notes
-----
Three passes over the data, each a map over chunks and a sum:

0. the levels of the grouping columns (and of categorical covariates), so
   that every chunk codes a cell by the same integer key;
1. column moments (:func:`sm_hlm.scale.stats.chunk_moments`), which give the
   centring and scaling of :class:`~sm_hlm.multilevel.MultilevelHLM`'s working
   coordinates exactly as in memory (:func:`cell_maps`);
2. per cell: the row count n_c, the column sums s_c = 1'A_c and the upper
   triangle of G_c = A_c'A_c (:func:`chunk_cells`, vectorised with
   ``np.bincount``); cells spread over several chunks are summed by key
   (for Dask in buckets of cells, a hash of the key, each summed by its own
   tree reduction).

Each cell's G_c then becomes at most c = dim(G_c) pseudo-rows R_c with
R_c'R_c = G_c (:func:`gram_rows`, a batched eigendecomposition,
G_c = V diag(lambda) V', R_c = diag(sqrt(lambda)) V', rows of zero
eigenvalues dropped: a cell of one row gives one pseudo-row).  The pseudo-rows
carry the cell's levels, so their cross products are exactly those of the
data, and :class:`CellHLM` fits them with the in-memory engine, told the true
number of observations n (ML uses n, REML n - p).  Everything that the
optimiser, the estimates, the recomputed log-likelihood (a Gram quadratic
form of y - X beta), the Satterthwaite df, the profile intervals and the
variance components' standard errors read is a function of these cross
products and of n; the checks per level (lme4's checkNlevels / checkZdims)
and the moment start use the true counts and sums per level.

Memory on the client is O(cells x c^2) (c = p + 1 + columns of Z not in X):
for nested data the cells are the innermost units (classes of a three-level
model), for crossed data the observed (subject, item) pairs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap

from ..multilevel.factors import GroupingFactor, factor_from_columns
from ..multilevel.model import MultilevelHLM
from ..multilevel.results import MultilevelResults, MultilevelResultsWrapper
from .stats import ChunkDesign, Moments, Partial

__all__ = ["BlupTables", "CellHLM", "CellResults", "CellResultsWrapper", "CellLayout",
           "CellMaps", "CellRows", "GroupCodes", "cell_maps", "cell_rows", "chunk_cells",
           "gram_rows", "model_from_cells"]


# ------------------------------------------------------------------ layout and maps
@dataclass(frozen=True)
class CellLayout:
    """Which columns a cell's Gram matrix holds, and each factor's columns of Z.

    The cell basis is [X (p), y, E] with E the columns of Z whose name is not
    a column of X (an intercept or a slope shared with the fixed part is read
    from X).  ``z_source[j]`` is ``("x", i)`` (column i of X) or ``("e", k)``
    (column k of E) for column j of Z; ``factors`` maps each factor, in the
    order of the formula, to its data columns, its columns of Z, their names
    and the sizes of its diagonal blocks (as
    :meth:`sm_hlm.multilevel.MultilevelHLM.from_formula` builds them).
    """

    p: int
    z_source: tuple[tuple[str, int], ...]
    n_extra: int
    factors: dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]]

    @property
    def c(self) -> int:
        return self.p + 1 + self.n_extra

    @classmethod
    def of(cls, design: ChunkDesign, sample: pd.DataFrame) -> "CellLayout":
        """The layout of ``design`` (Z columns named as X columns: checked equal on ``sample``)."""
        _, X, Z, _, _ = design.build_frame(sample)
        xpos = {n: i for i, n in enumerate(design.exog_names)}
        src: list[tuple[str, int]] = []
        extra: dict[str, int] = {}
        for j, name in enumerate(design.z_names):
            i = xpos.get(name)
            if i is not None and np.array_equal(Z[:, j], X[:, i]):
                src.append(("x", i))
            else:
                extra.setdefault(name, len(extra))
                src.append(("e", extra[name]))
        factors: dict[str, Any] = {}
        start = 0
        for s, info in zip(design.specs, design.z_infos):
            k = len(info.column_names)
            cols, idx, names, blocks = factors.get(s.group, (s.columns, (), (), ()))
            factors[s.group] = (cols, idx + tuple(range(start, start + k)),
                                names + tuple(map(str, info.column_names)),
                                blocks + ((k,) if s.correlated else (1,) * k))
            start += k
        return cls(design.k_fe, tuple(src), len(extra), factors)

    def basis(self, y: np.ndarray, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """The cell basis [X y E] of some rows (original units)."""
        E = np.empty((len(y), self.n_extra))
        for j, (kind, k) in enumerate(self.z_source):
            if kind == "e":
                E[:, k] = Z[:, j]
        return np.column_stack([X, y, E])


@dataclass(frozen=True)
class CellMaps:
    """:class:`~sm_hlm.multilevel.MultilevelHLM`'s working coordinates, from column moments.

    X~ = X M, y~ = (y - X shift) / s_y, Z~_j = Z_j / zscale_j; in the cell basis
    B~ = B T with T = [[M, -shift / s_y, 0], [0, 1 / s_y, 0], [0, 0, diag(1 / zscale_E)]].
    ``const_y`` is the response's value when it is constant (else None);
    ``z_const`` the value of each column of Z that is constant (else NaN).
    """

    M: np.ndarray
    shift: np.ndarray
    sy: float
    zscale: np.ndarray
    T: np.ndarray
    const_y: float | None
    z_const: np.ndarray


def cell_maps(layout: CellLayout, mom: Moments) -> CellMaps:
    """The maps of :attr:`sm_hlm.multilevel.MultilevelHLM._working` from the moments of [X y Z].

    As in memory: non-constant columns of X centred (when X has a constant
    column) and scaled to unit SD, y likewise, each Z column scaled to unit
    root mean square (population moments, from Chan's combination of the
    chunks' moments).
    """
    p = layout.p
    n = mom.n
    mean, lo, hi = mom.mean, mom.lo, mom.hi
    var = mom.m2 / n
    const = (lo[:p] == hi[:p]) & (lo[:p] != 0)
    sd = np.sqrt(var[:p])
    sd = np.where(sd > 0, sd, 1.0)
    M = np.eye(p)
    has_const = bool(const.any())
    c0 = int(np.flatnonzero(const)[0]) if has_const else -1
    for k in range(p):                          # a loop over columns
        if const[k]:
            continue
        M[k, k] = 1.0 / sd[k]
        if has_const:
            M[c0, k] = -mean[k] / sd[k] / lo[c0]
    shift = np.zeros(p)
    if has_const:
        ybar = float(mean[p])
        sy = float(np.sqrt(var[p]))
        shift[c0] = ybar / lo[c0]
    else:
        sy = float(np.sqrt(var[p] + mean[p] ** 2))
    sy = sy if sy > 0 else 1.0
    zs = np.sqrt(var[p + 1:] + mean[p + 1:] ** 2)
    zs = np.where(zs > 0, zs, 1.0)
    c = layout.c
    T = np.zeros((c, c))
    T[:p, :p] = M
    T[:p, p] = -shift / sy
    T[p, p] = 1.0 / sy
    for j, (kind, k) in enumerate(layout.z_source):
        if kind == "e":
            T[p + 1 + k, p + 1 + k] = 1.0 / zs[j]
    const_y = float(lo[p]) if lo[p] == hi[p] else None
    z_const = np.where(lo[p + 1:] == hi[p + 1:], lo[p + 1:], np.nan)
    return CellMaps(M, shift, sy, zs, T, const_y, z_const)


@dataclass(frozen=True)
class GroupCodes:
    """Integer codes of the grouping columns on levels fixed up front, and the cell key.

    The key of a row is the mixed-radix number of its columns' codes; the
    product of the numbers of levels must stay below 2**62.
    """

    columns: tuple[str, ...]
    levels: tuple[pd.Index, ...]

    def __post_init__(self) -> None:
        total = 1
        for c, lv in zip(self.columns, self.levels):
            total *= max(len(lv), 1)
            if total >= 2 ** 62:
                raise ValueError(
                    f"the grouping columns {list(self.columns)} have too many combinations of "
                    "levels to key the cells by one 64-bit integer; recode a column")

    @property
    def radix(self) -> np.ndarray:
        return np.array([max(len(lv), 1) for lv in self.levels], dtype=np.int64)

    def codes(self, frame: pd.DataFrame, *, strict: bool = True) -> np.ndarray:
        """(rows, columns) codes; -1 for a value not among the levels (an error if ``strict``)."""
        out = np.empty((len(frame), len(self.columns)), dtype=np.int64)
        for j, (c, lv) in enumerate(zip(self.columns, self.levels)):
            out[:, j] = lv.get_indexer(frame[c])
            if strict and (out[:, j] < 0).any():
                v = frame[c].to_numpy()[np.flatnonzero(out[:, j] < 0)[0]]
                raise ValueError(f"grouping column {c!r} has the value {v!r}, which the pass "
                                 "over the data that found its levels did not see")
        return out

    def key(self, codes: np.ndarray, which: tuple[int, ...] | None = None) -> np.ndarray:
        """Mixed-radix key of the codes of the columns ``which`` (all by default)."""
        which = tuple(range(len(self.columns))) if which is None else which
        rad = self.radix
        key = np.zeros(len(codes), dtype=np.int64)
        for j in which:
            key = key * rad[j] + codes[:, j]
        return key

    def decode(self, key: np.ndarray) -> np.ndarray:
        """The columns' codes of cell keys (inverse of :meth:`key`)."""
        out = np.empty((len(key), len(self.columns)), dtype=np.int64)
        rest = np.asarray(key, dtype=np.int64).copy()
        for j in range(len(self.columns) - 1, -1, -1):
            rest, out[:, j] = np.divmod(rest, self.radix[j])
        return out


# ------------------------------------------------------------------ statistics per cell
def _gram_columns(c: int) -> list[str]:
    return [f"g{a}_{b}" for a in range(c) for b in range(a, c)]


def chunk_cells(design: ChunkDesign, layout: CellLayout, maps: CellMaps, codes: GroupCodes,
                chunk: pd.DataFrame) -> Partial:
    """Per cell of one chunk: the row count, the column sums and the upper triangle of the
    Gram matrix of the working cell basis B~ (a frame indexed by the cell key), and B~'B~.

    Vectorised: one ``np.bincount`` per column pair, no loop over cells or rows.
    """
    y, X, Z, prep, _ = design.build_frame(chunk)
    B = layout.basis(y, X, Z) @ maps.T
    key = codes.key(codes.codes(prep))
    cell, uniq = pd.factorize(key)
    m, c = len(uniq), B.shape[1]
    cols: dict[str, np.ndarray] = {"n": np.bincount(cell, minlength=m).astype(float)}
    for a in range(c):
        cols[f"s{a}"] = np.bincount(cell, B[:, a], minlength=m)
    for a in range(c):
        for b in range(a, c):
            cols[f"g{a}_{b}"] = np.bincount(cell, B[:, a] * B[:, b], minlength=m)
    frame = pd.DataFrame(cols, index=pd.Index(np.asarray(uniq, dtype=np.int64), name="cell"))
    return Partial(frame, B.T @ B, len(y))


def gram_rows(G: np.ndarray, *, rtol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-rows of a stack of Gram matrices: R_c with R_c'R_c = G_c.

    Parameters
    ----------
    G
        (m, c, c) symmetric positive semi-definite matrices.
    rtol
        Eigenvalues at most ``rtol * max(lambda_max, 0)`` are dropped (default
        c times the machine epsilon: the rounding of G itself).

    Returns
    -------
    rows : ndarray, shape (r, c)
        The pseudo-rows, cell by cell (rank(G_c) rows each, at least one).
    cell : ndarray, shape (r,)
        The cell of each pseudo-row.

    Notes
    -----
    With the batched eigendecomposition G_c = V_c diag(lambda_c) V_c', the
    rows sqrt(lambda_ci) v_ci' of the positive eigenvalues give
    R_c'R_c = sum_i lambda_ci v_ci v_ci' = G_c (up to the dropped
    eigenvalues, which are rounding).  A cell with fewer rows than columns
    has rank below c and gives as many pseudo-rows as its rank.
    """
    G = np.asarray(G, dtype=float)
    m, c, _ = G.shape
    if m == 0:
        return np.zeros((0, c)), np.zeros(0, dtype=np.intp)
    lam, V = np.linalg.eigh(G)                        # ascending eigenvalues
    tol = (c * np.finfo(float).eps if rtol is None else rtol) * np.maximum(lam[:, -1:], 0.0)
    keep = lam > tol
    keep[:, -1] = True                                # every cell keeps a row (its levels occur)
    rows = np.sqrt(np.maximum(lam, 0.0))[:, :, None] * V.transpose(0, 2, 1)
    return rows[keep], np.nonzero(keep)[0]


@dataclass(frozen=True)
class CellRows:
    """Cells (sorted by key) and their pseudo-rows in the working cell basis.

    ``keys`` (m,), ``n`` rows per cell (m,), ``sums`` (m, c) column sums of B~,
    ``rows`` (r, c) pseudo-rows and ``cell`` (r,) the cell of each.
    """

    keys: np.ndarray
    n: np.ndarray
    sums: np.ndarray
    rows: np.ndarray
    cell: np.ndarray

    @classmethod
    def concat(cls, parts: list["CellRows"]) -> "CellRows":
        """The cells of several buckets, sorted by key."""
        parts = [p for p in parts if len(p.keys)]
        if not parts:
            raise ValueError("empty data: no complete rows")
        keys = np.concatenate([p.keys for p in parts])
        offs = np.cumsum([0] + [len(p.keys) for p in parts[:-1]])
        cell = np.concatenate([p.cell + o for p, o in zip(parts, offs)])
        rows = np.concatenate([p.rows for p in parts])
        order = np.argsort(keys, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        cell = rank[cell]
        ro = np.argsort(cell, kind="stable")
        return cls(keys[order], np.concatenate([p.n for p in parts])[order],
                   np.concatenate([p.sums for p in parts])[order], rows[ro], cell[ro])


def cell_rows(part: Partial, c: int) -> CellRows:
    """The pseudo-rows of whole cells (a bucket's summed statistics)."""
    frame = part.groups
    keys = frame.index.to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    m = len(keys)
    G = np.empty((m, c, c))
    for a in range(c):                                 # a loop over column pairs
        for b in range(a, c):
            G[:, a, b] = frame[f"g{a}_{b}"].to_numpy()[order]
            G[:, b, a] = G[:, a, b]
    rows, cell = gram_rows(G)
    sums = np.column_stack([frame[f"s{a}"].to_numpy()[order] for a in range(c)]) if m else \
        np.zeros((0, c))
    return CellRows(keys[order], frame["n"].to_numpy()[order], sums, rows, cell)


# ------------------------------------------------------------------ the model
@dataclass(frozen=True, eq=False)
class CellFactor(GroupingFactor):
    """A grouping factor of pseudo-rows: ``codes`` per pseudo-row, ``counts`` the true rows
    per level (what lme4's per-level checks and the reliabilities read)."""

    counts: np.ndarray = dataclasses.field(default=None, repr=False)

    @property
    def sizes(self) -> np.ndarray:
        return self.counts


class CellHLM(MultilevelHLM):
    """A multilevel model known through its per-cell statistics (data beyond memory).

    Built by :func:`model_from_cells` (from :func:`sm_hlm.scale.dask.from_dask`
    or :func:`sm_hlm.scale.parquet.from_parquet` for a formula with several
    grouping factors).  Its rows are the cells' pseudo-rows (see the module
    notes): ``exog``, ``endog`` and each term's Z hold them in original units,
    ``nobs`` is the number of observations.  :meth:`fit` and its estimates,
    log-likelihood, Satterthwaite df and profile intervals are those of
    :class:`~sm_hlm.multilevel.MultilevelHLM` on the data's rows.

    Client memory is O(cells x c^2), c = p + 1 + the columns of Z not in X; the
    cells are the combinations of the grouping columns' levels that occur (the
    innermost units of nested data).
    """

    #: the data's rows are not in memory (the summary skips the residual quantiles)
    rows_in_memory = False

    def __init__(self, design: ChunkDesign, layout: CellLayout, maps: CellMaps,
                 codes: GroupCodes, cells: CellRows, *, n_dropped: int = 0, source: Any = None,
                 dask_source: bool = False):
        p = layout.p
        P = cells.rows
        Xw, yw = P[:, :p], P[:, p]
        Minv = np.linalg.inv(maps.M) if p else np.zeros((0, 0))
        X = Xw @ Minv
        y = maps.sy * yw + X @ maps.shift
        Zall = np.empty((len(P), len(layout.z_source)))
        for j, (kind, k) in enumerate(layout.z_source):
            Zall[:, j] = X[:, k] if kind == "x" else P[:, p + 1 + k] * maps.zscale[j]
        col_codes = codes.decode(cells.keys)
        cell_frame = pd.DataFrame({c: codes.levels[j][col_codes[:, j]]
                                   for j, c in enumerate(codes.columns)})
        groups, exog_re, blocks, fac_cols, cell_levels = {}, {}, {}, {}, {}
        for name, (cols, idx, names, blk) in layout.factors.items():
            f = factor_from_columns(cell_frame, cols)
            cell_levels[name] = f.codes
            groups[name] = pd.Categorical.from_codes(f.codes[cells.cell], categories=f.labels)
            exog_re[name] = pd.DataFrame(Zall[:, list(idx)], columns=list(names))
            blocks[name] = blk
            fac_cols[name] = cols
        self._factor_columns = fac_cols
        self._cells = cells
        self._cell_levels = cell_levels
        self._maps = maps
        self._layout = layout
        self._n_cells_obs = int(cells.n.sum())
        self._cell_Xw = Xw
        super().__init__(pd.Series(y, name=design.parsed.response),
                         pd.DataFrame(X, columns=design.exog_names), pd.DataFrame(groups),
                         exog_re, re_blocks=blocks, missing="none")
        n = self._n_cells_obs
        self.nobs = float(n)
        self.df_resid = self.nobs - self.k_fe
        for name, f in list(self.factors.items()):
            self.factors[name] = CellFactor(f.name, f.codes, f.labels, f.columns,
                                            counts=np.bincount(cell_levels[name],
                                                               weights=cells.n,
                                                               minlength=f.n_levels))
        self.design = design
        self.codes = codes
        self.formula = design.formula
        self.parsed_formula = design.parsed
        self.re_specs = design.specs
        self.n_dropped = n_dropped
        self.source = source
        #: ``source`` is a Dask DataFrame: per-row results are lazy Dask Series
        self.dask_source = bool(dask_source)
        self.n_cells = len(cells.keys)
        self.__dict__["_cell_working"] = self._make_working(Xw, yw)

    # ------------------------------------------------------------ hooks of the base
    def _identification_data(self) -> tuple[int, float | None, np.ndarray]:
        # the working X of the pseudo-rows: centred columns as aliased_columns judges them
        return self._n_cells_obs, self._maps.const_y, self._cell_Xw

    def _make_working(self, Xw: np.ndarray, yw: np.ndarray) -> tuple:
        mp, lay = self._maps, self._layout
        zscale, wterms = [], []
        for t in self.re_terms:
            s = mp.zscale[list(lay.factors[t.factor][1])]
            zscale.append(s)
            wterms.append(dataclasses.replace(t, z=t.z / s))
        return (Xw, yw, wterms, mp.M, mp.shift, mp.sy, zscale)

    @property
    def _working(self) -> tuple:
        """As :attr:`MultilevelHLM._working`, the maps from the data's moments."""
        return self.__dict__["_cell_working"]

    def moment_start(self) -> np.ndarray:
        """The start of :meth:`MultilevelHLM.moment_start` from the cells' counts and sums.

        Notes
        -----
        With the OLS fit beta of y~ on X~ (exact from the pseudo-rows), each
        level's residual sum is sum over its cells of s_c[y~] - s_c[X~] beta, and
        the pooled within-level sum of squares is r'r - sum_l n_l rbar_l^2.
        """
        Xw, yw, wterms = self._working[:3]
        p = self.k_fe
        beta = np.linalg.lstsq(Xw, yw, rcond=None)[0] if p else np.zeros(0)
        rss = float(np.sum((yw - Xw @ beta) ** 2))
        S = self._cells.sums
        rc = S[:, p] - S[:, :p] @ beta
        x0 = self.layout.start()
        for k, t in enumerate(wterms):
            zc = self._maps.z_const[list(self._layout.factors[t.factor][1])]
            icpt = [i for i in range(t.S) if np.isfinite(zc[i])]
            if not icpt:
                continue
            lv = self._cell_levels[t.factor]
            n_l = np.bincount(lv, weights=self._cells.n, minlength=t.n_levels)
            mean_l = np.bincount(lv, weights=rc, minlength=t.n_levels) / n_l
            ss_w = rss - float(np.sum(n_l * mean_l ** 2))
            df_w = self._n_cells_obs - t.n_levels
            if df_w <= 0 or ss_w <= 0:
                continue
            s2w = ss_w / df_w
            s2b = float(np.var(mean_l)) - float(np.mean(s2w / n_l))
            i = icpt[0]
            zval = zc[i] / self._working[6][k][i]
            ratio = np.sqrt(max(s2b / s2w, 0.01)) / abs(zval)
            x0[self.layout.offsets[k] + t.theta_index().index((i, i))] = ratio
        return x0

    def _make_results(self, fit: Any, *, compute_vcomp_cov: bool = True) -> "CellResultsWrapper":
        return CellResultsWrapper(CellResults(self, fit, compute_vcomp_cov=compute_vcomp_cov))


@dataclass(frozen=True)
class BlupTables:
    """Per factor: the sorted keys of its levels (its columns' codes), the BLUPs in that
    order and its columns of Z (picklable, for the workers)."""

    factors: tuple[tuple[tuple[int, ...], np.ndarray, np.ndarray, tuple[int, ...]], ...]


def _fitted_rows(chunk: pd.DataFrame, design: ChunkDesign, codes: GroupCodes,
                 beta: np.ndarray, tables: BlupTables, *, resid: bool,
                 include_re: bool = True) -> pd.Series:
    """X beta + sum_k Z_k b_k (or y minus it) of the complete rows of a chunk.

    A level not in the fit (new data) contributes zero for its factor.
    """
    y, X, Z, prep, _ = design.build_frame(chunk)
    fit = X @ beta
    if include_re and len(y):
        cc = codes.codes(prep, strict=False)
        for which, keys, B, zcols in tables.factors:
            k = codes.key(np.maximum(cc, 0), which)
            pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
            ok = (keys[pos] == k) & (cc[:, list(which)] >= 0).all(axis=1)
            b = B[pos]
            b[~ok] = 0.0
            fit = fit + np.einsum("ik,ik->i", Z[:, list(zcols)], b)
    name = "resid" if resid else "fitted"
    return pd.Series(y - fit if resid else fit, index=prep.index, name=name)


_ROWS_MSG = ("it needs the rows of the data in memory, and a fit from per-cell statistics "
             "(Dask or parquet data) keeps only the cells' cross products. Fit "
             "sm_hlm.HLM.from_formula on a pandas DataFrame (e.g. a sample of the top-level "
             "units) for it")


class CellResults(MultilevelResults):
    """Results of a :class:`CellHLM` fit.

    Estimates, standard errors, ``cov_re``, ``theta``, ``llf``, ``summary()``
    (without the residual quantiles), ``random_effects`` / ``ranef()`` (one
    row per level, in memory), ``satterthwaite()``, ``conf_int_profile()``,
    ``icc()`` and ``reliability()`` are those of the in-memory fit.  For Dask
    data ``fittedvalues`` and ``resid`` are lazy Dask Series (each partition
    joined to the per-level BLUP tables); for any data :meth:`fittedvalues_of`
    and :meth:`resid_of` compute them for one pandas chunk.  What needs whole
    rows (cluster-robust covariances, simulation, refits, the bootstrap,
    ``predict`` of the fitted rows) raises NotImplementedError.
    """

    rows_in_memory = False

    def blup_tables(self) -> BlupTables:
        """The per-level BLUPs keyed by their grouping columns' codes (see :class:`BlupTables`)."""
        model = self.model
        codes = model.codes
        cell_codes = codes.decode(model._cells.keys)
        out = []
        for k, t in enumerate(model.re_terms):
            cols, zcols = model._layout.factors[t.factor][:2]
            which = tuple(codes.columns.index(c) for c in cols)
            lv = model._cell_levels[t.factor]
            first = np.empty(t.n_levels, dtype=np.intp)
            first[lv[::-1]] = np.arange(len(lv) - 1, -1, -1)
            keys = codes.key(cell_codes[first], which)
            order = np.argsort(keys)
            out.append((which, keys[order], np.asarray(self.fit_result.blups[k])[order],
                        tuple(zcols)))
        return BlupTables(tuple(out))

    def fittedvalues_of(self, chunk: pd.DataFrame, *, include_re: bool = True) -> pd.Series:
        """Fitted values X beta + sum_k Z_k b_k of the complete rows of a pandas chunk
        (levels not in the fit contribute zero)."""
        return _fitted_rows(chunk, self.model.design, self.model.codes,
                            np.asarray(self.fit_result.fe_params), self.blup_tables(),
                            resid=False, include_re=include_re)

    def resid_of(self, chunk: pd.DataFrame) -> pd.Series:
        """Conditional residuals y - X beta - sum_k Z_k b_k of the complete rows of a chunk."""
        return _fitted_rows(chunk, self.model.design, self.model.codes,
                            np.asarray(self.fit_result.fe_params), self.blup_tables(),
                            resid=True)

    def _lazy_rows(self, resid: bool):
        model = self.model
        if not model.dask_source:
            raise NotImplementedError(
                f"{'resid' if resid else 'fittedvalues'} of a fit from parquet data: the rows "
                "are on disk; use .fittedvalues_of(chunk) / .resid_of(chunk) per batch")
        import dask
        import dask.dataframe as dd
        tables = dask.delayed(self.blup_tables(), pure=True)
        beta = np.asarray(self.fit_result.fe_params)
        name = "resid" if resid else "fitted"
        parts = [dask.delayed(_fitted_rows)(p, model.design, model.codes, beta, tables,
                                            resid=resid) for p in model.source.to_delayed()]
        return dd.from_delayed(parts, meta=pd.Series(dtype=float, name=name),
                               verify_meta=False)

    @property
    def fittedvalues(self):
        """Conditional fitted values per complete row: a lazy Dask Series (Dask data)."""
        return self._lazy_rows(False)

    @property
    def resid(self):
        """Conditional residuals per complete row: a lazy Dask Series (Dask data)."""
        return self._lazy_rows(True)

    @property
    def resid_scaled(self):
        """Residuals divided by sigma: a lazy Dask Series (Dask data)."""
        return self._lazy_rows(True) / np.sqrt(self.scale)

    def _random_part(self) -> np.ndarray:
        raise NotImplementedError(f"the random part per row is not available: {_ROWS_MSG}")

    def predict(self, *args: Any, **kwargs: Any):
        """Not for a fit from cell statistics: use :meth:`fittedvalues_of` on a chunk."""
        raise NotImplementedError("predict() of a fit from per-cell statistics: use "
                                  ".fittedvalues_of(chunk) for a pandas chunk of (new) rows, "
                                  "or the lazy .fittedvalues of a Dask fit")

    def cov_robust(self, *args: Any, **kwargs: Any):
        """Not available: cluster-robust covariances need whole clusters' rows."""
        raise NotImplementedError(f"cov_robust(): {_ROWS_MSG}")

    def coef_test_robust(self, *args: Any, **kwargs: Any):
        """Not available (see :meth:`cov_robust`)."""
        raise NotImplementedError(f"coef_test_robust(): {_ROWS_MSG}")

    def simulate(self, *args: Any, **kwargs: Any):
        """Not available: simulated responses are one value per row."""
        raise NotImplementedError(f"simulate(): {_ROWS_MSG}")

    def refit(self, *args: Any, **kwargs: Any):
        """Not available: a new response is one value per row."""
        raise NotImplementedError(f"refit(): {_ROWS_MSG}")

    def bootstrap(self, *args: Any, **kwargs: Any):
        """Not available: the parametric bootstrap refits simulated responses."""
        raise NotImplementedError(f"bootstrap(): {_ROWS_MSG}")


class CellResultsWrapper(MultilevelResultsWrapper):
    """statsmodels' wrapper without attaching the model's rows to per-row results (the
    model's rows are pseudo-rows; per-row results are lazy Dask Series)."""

    _wrap_attrs = {k: v for k, v in MultilevelResultsWrapper._wrap_attrs.items()
                   if k not in ("resid", "fittedvalues")}


wrap.populate_wrapper(CellResultsWrapper, CellResults)


def model_from_cells(design: ChunkDesign, sample: pd.DataFrame, mom: Moments,
                     group_levels: dict[str, Any], map_cells: Any, *, n_dropped: int = 0,
                     source: Any = None, dask_source: bool = False) -> CellHLM:
    """Build the layout, maps and codes, run ``map_cells(layout, maps, codes)`` (the pass
    that returns the :class:`CellRows` of whole cells) and make the model."""
    if mom.n == 0:
        raise ValueError("empty data: no complete rows")
    layout = CellLayout.of(design, sample)
    maps = cell_maps(layout, mom)
    codes = GroupCodes(design.group_columns,
                       tuple(pd.Index(group_levels[c]) for c in design.group_columns))
    cells = map_cells(layout, maps, codes)
    return CellHLM(design, layout, maps, codes, cells, n_dropped=n_dropped, source=source,
                   dask_source=dask_source)
