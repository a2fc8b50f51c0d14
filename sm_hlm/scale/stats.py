"""Summed per-group statistics of chunks of rows, and the model fitted from them.

Notes
-----
Two passes over the data, each a map over chunks followed by a sum:

1. **Moments** of the columns of W = [X y] and Z (count, mean, centred sum of
   squares combined by Chan's parallel formula, minimum and maximum), which
   give the exact centring and scaling maps D and T of the working
   coordinates (:class:`sm_hlm.engine.deviance.Reparametrization`).
2. **Statistics** in the working coordinates W~ = W D, Z~ = Z T: per group
   Z~_j'Z~_j and Z~_j'W~_j (partial sums of a group spread over several chunks
   add up), and W~'W~.

On the client the per-group roots F_j (F_j F_j' = Z~_j'Z~_j) and G_j =
F_j^{-1} Z~_j'W~_j come from a rank-revealing Cholesky
(:func:`sm_hlm.engine.deviance.root_factors`) and the within-group part as
sum_j E_j'E_j = W~'W~ - sum_j G_j'G_j.  In exact arithmetic this is the
in-memory estimator; numerically it is less stable than the in-memory row QR
(:func:`sm_hlm.engine.deviance.group_qr`): the difference W~'W~ - sum_j G_j'G_j loses
the digits the between-group part shares with the total, and the Cholesky of
Z_j'Z_j squares the condition number of nearly collinear Z columns.  Working
in centred and scaled coordinates keeps the loss small for ordinary data
(agreement with the in-memory fit to ~1e-9 in the log-likelihood in the tests);
predictors whose within-group variation is below ~1e-6 of their overall
variation are where the in-memory fit should be preferred.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import formula_variables
from ..design import RandomEffectsDesign, RandomEffectsTerm
from ..engine.deviance import ProfiledDeviance, Reparametrization, SufficientStats
from ..exceptions import IdentificationError
from ..formula.parse import RandomTermSpec, parse_formula
from ..engine.linalg import sequential_rank_cholesky

__all__ = ["ChunkDesign", "GroupRoots", "Moments", "Partial", "SummedHLM", "SummedHLMResults",
           "bucket_roots", "is_multilevel", "combine_moments", "combine_partials", "combine_pieces",
           "split_partial", "stats_from_roots", "working_maps"]


def is_multilevel(specs: Iterable[RandomTermSpec]) -> bool:
    """Several grouping factors, or an interaction right of a bar (as in memory, where
    such formulas make a :class:`~sm_hlm.multilevel.MultilevelHLM`)."""
    specs = list(specs)
    return len({s.group for s in specs}) > 1 or any(len(s.columns) > 1 for s in specs)


#: patsy transforms whose state comes from the whole data (a chunk would give its own)
_STATEFUL = ("center", "standardize", "scale", "bs", "cr", "cc", "te")


def _is_numeric(s: pd.Series) -> bool:
    return s.dtype.kind in "fiu"


class ChunkDesign:
    """One fixed design for every chunk: formula, categorical levels, design infos.

    Parameters
    ----------
    formula
        lme4-style formula, e.g. ``"y ~ x * z + (x | g)"``; with several
        grouping factors (``(1 | a/b)``, ``(1 | s) + (1 | i)``) ``multilevel``
        is True, ``group`` is None and ``re_design`` is None (the terms per
        factor are read by :mod:`sm_hlm.scale.cells`).
    sample
        Some rows (e.g. the first chunk) from which patsy's design infos are
        built once; categorical columns take their levels from ``levels``.
    levels
        The levels of every non-numeric column the formula uses (all chunks'
        levels, found up front); a chunk with another value is an error.
    missing
        ``"drop"`` rows with NaN in a used column (counted), or ``"raise"``.
    """

    def __init__(self, formula: str, sample: pd.DataFrame, *,
                 levels: Mapping[str, Iterable[Any]] | None = None, missing: str = "drop"):
        from patsy import dmatrices, dmatrix

        if missing not in ("drop", "raise"):
            raise ValueError(f"missing must be 'drop' or 'raise', got {missing!r}")
        stateful = [f for f in _STATEFUL if re.search(rf"\b{f}\s*\(", formula)]
        if stateful:
            raise NotImplementedError(
                f"the formula uses {stateful}: such transforms take their state (means, scales, "
                "knots) from the whole data, which a chunk does not see; compute the "
                "transformed columns first (e.g. ddf['x_c'] = ddf['x'] - ddf['x'].mean()) and "
                "use them in the formula")
        parsed = parse_formula(formula)
        specs = list(parsed.random)
        if not specs:
            raise ValueError("no random effects: add an (expr | group) term to the formula")
        self.formula = formula
        self.parsed = parsed
        self.specs: tuple[RandomTermSpec, ...] = tuple(specs)
        #: the data columns of the grouping factors (``(1 | a:b)`` reads a and b)
        self.group_columns: tuple[str, ...] = tuple(dict.fromkeys(c for s in specs
                                                                  for c in s.columns))
        self.multilevel = is_multilevel(specs)
        self.group = None if self.multilevel else specs[0].group
        used = set(formula_variables(parsed.fixed_formula))
        for s in specs:
            used |= formula_variables(s.expr)
        missing_cols = sorted(c for c in used | set(self.group_columns)
                              if c not in sample.columns)
        if missing_cols:
            raise KeyError(f"column(s) {missing_cols} used by the formula are not in the data")
        self.columns = sorted(used)
        self.missing = missing
        levels = dict(levels or {})
        self.levels: dict[str, list[Any]] = {}
        for c in self.columns:
            if c == parsed.response:
                if not (_is_numeric(sample[c]) or sample[c].dtype == bool):
                    raise TypeError(f"the response {c!r} must be numeric, got {sample[c].dtype}")
                continue
            if not _is_numeric(sample[c]):
                if c not in levels:
                    raise ValueError(f"column {c!r} is categorical: its levels over all the data "
                                     "are needed up front (levels={...})")
                self.levels[c] = list(levels[c])
        prep, _ = self.prepare(sample)
        if len(prep) == 0:
            raise ValueError("the sample has no complete rows to build the design from")
        y, X = dmatrices(parsed.fixed_formula, prep, return_type="matrix", NA_action="raise")
        self.y_info, self.x_info = y.design_info, X.design_info
        if y.shape[1] != 1:
            raise TypeError(f"the response {parsed.response!r} must be a single numeric column")
        terms: list[RandomEffectsTerm] = []
        self.z_infos = []
        for s in specs:
            Zs = dmatrix(s.expr, prep, return_type="matrix", NA_action="raise")
            names = tuple(map(str, Zs.design_info.column_names))
            if not names:
                raise ValueError(f"random-effects term {s} has no columns")
            if s.correlated:
                terms.append(RandomEffectsTerm(s.group, names, True, s.expr, Zs.design_info))
            else:
                terms.extend(RandomEffectsTerm(s.group, (c,), True, s.expr, Zs.design_info)
                             for c in names)
            self.z_infos.append(Zs.design_info)
        #: the names of Z's columns (every term's, in formula order)
        self.z_names: tuple[str, ...] = tuple(str(n) for i in self.z_infos
                                              for n in i.column_names)
        self.re_design = None if self.multilevel else RandomEffectsDesign(terms)
        self.exog_names = list(self.x_info.column_names)

    def __getstate__(self) -> dict[str, Any]:
        """patsy's DesignInfo does not pickle (workers in other processes need the design)."""
        from ..formula.pickling import pickle_design
        d = dict(self.__dict__)
        d["y_info"], d["x_info"] = pickle_design(d["y_info"]), pickle_design(d["x_info"])
        d["z_infos"] = [pickle_design(z) for z in d["z_infos"]]
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        from ..formula.pickling import unpickle_design
        d = dict(d)
        d["y_info"], d["x_info"] = unpickle_design(d["y_info"]), unpickle_design(d["x_info"])
        d["z_infos"] = [unpickle_design(z) for z in d["z_infos"]]
        self.__dict__.update(d)

    @property
    def k_fe(self) -> int:
        return len(self.exog_names)

    @property
    def q(self) -> int:
        return len(self.z_names)

    def prepare(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """The used columns of complete rows, categoricals on the global levels."""
        cols = self.columns + [c for c in self.group_columns if c not in self.columns]
        df = chunk[cols]
        bad = df.isna().any(axis=1).to_numpy().copy()
        for c in cols:
            if _is_numeric(df[c]) and df[c].dtype.kind == "f":
                bad |= ~np.isfinite(df[c].to_numpy())
        if bad.any():
            if self.missing == "raise":
                c = next(c for c in cols if df[c].isna().any()
                         or (df[c].dtype.kind == "f" and not np.isfinite(df[c]).all()))
                raise ValueError(f"missing or infinite values in column {c!r}")
            df = df.loc[~bad]
        out = {}
        for c in cols:
            s = df[c]
            if c in self.levels:
                cat = pd.Categorical(s, categories=self.levels[c])
                if (cat.codes < 0).any():
                    v = s[np.asarray(cat.codes) < 0].iloc[0]
                    raise ValueError(f"column {c!r} has the value {v!r}, which is not among the "
                                     f"levels fixed up front {self.levels[c][:10]}")
                s = pd.Series(cat, index=df.index)
            elif c == self.parsed.response and s.dtype == bool:
                s = s.astype(float)
            out[c] = s
        return pd.DataFrame(out, index=df.index), int(bad.sum())

    def build(self, chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray, int]:
        """``(y, X, Z, group keys, rows dropped)`` of one chunk (one grouping factor)."""
        y, X, Z, prep, dropped = self.build_frame(chunk)
        return y, X, Z, prep[self.group].to_numpy(), dropped

    def build_frame(self, chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         pd.DataFrame, int]:
        """``(y, X, Z, prepared complete rows, rows dropped)`` of one chunk."""
        from patsy import build_design_matrices

        prep, dropped = self.prepare(chunk)
        if len(prep) == 0:
            return np.zeros(0), np.zeros((0, self.k_fe)), np.zeros((0, self.q)), prep, dropped
        from ..formula.fast import _numeric_columns
        direct = [_numeric_columns(i, prep) for i in (self.y_info, self.x_info, *self.z_infos)]
        if all(d is not None for d in direct):          # numeric columns: numpy, as patsy
            y, X, Zs = direct[0], direct[1], direct[2:]
        else:
            y, X = build_design_matrices([self.y_info, self.x_info], prep, NA_action="raise")
            Zs = build_design_matrices(self.z_infos, prep, NA_action="raise")
        Z = np.column_stack([np.asarray(z) for z in Zs]) if Zs else np.zeros((len(prep), 0))
        return (np.asarray(y, float)[:, 0], np.asarray(X, float), np.asarray(Z, float), prep,
                dropped)


# ------------------------------------------------------------------ pass 1: moments
@dataclass(frozen=True)
class Moments:
    """Column moments of W = [X y] and Z = one concatenated block of columns."""

    n: int
    mean: np.ndarray
    m2: np.ndarray        # sum of squared deviations from the mean
    lo: np.ndarray
    hi: np.ndarray
    dropped: int = 0

    @classmethod
    def of(cls, cols: np.ndarray, dropped: int = 0) -> "Moments":
        n, k = cols.shape
        if n == 0:
            z = np.zeros(k)
            return cls(0, z, z, np.full(k, np.inf), np.full(k, -np.inf), dropped)
        mean = cols.mean(axis=0)
        return cls(n, mean, ((cols - mean) ** 2).sum(axis=0), cols.min(axis=0),
                   cols.max(axis=0), dropped)


def combine_moments(a: Moments, b: Moments) -> Moments:
    """Chan, Golub & LeVeque's pairwise update of count, mean and centred sum of squares."""
    n = a.n + b.n
    if a.n == 0 or b.n == 0:
        src = b if a.n == 0 else a
        return Moments(src.n, src.mean, src.m2, np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi),
                       a.dropped + b.dropped)
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + delta ** 2 * (a.n * b.n / n)
    return Moments(n, mean, m2, np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi),
                   a.dropped + b.dropped)


