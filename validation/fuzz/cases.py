"""A fixed, seeded set of hard linear mixed model data sets (the fuzz cases).

Every case is a name, a category, an lme4 formula and a DataFrame built
deterministically from a :class:`numpy.random.Generator` seeded by the CRC-32
of the case's name (adding or reordering cases never changes another case's
data).  Each case is fitted by ML and by REML.

The categories follow issue 7: the number of groups (2 to 3,000), singleton
groups and very unbalanced group sizes, correlated and independent random
slopes, three and four correlated random effects, factor-valued slopes
``(0 + f | g)``, near-singular covariances (variance ratios down to 1e-6),
huge variance ratios (standard deviations up to 1e3 times the residual's),
predictors around 1e5 (and shifted or scaled copies of the same data),
near-collinear fixed-effects columns, small and large data sets, and data
that lme4 refuses.

Notes
-----
The simulator draws, for groups j = 1..m with sizes n_j,

    y_ij = sum_k beta_k x_ijk + sum_l z_ijl b_jl + e_ij,
    b_j ~ N(0, Psi),  e_ij ~ N(0, sigma^2),

with continuous predictors x = u_j + v_ij (u_j ~ N(0, 0.5^2),
v_ij ~ N(0, 1), as :func:`sm_hlm.simulate.simulate_mixed`) and a factor f
with levels a, b, c.  A predictor may then be stored as ``loc + scl * x``:
the model on the stored column is an exact reparametrisation of the one the
data were drawn from (with an intercept, and a full random-effects block when
the predictor is a random slope).  A near-collinear column is
``x + eps * N(0, 1)``.

Each data set has a checksum (row and group counts, sums and sums of squares
of the numeric columns to 12 significant digits, level counts of the string
columns) so that a drift of the generator (numpy, sm_hlm.simulate or this
module) is detected against the stored lme4 reference.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sm_hlm.simulate import group_sizes

__all__ = ["FuzzCase", "CASES", "CATEGORIES", "checksum", "checksum_matches", "get_case",
           "iter_fits", "simulate_case"]

LEVELS = ("a", "b", "c")
#: a function of the case's generator giving the group sizes
SizeFn = Callable[[np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class FuzzCase:
    """One fuzz data set and the model fitted to it.

    Attributes
    ----------
    name
        Unique key (also the key of the lme4 reference, plus ``_ML``/``_REML``).
    category
        One of :data:`CATEGORIES`.
    formula
        lme4 syntax, grouping factor ``g``.
    note
        What makes the case hard.
    build
        ``build(rng)`` returns the DataFrame.
    """

    name: str
    category: str
    formula: str
    note: str
    build: Callable[[np.random.Generator], pd.DataFrame] = field(repr=False, compare=False)

    @property
    def seed(self) -> int:
        """The CRC-32 of the name: the seed of the case's generator."""
        return zlib.crc32(self.name.encode("utf-8"))

    def data(self) -> pd.DataFrame:
        """The case's data set (the same on every call and machine)."""
        return self.build(np.random.default_rng(self.seed))


# ----------------------------------------------------------------- group sizes
def sizes_poisson(m: int, mean: float, *, min_size: int = 1) -> SizeFn:
    """``min_size`` + Poisson sizes (sm_hlm.simulate.group_sizes)."""
    return lambda rng: group_sizes(m, mean, rng=rng, min_size=min_size)


def sizes_fixed(m: int, size: int) -> SizeFn:
    """Balanced groups."""
    return lambda rng: np.full(m, size, dtype=int)


def sizes_singletons(m: int, share: float, mean: float) -> SizeFn:
    """A share of singleton groups, the others 2 + Poisson(mean - 2)."""
    def f(rng: np.random.Generator) -> np.ndarray:
        s = 2 + rng.poisson(mean - 2, size=m)
        single = rng.random(m) < share
        single[:2] = False        # at least two groups with replicates
        s[single] = 1
        return s
    return f


def sizes_pareto(m: int, alpha: float, *, cap: int = 2000) -> SizeFn:
    """Heavy-tailed sizes 1 + floor(Pareto(alpha)), capped."""
    return lambda rng: np.minimum(1 + np.floor(rng.pareto(alpha, size=m) * 2).astype(int), cap)


def sizes_giant(m: int, giant: int, small: int) -> SizeFn:
    """One group of ``giant`` rows, the others 1..``small`` rows."""
    def f(rng: np.random.Generator) -> np.ndarray:
        s = rng.integers(1, small + 1, size=m)
        s[0] = giant
        return s
    return f


