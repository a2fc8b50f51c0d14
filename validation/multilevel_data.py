"""Seeded nested and crossed data for the multi-factor engine (tests, lme4 checks, benchmarks).

    python -m validation.multilevel_data      # writes validation/r/data/ml_*.csv

Each simulator returns a :class:`pandas.DataFrame`; the same call gives the
same data on every machine.  The CSV files are written with
``float_format="%.17g"`` so that R reads exactly the numbers Python uses.
:func:`engine_terms` and :func:`design` turn a frame and an lme4-style term
list into the arrays :mod:`sm_hlm.engine` takes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sm_hlm.engine import RETerm

__all__ = ["simulate_hierarchy", "simulate_crossed", "engine_terms", "design", "CASES",
           "write_cases"]

DATA_DIR = Path(__file__).resolve().parent / "r" / "data"


def simulate_hierarchy(*, names: Sequence[str], n_top: int, mean_children: Sequence[float],
                       cov_re: Mapping[str, Sequence[Sequence[float]]],
                       fe_params: Mapping[str, float] | None = None, scale: float = 1.0,
                       size_shape: float | None = None, shuffle: bool = True,
                       seed: int) -> pd.DataFrame:
    """Rows nested in units nested in ... (outermost first), unbalanced, labels reused.

    Parameters
    ----------
    names
        Unit names, outermost first, e.g. ``["school", "klass"]``: schools
        contain classes, classes contain rows.
    n_top
        Number of outermost units.
    mean_children
        Mean number of children per unit at each level (``len(names)``
        entries: classes per school, ..., rows per innermost unit); counts
        are 1 + Poisson(mean - 1).
    cov_re
        Per unit name, the 2 x 2 covariance of its (intercept, slope on x).
    fe_params
        Keys among ``Intercept``, ``x``, ``sector`` (outermost-level 0/1),
        ``tq`` (second-level normal covariate, or top level with one level),
        ``x:sector``.
    scale
        Residual variance.
    size_shape
        None: counts are 1 + Poisson(mean - 1).  A positive number: counts
        are 1 + negative binomial with that mean and gamma shape (a
        Poisson with gamma-distributed mean), far more unbalanced for a
        small shape (many units with one child, a few very large ones).
    shuffle
        Return the rows in random order.

    Returns
    -------
    DataFrame with one integer column per unit name (labels restart at 1
    inside every parent, so inner units must be identified with their
    parents, lme4's ``school:klass``), ``x``, ``sector``, ``tq``, ``y``.
    """
    rng = np.random.default_rng(seed)
    fe = dict(fe_params or {"Intercept": 1.0, "x": 0.5, "sector": 0.3, "tq": 0.2,
                            "x:sector": -0.2})
    parent = np.zeros(n_top, dtype=np.intp)
    labels = {names[0]: np.arange(1, n_top + 1)}
    unit_of = [np.arange(n_top)]                   # global unit ids per level
    n_units = [n_top]
    for lev in range(1, len(names) + 1):
        lam = mean_children[lev - 1] - 1
        if size_shape is not None:
            lam = rng.gamma(size_shape, lam / size_shape, size=n_units[-1])
        counts = 1 + rng.poisson(lam, size=n_units[-1])
        parent = np.repeat(np.arange(n_units[-1]), counts)
        local = np.arange(len(parent)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        if lev < len(names):
            labels[names[lev]] = local
        unit_of.append(parent)
        n_units.append(len(parent))
    n = n_units[-1]
    # unit of each row at every level, innermost first
    row_unit = [np.arange(n)]
    for lev in range(len(names), 0, -1):
        row_unit.insert(0, unit_of[lev][row_unit[0]])
    row_unit = row_unit[:-1]                       # drop the rows themselves
    cols: dict[str, np.ndarray] = {}
    for lev, name in enumerate(names):
        u = row_unit[lev]
        cols[name] = labels[name][u] if lev else u + 1
    sector = rng.integers(0, 2, size=n_top)[row_unit[0]].astype(float)
    tq_level = 1 if len(names) > 1 else 0
    tq = rng.normal(size=n_units[tq_level])[row_unit[tq_level]]
    x = rng.normal(0.0, 0.5, size=n_units[len(names) - 1])[row_unit[-1]] + rng.normal(size=n)
    design_cols = {"Intercept": np.ones(n), "x": x, "sector": sector, "tq": tq,
                   "x:sector": x * sector}
    y = sum(float(v) * design_cols[k] for k, v in fe.items())
    for lev, name in enumerate(names):
        b = rng.multivariate_normal(np.zeros(2), np.asarray(cov_re[name], float),
                                    size=n_units[lev], method="eigh")[row_unit[lev]]
        y = y + b[:, 0] + b[:, 1] * x
    y = y + rng.normal(0.0, np.sqrt(scale), size=n)
    df = pd.DataFrame({**cols, "x": x, "sector": sector, "tq": tq, "y": y})
    if shuffle:
        df = df.iloc[rng.permutation(n)].reset_index(drop=True)
    return df


def simulate_crossed(*, n_subj: int, n_item: int, p_obs: float,
                     cov_subj: Sequence[Sequence[float]], cov_item: Sequence[Sequence[float]],
                     fe_params: Mapping[str, float] | None = None, scale: float = 1.0,
                     n_site: int | None = None, var_site: float = 0.0,
                     seed: int) -> pd.DataFrame:
    """Subjects crossed with items, each pair observed with probability ``p_obs``.

    ``y = b0 + b1 cond + b2 w + (1 + cond | subj) + (1 + cond | item) + e``
    with ``cond`` = +-0.5 drawn per row and ``w`` a row-level normal covariate.
    With ``n_site``, subjects are also nested in sites (column ``site``, each
    subject in one site drawn at random) with a site intercept of variance
    ``var_site``: ``(1 | site)`` nested, crossed with items.
    """
    rng = np.random.default_rng(seed)
    fe = dict(fe_params or {"Intercept": 2.0, "cond": 0.4, "w": -0.3})
    subj, item = np.meshgrid(np.arange(n_subj), np.arange(n_item), indexing="ij")
    keep = rng.random(subj.shape) < p_obs
    subj, item = subj[keep], item[keep]
    n = len(subj)
    cond = rng.choice([-0.5, 0.5], size=n)
    w = rng.normal(size=n)
    bs = rng.multivariate_normal(np.zeros(2), np.asarray(cov_subj, float), size=n_subj,
                                 method="eigh")[subj]
    bi = rng.multivariate_normal(np.zeros(2), np.asarray(cov_item, float), size=n_item,
                                 method="eigh")[item]
    cols = {"Intercept": np.ones(n), "cond": cond, "w": w}
    y = sum(float(v) * cols[k] for k, v in fe.items())
    y = y + bs[:, 0] + bs[:, 1] * cond + bi[:, 0] + bi[:, 1] * cond
    y = y + rng.normal(0.0, np.sqrt(scale), size=n)
    cols = {"subj": subj + 1, "item": item + 1, "cond": cond, "w": w, "y": y}
    if n_site is not None:                  # drawn last: the data without sites are unchanged
        site_of = rng.integers(0, n_site, size=n_subj)
        y += rng.normal(0.0, np.sqrt(var_site), size=n_site)[site_of[subj]]
        cols = {"site": site_of[subj] + 1, **cols}
    df = pd.DataFrame(cols)
    return df.iloc[rng.permutation(n)].reset_index(drop=True)


def engine_terms(df: pd.DataFrame, spec: Sequence[tuple[str, Sequence[str], bool]]) -> list[RETerm]:
    """Engine terms from ``(factor, columns, correlated)`` triples.

    ``factor`` may be an interaction ``"a:b"`` of columns; a column name
    ``"1"`` is the intercept (named ``(Intercept)`` as in lme4).
    """
    n = len(df)
    out = []
    for factor, columns, correlated in spec:
        codes = None
        for c in factor.split(":"):            # interactions: hash the combined codes
            part, levels = pd.factorize(df[c], sort=True)
            key = part if codes is None else codes.astype(np.int64) * len(levels) + part
            codes = pd.factorize(key, sort=True)[0]
        z = np.column_stack([np.ones(n) if c == "1" else df[c].to_numpy(float) for c in columns])
        names = tuple("(Intercept)" if c == "1" else c for c in columns)
        out.append(RETerm(factor, codes, int(codes.max()) + 1, z, names, correlated))
    return out


def design(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Fixed-effects matrix: ``"1"`` is the intercept, ``"a:b"`` a product of columns."""
    out = []
    for c in columns:
        if c == "1":
            out.append(np.ones(len(df)))
        else:
            v = np.ones(len(df))
            for part in c.split(":"):
                v = v * df[part].to_numpy(float)
            out.append(v)
    return np.column_stack(out)


#: name -> (simulator, keyword arguments) of the data sets fitted by multilevel_lme4.R
CASES: dict[str, tuple] = {
    "ml_three": (simulate_hierarchy, dict(
        names=["school", "klass"], n_top=40, mean_children=[3.5, 9.0],
        cov_re={"school": [[1.0, 0.2], [0.2, 0.3]], "klass": [[0.5, -0.1], [-0.1, 0.2]]},
        scale=1.0, seed=8101)),
    "ml_four": (simulate_hierarchy, dict(
        names=["district", "school", "klass"], n_top=12, mean_children=[3.0, 3.0, 7.0],
        cov_re={"district": [[0.8, 0.1], [0.1, 0.2]], "school": [[0.6, 0.0], [0.0, 0.15]],
                "klass": [[0.4, 0.05], [0.05, 0.1]]},
        scale=1.0, seed=8202)),
    "ml_crossed": (simulate_crossed, dict(
        n_subj=45, n_item=30, p_obs=0.6, cov_subj=[[0.7, 0.15], [0.15, 0.25]],
        cov_item=[[0.4, -0.05], [-0.05, 0.2]], scale=1.0, seed=8303)),
    # multilevel_lme4_more.R: three levels with very unbalanced sizes (gamma-Poisson
    # counts: many one-class schools and one-row classes, a few large ones)
    "ml_three_unbal": (simulate_hierarchy, dict(
        names=["school", "klass"], n_top=60, mean_children=[3.0, 6.0],
        cov_re={"school": [[0.9, 0.25], [0.25, 0.4]], "klass": [[0.6, -0.15], [-0.15, 0.3]]},
        scale=1.0, size_shape=0.6, seed=8404)),
    # four levels, with an intercept-only, an uncorrelated (||) and a correlated term
    "ml_four_mixed": (simulate_hierarchy, dict(
        names=["district", "school", "klass"], n_top=15, mean_children=[3.0, 3.5, 6.0],
        cov_re={"district": [[0.7, 0.0], [0.0, 0.0]], "school": [[0.5, 0.0], [0.0, 0.2]],
                "klass": [[0.4, 0.1], [0.1, 0.15]]},
        scale=1.0, size_shape=1.5, seed=8505)),
    # subjects nested in sites, crossed with items, random slopes on both crossed factors
    "ml_crossed_nested": (simulate_crossed, dict(
        n_subj=60, n_item=25, p_obs=0.5, cov_subj=[[0.6, 0.1], [0.1, 0.3]],
        cov_item=[[0.5, 0.1], [0.1, 0.25]], scale=1.0, n_site=8, var_site=0.5, seed=8606)),
}


def write_cases(directory: Path = DATA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (fun, kwargs) in CASES.items():
        fun(**kwargs).to_csv(directory / f"{name}.csv", index=False, float_format="%.17g")


if __name__ == "__main__":
    write_cases()