def chunk_moments(design: ChunkDesign, chunk: pd.DataFrame) -> Moments:
    y, X, Z, _, dropped = design.build_frame(chunk)
    return Moments.of(np.column_stack([X, y, Z]), dropped)


def _map_from_moments(mom: Moments, sel: slice, blocks: list[tuple[int, int, bool]]) -> np.ndarray:
    """The centring and scaling map of :func:`sm_hlm.engine.deviance.working_stats`, from moments."""
    mean, m2, lo, hi = mom.mean[sel], mom.m2[sel], mom.lo[sel], mom.hi[sel]
    n = mom.n
    D = np.eye(len(mean))
    for start, stop, shift in blocks:
        const = [i for i in range(start, stop) if lo[i] == hi[i] and lo[i] != 0]
        j0 = const[0] if (shift and const) else None
        if j0 is not None:
            D[j0, j0] = 1.0 / lo[j0]
        for i in range(start, stop):
            if i == j0:
                continue
            if j0 is not None and i > j0:
                mu, s = float(mean[i]), float(np.sqrt(m2[i] / n))
            else:
                mu, s = 0.0, float(np.sqrt(m2[i] / n + mean[i] ** 2))
            if not (np.isfinite(s) and s > 0):
                continue
            D[i, i] = 1.0 / s
            if mu:
                D[j0, i] = -mu / (lo[j0] * s)
    return D