# ------------------------------------------------------------------ simulator
def simulate_case(rng: np.random.Generator, *, sizes: SizeFn,
                  fe: Mapping[str, float], re: Sequence[str], cov_re: Any, scale: float = 1.0,
                  preds: Sequence[str] = ("x",), factor: bool = False,
                  factor_probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
                  transform: Mapping[str, tuple[float, float]] | None = None,
                  collinear: Mapping[str, tuple[str, float]] | None = None,
                  between_sd: float = 0.5,
                  response: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """Draw one data set (see the module Notes).

    Parameters
    ----------
    rng
        The case's generator.
    sizes
        ``sizes(rng)`` gives the group sizes.
    fe
        Coefficients by column: ``"1"`` (intercept), predictor names, ``"fb"``,
        ``"fc"`` (factor dummies against level a), ``"x:z"`` products.
    re
        Random-effects columns: ``"1"``, predictors, or ``"fa"``, ``"fb"``,
        ``"fc"`` (factor indicators).
    cov_re
        Covariance of the random effects (len(re) square).
    scale
        Residual variance sigma^2.
    preds
        Continuous predictors to draw.
    factor
        Draw the factor ``f`` (string column).
    transform
        ``{name: (loc, scl)}``: store ``loc + scl * x`` instead of ``x``.
    collinear
        ``{new: (base, eps)}``: an extra column ``base + eps * N(0, 1)``
        (drawn after the predictors, not used in the response).
    response
        Optional map applied to the response (e.g. rounding).
    """
    s = np.asarray(sizes(rng), dtype=int)
    m, n = len(s), int(s.sum())
    g = np.repeat(np.arange(m), s)
    raw: dict[str, np.ndarray] = {}
    for name in preds:
        raw[name] = rng.normal(0.0, between_sd, size=m)[g] + rng.normal(size=n)
    f = rng.choice(np.array(LEVELS), size=n, p=np.asarray(factor_probs)) if factor else None

    def column(name: str) -> np.ndarray:
        if name == "1":
            return np.ones(n)
        if name in ("fa", "fb", "fc"):
            assert f is not None
            return (f == name[1]).astype(float)
        out = np.ones(n)
        for part in name.split(":"):
            out = out * raw[part]
        return out

    eta = np.zeros(n)
    for k, v in fe.items():
        eta += float(v) * column(k)
    cov = np.atleast_2d(np.asarray(cov_re, dtype=float))
    if cov.shape != (len(re), len(re)):
        raise ValueError(f"cov_re must be {len(re)}x{len(re)}, got {cov.shape}")
    b = rng.multivariate_normal(np.zeros(len(re)), cov, size=m, method="eigh")
    for k, name in enumerate(re):
        eta += column(name) * b[g, k]
    y = eta + rng.normal(0.0, np.sqrt(scale), size=n)
    if response is not None:
        y = response(y)
    cols: dict[str, Any] = {"g": g + 1}
    for name in preds:
        loc, scl = (transform or {}).get(name, (0.0, 1.0))
        cols[name] = loc + scl * raw[name]
    for new, (base, eps) in (collinear or {}).items():
        cols[new] = cols[base] + eps * rng.normal(size=n)
    if f is not None:
        cols["f"] = f
    cols["y"] = y
    return pd.DataFrame(cols)


def transformed(base: str, *, shift: Mapping[str, float] | None = None,
                scale: Mapping[str, float] | None = None, y_scale: float = 1.0,
                ) -> Callable[[np.random.Generator], pd.DataFrame]:
    """The data of the case ``base`` (drawn with its own seed), with columns
    shifted then scaled after the draw: ``(x + a) * c``; the response times
    ``y_scale``."""
    def f(rng: np.random.Generator) -> pd.DataFrame:
        d = get_case(base).data().copy()
        for k, a in (shift or {}).items():
            d[k] = d[k] + a
        for k, c in (scale or {}).items():
            d[k] = d[k] * c
        d["y"] = d["y"] * y_scale
        return d
    return f


def corr_cov(sd: Sequence[float], corr: Any = 0.0) -> np.ndarray:
    """Covariance from SDs and a correlation matrix (or one common correlation)."""
    sd = np.asarray(sd, dtype=float)
    k = len(sd)
    R = np.full((k, k), float(corr)) if np.isscalar(corr) else np.asarray(corr, dtype=float)
    R = R.copy()
    np.fill_diagonal(R, 1.0)
    return R * np.outer(sd, sd)


# ---------------------------------------------------------------- the cases
CASES: list[FuzzCase] = []


def _add(name: str, category: str, formula: str, note: str,
         build: Callable[[np.random.Generator], pd.DataFrame]) -> None:
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate fuzz case {name!r}")
    CASES.append(FuzzCase(name, category, formula, note, build))


def _sim(**kw: Any) -> Callable[[np.random.Generator], pd.DataFrame]:
    return lambda rng: simulate_case(rng, **kw)


RI = "y ~ x + (1 | g)"
SLOPE = "y ~ x + (x | g)"
INDEP = "y ~ x + (x || g)"
THREE = "y ~ x + z + (x + z | g)"
FOUR = "y ~ x + z + w + (x + z + w | g)"
FE1 = {"1": 1.0, "x": 0.5}
FE2 = {"1": 1.0, "x": 0.5, "z": -0.3}
FE3 = {"1": 1.0, "x": 0.5, "z": -0.3, "w": 0.2}
PREDICTORS = {RI: ("x",), SLOPE: ("x",), INDEP: ("x",), THREE: ("x", "z"), FOUR: ("x", "z", "w")}

# 1. number of groups: 2 to 3,000 (20 cases)
for m, mean in [(2, 20), (3, 15), (4, 10), (6, 8), (10, 6), (30, 5), (100, 4), (300, 6),
                (1000, 3), (3000, 4)]:
    _add(f"groups_ri_m{m}", "groups", RI, f"{m} groups, random intercept",
         _sim(sizes=sizes_poisson(m, mean), fe=FE1, re=["1"], cov_re=[[1.0]]))
    _add(f"groups_slope_m{m}", "groups", SLOPE, f"{m} groups, correlated slope",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=FE1, re=["1", "x"],
              cov_re=corr_cov([1.0, 0.5], 0.3)))

