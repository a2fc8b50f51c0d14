"""Seeded simulators for two-level data (tests, validation, benchmarks).

Every simulator takes a ``seed`` and returns a :class:`pandas.DataFrame`, so
the same call always produces the same data on every machine.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["group_sizes", "simulate_mixed", "simulate_nels", "simulate_panel"]

#: ML estimates of the course notes' fit.2 (lme4), used as NELS-like truth.
NELS_FIT2 = {
    "fe_params": {"Intercept": 55.3975, "flp": -2.4062, "ses": 4.4909, "flp:ses": -0.1931},
    "cov_re": [[9.012, 0.06 * 3.002 * 1.254], [0.06 * 3.002 * 1.254, 1.571]],
    "scale": 67.260,
}


def group_sizes(n_groups: int, mean_size: float, *, rng: np.random.Generator,
                min_size: int = 1) -> np.ndarray:
    """Unequal group sizes: ``min_size`` plus a Poisson draw, mean ``mean_size``."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    if mean_size < min_size:
        raise ValueError(f"mean_size ({mean_size}) is below min_size ({min_size})")
    return min_size + rng.poisson(mean_size - min_size, size=n_groups)


def simulate_mixed(
    *,
    n_groups: int,
    mean_group_size: float,
    fe_params: Mapping[str, float],
    re_names: Sequence[str] = ("Intercept",),
    cov_re: np.ndarray | Sequence[Sequence[float]] | None = None,
    scale: float = 1.0,
    seed: int,
    min_group_size: int = 1,
    group_col: str = "group",
    response: str = "y",
) -> pd.DataFrame:
    """Simulate y_ij = x_ij' beta + z_ij' b_j + e_ij with Gaussian b_j and e_ij.

    Parameters
    ----------
    n_groups, mean_group_size
        Number of groups and mean group size (sizes vary, Poisson).
    fe_params
        Fixed effects by name.  ``"Intercept"`` is the constant; any other
        name ``x`` creates a standard normal level-1 predictor ``x`` whose
        group means also vary (a between-group component with SD 0.5).
        Names containing ``":"`` are products of the named predictors.
    re_names
        Columns of Z (``"Intercept"`` or predictor names from ``fe_params``).
    cov_re
        Covariance of the random effects (``len(re_names)`` square);
        the identity when omitted.
    scale
        Residual variance sigma^2.
    seed
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    DataFrame with the group column, the predictors and the response, with
    rows ordered by group.

    Notes
    -----
    Draws b_j ~ N(0, cov_re), e_ij ~ N(0, scale), independently across groups.
    """
    rng = np.random.default_rng(seed)
    sizes = group_sizes(n_groups, mean_group_size, rng=rng, min_size=min_group_size)
    n = int(sizes.sum())
    g = np.repeat(np.arange(n_groups), sizes)
    cols: dict[str, np.ndarray] = {}
    base = [k for k in fe_params if k != "Intercept" and ":" not in k]
    for name in base:
        between = rng.normal(0.0, 0.5, size=n_groups)
        cols[name] = between[g] + rng.normal(size=n)

    def column(name: str) -> np.ndarray:
        if name == "Intercept":
            return np.ones(n)
        out = np.ones(n)
        for part in name.split(":"):
            if part not in cols:
                raise KeyError(f"unknown predictor {part!r} in {name!r}")
            out = out * cols[part]
        return out

    eta = sum(float(v) * column(k) for k, v in fe_params.items())
    q = len(re_names)
    cov = np.eye(q) if cov_re is None else np.asarray(cov_re, dtype=float)
    if cov.shape != (q, q):
        raise ValueError(f"cov_re must be {q}x{q}, got shape {cov.shape}")
    b = rng.multivariate_normal(np.zeros(q), cov, size=n_groups, method="eigh")
    Z = np.column_stack([column(r) for r in re_names])
    y = eta + np.einsum("ij,ij->i", Z, b[g]) + rng.normal(0.0, np.sqrt(scale), size=n)
    df = pd.DataFrame({group_col: g + 1, **cols, response: y})
    return df


def simulate_nels(*, n_schools: int = 684, mean_size: float = 19.0, seed: int = 20240610,
                  params: Mapping | None = None) -> pd.DataFrame:
    """A NELS-like data set: students in schools, fit.2 of the notes as truth.

    Columns ``school``, ``flp`` (school free-lunch category 1-3, constant
    within school), ``ses`` (student SES: a school mean plus student
    variation) and ``mscore`` (math score).  Parameters default to the
    notes' ML estimates of ``mscore ~ flp*ses + (ses | school)``.
    """
    p = NELS_FIT2 if params is None else params
    rng = np.random.default_rng(seed)
    sizes = group_sizes(n_schools, mean_size, rng=rng, min_size=1)
    n = int(sizes.sum())
    g = np.repeat(np.arange(n_schools), sizes)
    flp_school = rng.integers(1, 4, size=n_schools)
    ses_school = -0.35 * (flp_school - 2) + rng.normal(0.0, 0.4, size=n_schools)
    ses = np.round(ses_school[g] + rng.normal(0.0, 0.65, size=n), 2)
    flp = flp_school[g].astype(float)
    fe = p["fe_params"]
    eta = (fe["Intercept"] + fe["flp"] * flp + fe["ses"] * ses + fe["flp:ses"] * flp * ses)
    b = rng.multivariate_normal(np.zeros(2), np.asarray(p["cov_re"], float), size=n_schools,
                                method="eigh")
    y = eta + b[g, 0] + b[g, 1] * ses + rng.normal(0.0, np.sqrt(p["scale"]), size=n)
    return pd.DataFrame({"school": g + 1001, "flp": flp, "ses": ses, "mscore": np.round(y, 2)})