def working_maps(design: ChunkDesign, mom: Moments) -> Reparametrization:
    """D (for W = [X y]) and T (for Z) of the working coordinates."""
    p, q = design.k_fe, design.q
    has_const = any(mom.lo[i] == mom.hi[i] and mom.lo[i] != 0 for i in range(p))
    D = _map_from_moments(mom, slice(0, p + 1), [(0, p + 1, bool(has_const or not p))])
    blocks, start = [], 0
    for t in design.re_design.terms:
        blocks.append((start, start + t.k, t.correlated and t.k > 1))
        start += t.k
    T = _map_from_moments(mom, slice(p + 1, p + 1 + q), blocks) if q else np.eye(0)
    return Reparametrization(D, T)


# ------------------------------------------------------------------ pass 2: statistics
@dataclass(frozen=True)
class Partial:
    """Partial statistics of some rows: per-group sums (a frame indexed by group) and W'W."""

    groups: pd.DataFrame
    WtW: np.ndarray
    n: int


def chunk_partial(design: ChunkDesign, rp: Reparametrization, chunk: pd.DataFrame) -> Partial:
    """Per-group Z~_j'Z~_j (upper triangle) and Z~_j'W~_j of one chunk, and W~'W~."""
    y, X, Z, g, _ = design.build(chunk)
    W = np.column_stack([X, y]) @ rp.D
    Zt = Z @ rp.T
    q, r = Zt.shape[1], W.shape[1]
    codes, uniques = pd.factorize(g)
    m = len(uniques)
    cols: dict[str, np.ndarray] = {}
    for a in range(q):
        for b in range(a, q):
            cols[f"zz{a}_{b}"] = np.bincount(codes, Zt[:, a] * Zt[:, b], minlength=m)
        for c in range(r):
            cols[f"zw{a}_{c}"] = np.bincount(codes, Zt[:, a] * W[:, c], minlength=m)
    frame = pd.DataFrame(cols, index=pd.Index(uniques, name=design.group))
    return Partial(frame, W.T @ W, len(y))