# 2. singleton groups (10 cases)
for share, m, mean, form, re, cov in [
        (0.3, 200, 4, RI, ["1"], [[1.0]]),
        (0.6, 300, 4, RI, ["1"], [[0.5]]),
        (0.9, 1000, 5, RI, ["1"], [[1.0]]),
        (0.97, 3000, 6, RI, ["1"], [[2.0]]),
        (0.3, 200, 6, SLOPE, ["1", "x"], corr_cov([1.0, 0.7], -0.4)),
        (0.6, 400, 8, SLOPE, ["1", "x"], corr_cov([1.0, 0.7], 0.5)),
        (0.85, 2000, 8, SLOPE, ["1", "x"], corr_cov([1.5, 0.5], 0.2)),
        (0.5, 300, 6, INDEP, ["1", "x"], corr_cov([1.0, 0.6], 0.0)),
        (0.8, 1500, 8, INDEP, ["1", "x"], corr_cov([1.0, 0.6], 0.0)),
        (0.6, 500, 10, THREE, ["1", "x", "z"], corr_cov([1.0, 0.5, 0.5], 0.2))]:
    tag = {RI: "ri", SLOPE: "slope", INDEP: "indep", THREE: "three"}[form]
    fe = FE2 if form == THREE else FE1
    _add(f"singletons_{tag}_s{int(share * 100)}_m{m}", "singletons", form,
         f"{share:.0%} singleton groups of {m}",
         _sim(sizes=sizes_singletons(m, share, mean), fe=fe, re=re, cov_re=cov,
              preds=("x", "z") if form == THREE else ("x",)))

# 3. very unbalanced group sizes (12 cases)
for tag, sz, form, re, cov in [
        ("pareto1.2_ri", sizes_pareto(300, 1.2), RI, ["1"], [[1.0]]),
        ("pareto0.8_ri", sizes_pareto(500, 0.8), RI, ["1"], [[0.3]]),
        ("pareto1.2_slope", sizes_pareto(300, 1.2), SLOPE, ["1", "x"], corr_cov([1.0, 0.5], 0.5)),
        ("pareto0.8_slope", sizes_pareto(800, 0.8), SLOPE, ["1", "x"], corr_cov([2.0, 1.0], -0.3)),
        ("pareto1.0_indep", sizes_pareto(600, 1.0), INDEP, ["1", "x"], corr_cov([1.0, 0.5], 0.0)),
        ("pareto1.0_three", sizes_pareto(400, 1.0), THREE, ["1", "x", "z"],
         corr_cov([1.0, 0.6, 0.4], 0.3)),
        ("giant_ri", sizes_giant(100, 2000, 2), RI, ["1"], [[1.0]]),
        ("giant_slope", sizes_giant(150, 3000, 3), SLOPE, ["1", "x"], corr_cov([1.0, 0.5], 0.2)),
        ("giant_indep", sizes_giant(200, 1500, 3), INDEP, ["1", "x"], corr_cov([1.0, 0.8], 0.0)),
        ("giant_three", sizes_giant(120, 2500, 4), THREE, ["1", "x", "z"],
         corr_cov([1.0, 0.5, 0.5], -0.2)),
        ("two_sizes_slope", lambda rng: np.where(np.arange(400) % 10 == 0, 200, 2), SLOPE,
         ["1", "x"], corr_cov([1.0, 0.3], 0.6)),
        ("few_big_many_tiny_ri", lambda rng: np.r_[np.full(5, 500), np.ones(995, int) * 2], RI,
         ["1"], [[0.2]])]:
    preds = ("x", "z") if form == THREE else ("x",)
    _add(f"unbalanced_{tag}", "unbalanced", form, f"group sizes {tag}",
         _sim(sizes=sz, fe=FE2 if form == THREE else FE1, re=re, cov_re=cov, preds=preds))