def _residual_corr(kind: str, times: np.ndarray, *, phi: float, corr: np.ndarray | None,
                   positions: np.ndarray) -> np.ndarray:
    """Correlation matrix of one subject's errors."""
    k = len(times)
    if kind == "independent":
        return np.eye(k)
    if kind in ("ar1", "car1"):
        return phi ** np.abs(times[:, None] - times[None, :])
    if kind == "exchangeable":
        return np.full((k, k), phi) + (1 - phi) * np.eye(k)
    if kind == "unstructured":
        assert corr is not None
        return corr[np.ix_(positions, positions)]
    raise ValueError(f"unknown residual kind {kind!r}")


def simulate_panel(*, n_subjects: int, n_waves: int = 6, missing_frac: float = 0.1,
                   fe_params: Mapping[str, float] | None = None,
                   re_names: Sequence[str] = ("Intercept", "wave"),
                   cov_re: np.ndarray | Sequence[Sequence[float]] | None = None,
                   residual: str = "ar1", phi: float = 0.5,
                   corr: np.ndarray | Sequence[Sequence[float]] | None = None,
                   sd_ratio: Sequence[float] | None = None, scale: float = 1.0,
                   irregular: bool = False, shuffle: bool = True, seed: int) -> pd.DataFrame:
    """Simulate an unbalanced longitudinal panel with correlated errors.

    y_it = b0 + b1 wave + b2 trt + b3 wave:trt + z_it' b_i + e_it with
    e_i ~ N(0, scale * S_i R_i S_i), where R_i is the correlation of the
    chosen ``residual`` kind and S_i = diag(sd_ratio[wave]) (heteroscedastic
    when ``sd_ratio`` is given).

    Parameters
    ----------
    n_subjects, n_waves
        Panel size; waves are 0..n_waves-1.
    missing_frac
        Share of visits removed at random (every subject keeps at least one).
    fe_params
        Keys among "Intercept", "wave", "trt", "wave:trt".
    re_names, cov_re
        Random effects (columns "Intercept" and/or "wave"); ``cov_re=None``
        with an empty ``re_names`` gives no random effects.
    residual
        "independent", "ar1" (phi^|t-s| in waves), "car1" (phi^|t-s| in the
        real-valued ``time`` column), "exchangeable" (correlation phi) or
        "unstructured" (correlation matrix ``corr`` by wave).
    irregular
        Add a ``time`` column = wave + U(-0.3, 0.3) (used by "car1").
    shuffle
        Return rows in random order (tests that outputs keep row order).

    Returns
    -------
    DataFrame with columns subject, wave, time, trt, y.
    """
    rng = np.random.default_rng(seed)
    fe = dict(fe_params or {"Intercept": 1.0, "wave": 0.5, "trt": 0.3, "wave:trt": -0.2})
    n = n_subjects * n_waves
    subject = np.repeat(np.arange(n_subjects), n_waves)
    wave = np.tile(np.arange(n_waves), n_subjects)
    keep = rng.random(n) >= missing_frac
    first = np.zeros(n, dtype=bool)
    first[::n_waves] = True
    # every subject keeps at least one visit: restore the first when all are gone
    kept_any = np.bincount(subject, weights=keep, minlength=n_subjects) > 0
    keep |= first & ~kept_any[subject]
    subject, wave = subject[keep], wave[keep]
    time = wave + (rng.uniform(-0.3, 0.3, size=len(wave)) if irregular else 0.0)
    trt_s = rng.integers(0, 2, size=n_subjects)
    trt = trt_s[subject].astype(float)
    cols = {"Intercept": np.ones(len(wave)), "wave": wave.astype(float), "trt": trt,
            "wave:trt": wave * trt}
    eta = sum(float(v) * cols[k] for k, v in fe.items())
    q = len(re_names)
    if q:
        cov = np.eye(q) if cov_re is None else np.asarray(cov_re, dtype=float)
        b = rng.multivariate_normal(np.zeros(q), cov, size=n_subjects, method="eigh")
        Z = np.column_stack([cols[r] for r in re_names])
        eta = eta + np.einsum("ij,ij->i", Z, b[subject])
    C = None if corr is None else np.asarray(corr, dtype=float)
    sds = np.ones(n_waves) if sd_ratio is None else np.asarray(sd_ratio, dtype=float)
    e = np.empty(len(wave))
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    bounds = np.append(starts, len(wave))
    tvals = time if residual == "car1" else wave.astype(float)
    # the simulator loops over subjects: it is not on any hot path
    for a, bnd in zip(bounds[:-1], bounds[1:]):
        R = _residual_corr(residual, tvals[a:bnd], phi=phi, corr=C, positions=wave[a:bnd])
        S = sds[wave[a:bnd]]
        cov_e = scale * R * np.outer(S, S)
        e[a:bnd] = np.linalg.cholesky(cov_e) @ rng.normal(size=bnd - a)
    y = eta + e
    df = pd.DataFrame({"subject": subject + 1, "wave": wave, "time": time, "trt": trt, "y": y})
    if shuffle:
        df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    return df