def combine_partials(parts: list[Partial]) -> Partial:
    """Sum partial statistics; a group spread over several parts gets the sum of its partials."""
    parts = [p for p in parts if p.n]
    if not parts:
        raise ValueError("empty data: no complete rows")
    frame = pd.concat([p.groups for p in parts])
    if len(parts) > 1:
        frame = frame.groupby(level=0, sort=False).sum()
    return Partial(frame, sum(p.WtW for p in parts), sum(p.n for p in parts))


def stats_from_partial(design: ChunkDesign, part: Partial) -> tuple[SufficientStats, pd.Index]:
    """Working-coordinate :class:`~sm_hlm.engine.deviance.SufficientStats` (within derived)."""
    frame = part.groups
    try:                                   # groups in sorted order (as the in-memory model)
        order = np.argsort(frame.index.to_numpy(), kind="stable")
    except TypeError:                      # labels that cannot be ordered keep their order
        order = np.arange(len(frame))
    q, p = design.q, design.k_fe
    m = len(frame)
    ZtZ = np.empty((q, q, m))
    ZtW = np.empty((q, p + 1, m))
    for a in range(q):                     # column by column: no sorted copy of the frame
        for b in range(a, q):
            np.take(frame[f"zz{a}_{b}"].to_numpy(), order, out=ZtZ[a, b])
            if b != a:
                ZtZ[b, a] = ZtZ[a, b]
        for c in range(p + 1):
            np.take(frame[f"zw{a}_{c}"].to_numpy(), order, out=ZtW[a, c])
    st = SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=part.WtW, nobs=part.n, k_fe=p, within=None)
    return st, frame.index[order]