# 4. correlated slope (x | g) (10 cases)
for i, (m, mean, sd, rho, scale) in enumerate([
        (50, 10, (1.0, 0.5), 0.0, 1.0), (50, 10, (1.0, 0.5), 0.95, 1.0),
        (50, 10, (1.0, 0.5), -0.95, 1.0), (200, 5, (2.0, 2.0), 0.5, 1.0),
        (200, 5, (0.3, 0.1), 0.5, 1.0), (80, 20, (1.0, 1.0), -0.7, 4.0),
        (500, 3, (1.0, 0.5), 0.3, 1.0), (25, 40, (3.0, 1.0), 0.8, 1.0),
        (120, 8, (1.0, 0.05), 0.0, 1.0), (1000, 10, (1.0, 0.5), 0.99, 0.5)]):
    _add(f"corr_slope_{i}_m{m}_rho{rho:+.2f}", "corr_slope", SLOPE,
         f"(x | g), sd {sd}, corr {rho}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=FE1, re=["1", "x"],
              cov_re=corr_cov(sd, rho), scale=scale))

# 5. independent slope (x || g) (8 cases; the last ones have n close to q m)
for i, (sz, sd) in enumerate([
        (sizes_poisson(60, 8), (1.0, 0.5)), (sizes_poisson(300, 4), (0.5, 1.0)),
        (sizes_poisson(100, 10), (1.0, 0.01)), (sizes_poisson(100, 10), (0.01, 1.0)),
        (sizes_poisson(1000, 3), (1.0, 0.7)), (sizes_fixed(50, 3), (1.0, 0.5)),
        (sizes_fixed(100, 2), (1.0, 0.5)),
        (lambda rng: np.r_[np.full(40, 2), np.ones(40, int)], (1.0, 0.5))]):
    _add(f"indep_slope_{i}", "indep_slope", INDEP, f"(x || g), sd {sd}",
         _sim(sizes=sz, fe=FE1, re=["1", "x"], cov_re=corr_cov(sd, 0.0)))
_add("indep_slope_corrtruth", "indep_slope", INDEP, "(x || g) on data with corr 0.9",
     _sim(sizes=sizes_poisson(150, 8), fe=FE1, re=["1", "x"], cov_re=corr_cov((1.0, 1.0), 0.9)))
_add("indep_slope_three", "indep_slope", "y ~ x + z + (x + z || g)", "(x + z || g)",
     _sim(sizes=sizes_poisson(150, 8), fe=FE2, re=["1", "x", "z"], cov_re=corr_cov((1, .5, .5)),
          preds=("x", "z")))

# 6. three and four correlated random effects (18 cases)
R3 = [[1, 0.5, -0.3], [0.5, 1, 0.2], [-0.3, 0.2, 1]]
R4 = [[1, 0.4, -0.3, 0.2], [0.4, 1, 0.1, -0.2], [-0.3, 0.1, 1, 0.3], [0.2, -0.2, 0.3, 1]]
for i, (m, mean, sd, rho, scale) in enumerate([
        (40, 15, (1, 0.5, 0.5), R3, 1.0), (100, 10, (1, 1, 1), R3, 1.0),
        (300, 5, (2, 0.3, 0.3), R3, 1.0), (1000, 6, (1, 0.5, 0.5), R3, 1.0),
        (200, 8, (1, 0.5, 0.001), R3, 1.0), (150, 10, (1, 0.5, 0.5), 0.95, 1.0),
        (80, 12, (30, 10, 10), R3, 1.0), (500, 4, (1, 0.5, 0.5), 0.0, 2.0),
        (60, 20, (100, 50, 20), R3, 1.0), (3000, 5, (1, 0.5, 0.5), R3, 1.0)]):
    _add(f"three_corr_{i}_m{m}", "three_corr", THREE, f"(x + z | g), sd {sd}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=FE2, re=["1", "x", "z"],
              cov_re=corr_cov(sd, rho), scale=scale, preds=("x", "z")))
for i, (m, mean, sd, rho) in enumerate([
        (60, 15, (1, .5, .5, .5), R4), (200, 10, (1, 1, 1, 1), R4),
        (500, 6, (2, .3, .3, .3), R4), (100, 20, (30, 10, 10, 10), R4),
        (300, 8, (100, 30, 30, 20), R4), (150, 10, (1, .5, .5, .001), R4),
        (1000, 8, (1, .5, .5, .5), 0.9), (3000, 6, (1, .5, .5, .5), R4)]):
    _add(f"four_corr_{i}_m{m}", "four_corr", FOUR, f"(x + z + w | g), sd {sd}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=FE3, re=["1", "x", "z", "w"],
              cov_re=corr_cov(sd, rho), preds=("x", "z", "w")))