# ------------------------------------------------------------------ buckets of whole groups
def split_partial(part: Partial, n_buckets: int) -> list[Partial]:
    """The partial statistics by bucket of groups (a hash of the group label).

    Every chunk sends a group to the same bucket, so that reducing each bucket's
    pieces gives whole groups.  W'W and the row count go with bucket 0.
    """
    if n_buckets == 1:
        return [part]
    frame = part.groups
    bucket = pd.util.hash_array(frame.index.to_numpy()) % np.uint64(n_buckets)
    zero = np.zeros_like(part.WtW)
    return [Partial(frame[bucket == k], part.WtW if k == 0 else zero, part.n if k == 0 else 0)
            for k in range(n_buckets)]                   # a loop over buckets, not groups


def combine_pieces(parts: list[Partial]) -> Partial:
    """Sum partial statistics that may be empty (pieces of one bucket)."""
    frames = [p.groups for p in parts if len(p.groups)]
    if not frames:
        frame = parts[0].groups
    elif len(frames) == 1:
        frame = frames[0]
    else:
        frame = pd.concat(frames).groupby(level=0, sort=False).sum()
    return Partial(frame, sum(p.WtW for p in parts), sum(p.n for p in parts))


@dataclass(frozen=True)
class GroupRoots:
    """The per-group roots of one bucket of whole groups (working coordinates).

    ``labels`` (sorted), F (q, q, m_k) with F_j F_j' = Z~_j'Z~_j, ``Gt`` (r, q, m_k)
    the projections G_j = F_j^{-1} Z~_j'W~_j laid out as the blocked kernels read
    them, and the bucket's share of W~'W~ and of the row count.
    """

    labels: pd.Index
    F: np.ndarray
    Gt: np.ndarray
    WtW: np.ndarray
    n: int


def bucket_roots(design: ChunkDesign, part: Partial) -> GroupRoots:
    """Roots of the summed statistics of one bucket (computed where the bucket lives)."""
    from ..engine.deviance import root_factors
    st, labels = stats_from_partial(design, part)
    F, G, _ = root_factors(st.ZtZ, st.ZtW)
    return GroupRoots(labels, F, np.ascontiguousarray(G.transpose(1, 0, 2)), part.WtW, part.n)


def stats_from_roots(design: ChunkDesign, F: np.ndarray, Gt: np.ndarray, WtW: np.ndarray,
                     n: int, *, within: np.ndarray | None = None) -> SufficientStats:
    """:class:`~sm_hlm.engine.deviance.SufficientStats` holding the roots only."""
    return SufficientStats(ZtZ=None, ZtW=None, WtW=WtW, nobs=n, k_fe=design.k_fe,
                           within=within, root=F, proj=Gt.transpose(1, 0, 2))


# ------------------------------------------------------------------ the model
class SummedHLM:
    """A two-level model known through its summed statistics only.

    Built by :func:`sm_hlm.scale.dask.from_dask` or
    :func:`sm_hlm.scale.parquet.from_parquet`; :meth:`fit` optimises on the
    client.  The estimates are those of :class:`sm_hlm.HLM` on the same rows.
    """

    #: the BLUPs are computed on the client at the end of :meth:`fit`
    _client_blups = True

    def __init__(self, design: ChunkDesign, stats: SufficientStats, reparam: Reparametrization,
                 group_labels: pd.Index | None, *, n_dropped: int = 0, source: Any = None):
        self.design = design
        self.formula = design.formula
        self.re_design = design.re_design
        self.exog_names = design.exog_names
        self.endog_names = design.parsed.response
        self.k_fe, self.k_re = design.k_fe, design.q
        self.group_name = design.group
        self.group_labels = group_labels           # None: the labels stay on the cluster
        self.n_groups = stats.n_groups
        self.nobs = float(stats.nobs)
        self.n_dropped = n_dropped
        self.source = source
        if design.multilevel:
            raise NotImplementedError("several grouping factors: see sm_hlm.scale.cells")
        self._work = stats
        self._reparam = reparam
        self._check_identifiable()

    def _check_identifiable(self) -> None:
        n, m, p = self._work.nobs, self.n_groups, self.k_fe
        if m < 2:
            raise IdentificationError(f"only one group in {self.group_name!r}: a random-effects "
                                      "variance needs at least two groups")
        for t in self.re_design.terms:
            if n <= t.k * m:
                raise IdentificationError(
                    f"{n} observations but {t.k * m} random effects for term {t.label()}: the "
                    "random-effects parameters and the residual variance are not identifiable")
        _, kept = sequential_rank_cholesky(self._work.WtW[:p, :p, None].copy())
        if not kept.all():
            names = [self.exog_names[i] for i in np.flatnonzero(~kept[:, 0])]
            raise IdentificationError(f"the fixed-effects design is rank deficient: column(s) "
                                      f"{names} are linear combinations of the columns before "
                                      "them (or constant); drop them")

    def deviance_function(self, *, reml: bool = True) -> ProfiledDeviance:
        rd = self.re_design
        return ProfiledDeviance(self._work, rd.lambda_, reml=reml, work=self._work,
                                reparam=self._reparam, theta_index=rd.lambda_index)

    def fit(self, start_params: np.ndarray | None = None, reml: bool = True, *,
            method: str = "auto", maxeval: int = 100_000, ftol_abs: float = 1e-8,
            xtol_abs: float = 1e-8) -> "SummedHLMResults":
        """Fit by REML (default) or ML, as :meth:`sm_hlm.HLM.fit`."""
        import warnings

        from .._compat import require_nlopt
        from ..exceptions import ConvergenceWarning, SingularFitWarning
        from ..engine.optimizer import minimize_deviance
        from ..results import build_fit

        require_nlopt()
        if not isinstance(reml, (bool, np.bool_)):
            raise TypeError(f"reml must be True or False, got {reml!r}")
        if method not in ("auto", "bobyqa", "lbfgs"):
            raise ValueError(f"method={method!r} is not available ('auto', 'bobyqa' or 'lbfgs')")
        dev = self.deviance_function(reml=bool(reml))
        rd = self.re_design
        sp = None if start_params is None else np.asarray(start_params, float)
        record = minimize_deviance(dev, rd.theta_lower, start=sp, identity=rd.theta_start(),
                                   ftol_abs=ftol_abs, xtol_abs=xtol_abs, maxeval=maxeval,
                                   names=rd.theta_names, skip_bobyqa=method == "lbfgs",
                                   gradient_first=method == "auto")
        fit = build_fit(self, dev, record, reml=bool(reml), compute_vcomp_cov=False,
                        blups=self._client_blups)
        if fit.singular_terms:
            warnings.warn("boundary (singular) fit: " + "; ".join(fit.singular_terms),
                          SingularFitWarning, stacklevel=2)
        if not fit.optimizer.converged:
            warnings.warn(f"the optimiser did not converge: {fit.optimizer.message}",
                          ConvergenceWarning, stacklevel=2)
        return self._results(fit)

    def _results(self, fit: Any) -> "SummedHLMResults":
        return SummedHLMResults(self, fit)