# 7. factor-valued slopes (10 cases)
FEF = {"1": 1.0, "fb": 0.5, "fc": -0.5, "x": 0.3}
for i, (form, m, mean, sd, rho, probs) in enumerate([
        ("y ~ f + (0 + f | g)", 60, 12, (1, 1, 1), 0.5, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ f + (0 + f | g)", 300, 6, (1, 0.5, 2), 0.2, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ f + (0 + f | g)", 100, 10, (1, 1, 1), 0.95, (0.6, 0.3, 0.1)),
        ("y ~ f + (0 + f | g)", 150, 8, (1, 0.001, 1), 0.0, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ f + x + (0 + f | g)", 1000, 5, (1, 1, 1), 0.7, (0.8, 0.15, 0.05)),
        ("y ~ f + (f | g)", 100, 10, (1, 0.5, 0.5), 0.3, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ f + (f | g)", 400, 6, (2, 1, 1), -0.4, (0.5, 0.25, 0.25)),
        ("y ~ f + x + (1 | g) + (0 + f | g)", 200, 8, (1, .5, .5), 0.5, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ f + x + (0 + f | g)", 50, 30, (20, 20, 20), 0.9, (1 / 3, 1 / 3, 1 / 3)),
        ("y ~ x + f + (0 + f + x | g)", 200, 10, (1, 1, 1, 0.5), 0.3, (1 / 3, 1 / 3, 1 / 3))]):
    if "(1 | g) + (0 + f | g)" in form:
        re = ["fa", "fb", "fc"]
    elif "(f | g)" in form:
        re = ["1", "fb", "fc"]
    elif "0 + f + x" in form:
        re = ["fa", "fb", "fc", "x"]
    else:
        re = ["fa", "fb", "fc"]
    _add(f"factor_slope_{i}_m{m}", "factor_slope", form, f"{form}, sd {sd}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=FEF, re=re,
              cov_re=corr_cov(sd, rho), factor=True, factor_probs=probs))

# 8. near-singular covariances: variance ratios down to 1e-6, correlations near +-1 (12 cases)
for i, (form, re, cov, m, mean) in enumerate([
        (RI, ["1"], [[1e-6]], 100, 10), (RI, ["1"], [[1e-4]], 1000, 5),
        (RI, ["1"], [[0.0]], 50, 10),
        (SLOPE, ["1", "x"], corr_cov((1.0, 1e-3), 0.0), 100, 10),
        (SLOPE, ["1", "x"], corr_cov((1e-3, 1.0), 0.0), 100, 10),
        (SLOPE, ["1", "x"], corr_cov((1.0, 1.0), 0.9999), 200, 8),
        (SLOPE, ["1", "x"], corr_cov((1.0, 0.5), -0.9999), 200, 8),
        (INDEP, ["1", "x"], corr_cov((1e-3, 1.0), 0.0), 200, 8),
        (THREE, ["1", "x", "z"], corr_cov((1.0, 1e-3, 1.0), 0.0), 200, 10),
        (THREE, ["1", "x", "z"], corr_cov((1.0, 1.0, 1.0), 0.9999), 300, 10),
        (FOUR, ["1", "x", "z", "w"], corr_cov((1, 1, 1e-3, 1e-3), 0.2), 300, 10),
        (SLOPE, ["1", "x"], corr_cov((1e-3, 1e-3), 0.0), 500, 6)]):
    preds = PREDICTORS[form]
    fe = {1: FE1, 2: FE2, 3: FE3}[len(preds)]
    _add(f"near_singular_{i}", "near_singular", form, f"cov {np.diag(cov).tolist()}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=fe, re=re, cov_re=cov, preds=preds))

# 9. huge variance ratios: SDs up to 1e3 times the residual's (12 cases)
for i, (form, re, sd, rho, m, mean, scale) in enumerate([
        (RI, ["1"], (1e3,), 0.0, 100, 10, 1.0), (RI, ["1"], (1.0,), 0.0, 100, 10, 1e6),
        (SLOPE, ["1", "x"], (1e3, 1.0), 0.3, 100, 10, 1.0),
        (SLOPE, ["1", "x"], (1e3, 1e3), 0.5, 200, 8, 1.0),
        (SLOPE, ["1", "x"], (1.0, 1e3), -0.2, 200, 8, 1.0),
        (SLOPE, ["1", "x"], (300.0, 100.0), 0.9, 500, 5, 1.0),
        (INDEP, ["1", "x"], (1e3, 1e2), 0.0, 200, 8, 1.0),
        (THREE, ["1", "x", "z"], (1e3, 300, 100), 0.4, 300, 8, 1.0),
        (THREE, ["1", "x", "z"], (300, 300, 300), -0.3, 1000, 5, 1.0),
        (FOUR, ["1", "x", "z", "w"], (1e3, 300, 300, 100), 0.3, 300, 10, 1.0),
        (FOUR, ["1", "x", "z", "w"], (200, 200, 200, 200), 0.5, 2000, 5, 1.0),
        (SLOPE, ["1", "x"], (1e-3, 1e-3), 0.0, 100, 10, 1e4)]):
    preds = PREDICTORS[form]
    fe = {1: FE1, 2: FE2, 3: FE3}[len(preds)]
    _add(f"huge_ratio_{i}", "huge_ratio", form, f"sd {sd}, residual variance {scale}",
         _sim(sizes=sizes_poisson(m, mean, min_size=2), fe=fe, re=re, cov_re=corr_cov(sd, rho),
              scale=scale, preds=preds))

# 10. predictors around 1e5, and shifted/scaled copies of the same data (16 cases)
_big_ri = _sim(sizes=sizes_poisson(200, 8), fe=FE1, re=["1"], cov_re=[[1.0]],
               transform={"x": (1e5, 1.0)})
_big_slope = _sim(sizes=sizes_poisson(200, 8, min_size=2), fe=FE1, re=["1", "x"],
                  cov_re=corr_cov((1.0, 0.5), 0.3), transform={"x": (1e5, 1.0)})
_big_three = _sim(sizes=sizes_poisson(300, 8, min_size=2), fe=FE2, re=["1", "x", "z"],
                  cov_re=corr_cov((1.0, 0.5, 0.5), 0.2), preds=("x", "z"),
                  transform={"x": (1e5, 1.0), "z": (-3e4, 10.0)})
for tag, base, form in [("ri", _big_ri, RI), ("slope", _big_slope, SLOPE),
                        ("three", _big_three, THREE)]:
    _add(f"large_pred_{tag}", "large_predictor", form, "x = 1e5 + N(0, 1)", base)
    _add(f"large_pred_{tag}_centred", "large_predictor", form, "the same data, x - 1e5",
         transformed(f"large_pred_{tag}", shift={"x": -1e5}))
    _add(f"large_pred_{tag}_scaled", "large_predictor", form, "the same data, x / 1e3",
         transformed(f"large_pred_{tag}", scale={"x": 1e-3}))
_add("large_pred_indep", "large_predictor", INDEP, "(x || g) with x = 1e5 + N(0, 1)",
     _sim(sizes=sizes_poisson(200, 8), fe=FE1, re=["1", "x"], cov_re=corr_cov((1, 1e-5), 0.0),
          transform={"x": (1e5, 1.0)}))
_add("large_pred_spread_ri", "large_predictor", RI, "x = 1e5 N(0, 1)",
     _sim(sizes=sizes_poisson(200, 8), fe=FE1, re=["1"], cov_re=[[1.0]], transform={"x": (0, 1e5)}))
_add("large_pred_spread_slope", "large_predictor", SLOPE, "x = 1e5 N(0, 1) as a random slope",
     _sim(sizes=sizes_poisson(200, 8, min_size=2), fe=FE1, re=["1", "x"],
          cov_re=corr_cov((1.0, 0.5), 0.3), transform={"x": (0, 1e5)}))
_add("large_pred_y1e5", "large_predictor", SLOPE, "corr_slope_3's data, response + 1e5",
     transformed("corr_slope_3_m200_rho+0.50", shift={"y": 1e5}))
_add("large_pred_y_scaled", "large_predictor", SLOPE, "response x 1e4, x around 1e3",
     transformed("large_pred_slope", shift={"x": -1e5 + 1e3}, y_scale=1e4))
_add("large_pred_m3000", "large_predictor", SLOPE, "3,000 groups, x = 1e5 + N(0, 1)",
     _sim(sizes=sizes_poisson(3000, 4, min_size=2), fe=FE1, re=["1", "x"],
          cov_re=corr_cov((1.0, 0.5), 0.3), transform={"x": (1e5, 1.0)}))
_add("large_pred_1e4_slope", "large_predictor", SLOPE, "x = 1e4 + N(0, 1)",
     transformed("large_pred_slope", shift={"x": -1e5 + 1e4}))
_add("large_pred_1e3_slope", "large_predictor", SLOPE, "x = 1e3 + N(0, 1)",
     transformed("large_pred_slope", shift={"x": -1e5 + 1e3}))

# 11. near-collinear fixed-effects columns (10 cases)
for i, (eps, form, re, cov) in enumerate([
        (1e-2, "y ~ x + x2 + (1 | g)", ["1"], [[1.0]]),
        (1e-4, "y ~ x + x2 + (1 | g)", ["1"], [[1.0]]),
        (1e-6, "y ~ x + x2 + (1 | g)", ["1"], [[1.0]]),
        (1e-7, "y ~ x + x2 + (1 | g)", ["1"], [[1.0]]),
        (1e-3, "y ~ x + x2 + (x | g)", ["1", "x"], corr_cov((1, 0.5), 0.3)),
        (1e-5, "y ~ x + x2 + (x | g)", ["1", "x"], corr_cov((1, 0.5), 0.3)),
        (1e-3, "y ~ x + z + x2 + (x + z | g)", ["1", "x", "z"], corr_cov((1, .5, .5), 0.2)),
        (1e-5, "y ~ x * z + x2 + (1 | g)", ["1"], [[1.0]])]):
    preds = ("x", "z") if "z" in form else ("x",)
    _add(f"collinear_{i}_eps{eps:g}", "collinear", form, f"x2 = x + {eps:g} N(0, 1)",
         _sim(sizes=sizes_poisson(150, 8, min_size=2), fe=FE2 if "z" in form else FE1, re=re,
              cov_re=cov, preds=preds, collinear={"x2": ("x", eps)}))
_add("collinear_big_shift", "collinear", "y ~ x + x2 + (1 | g)", "x2 = x + 1e-3 N(0, 1), x ~ 1e5",
     _sim(sizes=sizes_poisson(150, 8), fe=FE1, re=["1"], cov_re=[[1.0]], transform={"x": (1e5, 1)},
          collinear={"x2": ("x", 1e-3)}))
_add("collinear_group_level", "collinear", "y ~ x + xm + (x | g)",
     "xm = x's group mean + 1e-6 N(0, 1) (a near-level-2 column)",
     lambda rng: (lambda d: d.assign(xm=d.groupby("g")["x"].transform("mean")
                                     + 1e-6 * rng.normal(size=len(d))))(
         simulate_case(rng, sizes=sizes_poisson(150, 8, min_size=2), fe=FE1, re=["1", "x"],
                       cov_re=corr_cov((1, 0.5), 0.3))))

# 12. small data sets (8 cases)
for i, (sz, form, re, cov) in enumerate([
        (sizes_fixed(3, 3), RI, ["1"], [[1.0]]), (sizes_fixed(5, 2), RI, ["1"], [[1.0]]),
        (sizes_poisson(4, 4), RI, ["1"], [[2.0]]),
        (sizes_fixed(4, 4), SLOPE, ["1", "x"], corr_cov((1, 0.5), 0.0)),
        (sizes_fixed(6, 3), SLOPE, ["1", "x"], corr_cov((1, 0.5), 0.5)),
        (sizes_fixed(5, 6), THREE, ["1", "x", "z"], corr_cov((1, 0.5, 0.5), 0.0)),
        (sizes_fixed(8, 3), INDEP, ["1", "x"], corr_cov((1, 0.5), 0.0)),
        (sizes_fixed(3, 10), "y ~ f + (0 + f | g)", ["fa", "fb", "fc"], corr_cov((1, 1, 1), 0.5))]):
    preds = ("x", "z") if form == THREE else ("x",)
    _add(f"small_n_{i}", "small_n", form, "a small data set",
         _sim(sizes=sz, fe=FEF if "f" in form.split("~")[1] else (FE2 if form == THREE else FE1),
              re=re, cov_re=cov, preds=preds, factor="(0 + f" in form))

# 13. large data sets (4 cases)
_add("large_n_ri_m3000", "large_n", RI, "3,000 groups of ~30 rows",
     _sim(sizes=sizes_poisson(3000, 30), fe=FE1, re=["1"], cov_re=[[1.0]]))
_add("large_n_slope_m3000", "large_n", SLOPE, "3,000 groups of ~20 rows",
     _sim(sizes=sizes_poisson(3000, 20, min_size=2), fe=FE1, re=["1", "x"],
          cov_re=corr_cov((1, 0.5), 0.3)))
_add("large_n_three_m2000", "large_n", THREE, "2,000 groups of ~20 rows",
     _sim(sizes=sizes_poisson(2000, 20, min_size=2), fe=FE2, re=["1", "x", "z"],
          cov_re=corr_cov((1, .5, .5), 0.2), preds=("x", "z")))
_add("large_n_ri_few", "large_n", "y ~ x + z + (1 | g)", "20 groups of ~2,500 rows",
     _sim(sizes=sizes_poisson(20, 2500), fe=FE2, re=["1"], cov_re=[[0.5]], preds=("x", "z")))

# 14. edge cases: what lme4 refuses, degenerate responses (8 cases)
_add("edge_nobs_le_nre_slope", "edge", SLOPE, "every group has 2 rows: n = 2 m (lme4 refuses)",
     _sim(sizes=sizes_fixed(100, 2), fe=FE1, re=["1", "x"], cov_re=corr_cov((1, 0.5), 0.0)))
_add("edge_all_singletons_ri", "edge", RI, "every group a singleton (lme4 refuses)",
     _sim(sizes=sizes_fixed(100, 1), fe=FE1, re=["1"], cov_re=[[1.0]]))
_add("edge_one_group", "edge", RI, "one group (lme4 refuses)",
     _sim(sizes=sizes_fixed(1, 30), fe=FE1, re=["1"], cov_re=[[1.0]]))
_add("edge_constant_within", "edge", "y ~ 1 + (1 | g)",
     "the response is constant within every group",
     lambda rng: simulate_case(rng, sizes=sizes_poisson(50, 5, min_size=2), fe={"1": 1.0},
                               re=["1"], cov_re=[[1.0]], scale=0.0))
_add("edge_rounded_response", "edge", RI, "the response rounded to integers (ties)",
     _sim(sizes=sizes_poisson(100, 6), fe=FE1, re=["1"], cov_re=[[0.3]], scale=0.25,
          response=np.round))
_add("edge_zero_variance_truth_slope", "edge", SLOPE, "no group variation at all",
     _sim(sizes=sizes_poisson(100, 6, min_size=2), fe=FE1, re=["1", "x"], cov_re=np.zeros((2, 2))))
_add("edge_level2_slope", "edge", "y ~ xm + (xm | g)",
     "a random slope of a predictor constant within groups",
     lambda rng: (lambda d: d.assign(xm=d.groupby("g")["x"].transform("mean")))(
         simulate_case(rng, sizes=sizes_poisson(100, 6, min_size=2), fe=FE1, re=["1"],
                       cov_re=[[1.0]])))
_add("edge_n_eq_qm_plus1", "edge", INDEP, "(x || g) with n just above m (per-term check passes)",
     _sim(sizes=lambda rng: np.r_[np.ones(99, int), 3], fe=FE1, re=["1", "x"],
          cov_re=corr_cov((1, 0.5), 0.0)))

# 15. several difficulties at once (10 cases)
for i, (sz, form, re, sd, rho, tr, scale) in enumerate([
        (sizes_singletons(1000, 0.8, 6), SLOPE, ["1", "x"], (300, 100), 0.5, {"x": (1e5, 1)}, 1.0),
        (sizes_pareto(500, 1.0), THREE, ["1", "x", "z"], (100, 30, 30), 0.4, {}, 1.0),
        (sizes_singletons(2000, 0.7, 8), FOUR, ["1", "x", "z", "w"], (1, .5, .5, .5), 0.3, {}, 1.0),
        (sizes_poisson(300, 6, min_size=2), FOUR, ["1", "x", "z", "w"], (300, 100, 100, 1e-3), 0.3,
         {}, 1.0),
        (sizes_giant(300, 2000, 2), SLOPE, ["1", "x"], (1e3, 1e-3), 0.0, {"x": (5e4, 10)}, 1.0),
        (sizes_pareto(1000, 0.9), INDEP, ["1", "x"], (100, 100), 0.0, {"x": (0, 1e3)}, 1.0),
        (sizes_poisson(3000, 3, min_size=1), THREE, ["1", "x", "z"], (10, 5, 1e-3), -0.5,
         {"z": (1e4, 1)}, 1.0),
        (sizes_singletons(500, 0.5, 10), THREE, ["1", "x", "z"], (1, 1, 1), 0.999, {}, 0.01),
        (sizes_poisson(50, 30, min_size=2), FOUR, ["1", "x", "z", "w"], (1e3, 1e3, 1, 1), 0.5,
         {"w": (1e5, 1)}, 1.0),
        (sizes_poisson(2500, 5, min_size=2), SLOPE, ["1", "x"], (1e-3, 1e3), 0.0, {"x": (100, 1)},
         1.0)]):
    preds = {1: ("x",), 2: ("x",), 3: ("x", "z"), 4: ("x", "z", "w")}[len(re)]
    fe = {1: FE1, 2: FE2, 3: FE3}[len(preds)]
    _add(f"combined_{i}", "combined", form, f"sd {sd}, corr {rho}, predictors {tr}",
         _sim(sizes=sz, fe=fe, re=re, cov_re=corr_cov(sd, rho), preds=preds, transform=tr,
              scale=scale))

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(c.category for c in CASES))


def get_case(name: str) -> FuzzCase:
    """The case called ``name``."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"no fuzz case {name!r}")


def iter_fits(cases: Sequence[FuzzCase] | None = None) -> Iterator[tuple[FuzzCase, bool]]:
    """(case, reml) for every case, ML first."""
    for c in CASES if cases is None else cases:
        for reml in (False, True):
            yield c, reml


# --------------------------------------------------------------------- checksum
def _round(x: float, digits: int = 12) -> float:
    return float(f"{x:.{digits}g}")


def checksum(data: pd.DataFrame) -> dict[str, Any]:
    """Row and group counts, sums and sums of squares (12 significant digits)
    of the numeric columns, level counts of the string columns."""
    out: dict[str, Any] = {"nrow": int(len(data)), "ngroups": int(data["g"].nunique())}
    for col in data.columns:
        v = data[col]
        if not pd.api.types.is_numeric_dtype(v):
            out[col] = {str(k): int(n) for k, n in sorted(v.value_counts().items())}
        else:
            a = v.to_numpy(dtype=float)
            out[col] = [_round(float(a.sum())), _round(float((a * a).sum()))]
    return out


def checksum_matches(stored: Mapping[str, Any], data: pd.DataFrame, *, rtol: float = 1e-9) -> bool:
    """Whether ``data`` has the ``stored`` checksum (sums to ``rtol`` relative)."""
    now = checksum(data)
    if set(now) != set(stored):
        return False
    for k, v in now.items():
        s = stored[k]
        if isinstance(v, list):
            # the sum relative to the root sum of squares (a sum may cancel to near zero)
            size = max(abs(v[0]), np.sqrt(abs(v[1])), 1e-300)
            if abs(v[0] - s[0]) > rtol * size or abs(v[1] - s[1]) > rtol * max(abs(v[1]), 1e-300):
                return False
        elif v != s:
            return False
    return True