class SummedHLMResults:
    """Estimates of a :class:`SummedHLM` fit.

    The BLUPs (``random_effects``, one row per group) are computed on the client
    from the per-group statistics (on the workers, lazily, for Dask:
    :class:`sm_hlm.scale.dask.DaskHLMResults`).  Row-level results (fitted
    values, residuals) are computed chunk by chunk from the source
    (:meth:`fittedvalues_of`; lazily for Dask).  What needs the rows of whole
    groups in memory (cluster-robust CR2 errors, residual structures,
    influence diagnostics, the Kenward-Roger and Satterthwaite corrections)
    raises an error saying so.
    """

    def __init__(self, model: SummedHLM, fit: Any):
        self.model = model
        self.fit_result = fit
        names = model.exog_names
        self.reml = fit.reml
        self.method = "REML" if fit.reml else "ML"
        self.fe_params = pd.Series(fit.fe_params, index=names, name="fe_params")
        self.cov_fe = pd.DataFrame(fit.cov_fe, index=names, columns=names)
        self.bse_fe = pd.Series(np.sqrt(np.diag(fit.cov_fe)), index=names, name="bse_fe")
        re_names = list(model.re_design.names)
        self.cov_re = pd.DataFrame(fit.cov_re, index=re_names, columns=re_names)
        self.scale = float(fit.scale)
        self.llf = float(fit.llf)
        self.theta = fit.theta
        self.optimizer = fit.optimizer
        self.converged = fit.optimizer.converged
        self.nobs = model.nobs
        self.n_groups = model.n_groups
        self.n_params = model.k_fe + model.re_design.n_theta + 1
        self.aic = -2.0 * self.llf + 2.0 * self.n_params
        self.bic = -2.0 * self.llf + np.log(self.nobs) * self.n_params
        if fit.blups is not None:
            self.random_effects = pd.DataFrame(fit.blups, index=model.group_labels,
                                               columns=re_names)

    def __getattr__(self, name: str) -> Any:
        from ..results import HLMResults
        if not name.startswith("_") and hasattr(HLMResults, name):
            raise AttributeError(
                f"{name!r} is not available for a fit from summed statistics (data beyond "
                "memory): it needs the rows of whole groups in memory. Fit sm_hlm.HLM on an "
                "in-memory DataFrame (e.g. a sample of groups) for it")
        raise AttributeError(name)

    def fittedvalues_of(self, chunk: pd.DataFrame, *, include_re: bool = True) -> pd.Series:
        """Fitted values X beta + Z b_j of the complete rows of one chunk."""
        d = self.model.design
        y, X, Z, g, _ = d.build(chunk)
        prep, _ = d.prepare(chunk)
        fit = X @ self.fe_params.to_numpy()
        if include_re and Z.shape[1]:
            idx = self.random_effects.index.get_indexer(g)
            b = self.random_effects.to_numpy()[np.maximum(idx, 0)]
            b[idx < 0] = 0.0                # a group not in the fit: its BLUP is zero
            fit = fit + np.einsum("ik,ik->i", Z, b)
        return pd.Series(fit, index=prep.index, name="fitted")

    def resid_of(self, chunk: pd.DataFrame) -> pd.Series:
        """Conditional residuals y - X beta - Z b_j of the complete rows of one chunk."""
        d = self.model.design
        y = d.build(chunk)[0]
        f = self.fittedvalues_of(chunk)
        return pd.Series(y - f.to_numpy(), index=f.index, name="resid")

    def summary(self) -> str:
        """A plain-text table of the estimates."""
        lines = [f"Linear mixed model fitted by {self.method} from summed statistics",
                 f"Formula: {self.model.formula}",
                 f"Observations: {int(self.nobs)}   Groups ({self.model.group_name}): "
                 f"{self.n_groups}   logLik: {self.llf:.4f}   AIC: {self.aic:.4f}",
                 "", "Fixed effects:", f"{'':>14s} {'Estimate':>12s} {'Std.Err':>10s}"]
        for k in self.fe_params.index:
            lines.append(f"{k:>14s} {self.fe_params[k]:12.5f} {self.bse_fe[k]:10.5f}")
        lines += ["", "Random effects covariance:", self.cov_re.to_string(),
                  f"Residual variance: {self.scale:.5f}", "", str(self.optimizer)]
        return "\n".join(lines)
