"""Structured residual covariances of the within-group errors.

The model is

    y_j = X_j beta + Z_j b_j + e_j,   b_j ~ N(0, Psi),
    e_j ~ N(0, sigma^2 R_j),          R_j = S_j C_j S_j,

where C_j is a correlation matrix and S_j = diag(s_i) holds standard-deviation
ratios (one per level of a variance covariate, the first level fixed at 1).
The rows of C_j and S_j are indexed by each row's time or position within its
group, so missing occasions and unequal group sizes are allowed.

Every structure is one class with a tiny interface (see
:class:`ResidualStructure`): the names, bounds and unconstrained
parametrisation of its correlation parameters, a starting value, and either
the AR(1) coefficient (``whitening = "markov"``: closed-form inverse Cholesky
factor, O(n_j) per group) or the correlation matrix over all positions
(``whitening = "dense"``: groups sharing a pattern of positions share one
Cholesky factor).  The variance function (nlme's ``varIdent``) is shared by
all structures through ``hetero_by``.

========================  ================  ======================================
structure                 nlme              parameters
========================  ================  ======================================
``Independence()``        (none)            none: C_j = I
``Heteroscedastic(by)``   varIdent          SD ratio per level of ``by``
``AR1(time)``             corAR1            Phi: corr = Phi^|t - s|, integer times
``ContinuousAR1(time)``   corCAR1           Phi in (0, 1), real-valued times
``Exchangeable()``        corCompSymm       Rho: equal correlations
``Unstructured(pos)``     corSymm+varIdent  a correlation per pair of positions
                                            and an SD ratio per position
========================  ================  ======================================

Heteroscedastic variants combine by multiplication or keyword:
``AR1(time="wave") * Heteroscedastic(by="wave")`` equals
``AR1(time="wave", hetero_by="wave")`` (SAS ARH(1)); the same for
``Exchangeable`` (CSH).

Time, position and ``by`` variables are given either as column names, resolved
against the data by :meth:`sm_hlm.HLM.from_formula`, or as arrays aligned with
the rows, for the array interface ``HLM(..., residual=AR1(time=array))``.
Rows may come in any order: each group is ordered by time/position
internally, and every output is returned in the caller's row order.

Conventions (checked against nlme 3.1-162 in ``tests/test_residual.py``):

- Log-likelihoods: ML is the Gaussian log-likelihood; the REML
  log-likelihood is lme4's ``-REMLcrit/2``, which includes
  ``-0.5 log|X'V^-1 X|`` and no ``+0.5 log|X'X|`` term -- the same number as
  nlme's ``logLik(gls/lme, REML)`` (verified on models both fit).
- sigma^2 is the residual variance of the reference level of the variance
  covariate (its first sorted level); nlme's reference is the first level it
  meets in the data, so its sigma and ratios differ by that level's ratio.
- Standard errors of beta are sigma^2 (X'V^-1 X)^-1 with the ML or REML
  sigma^2 (lme4, nlme's ``lme``); nlme's ``gls(method = "ML")`` uses
  rss/(N - p) instead, i.e. its SEs are sqrt(N / (N - p)) times larger.
- Normalized residuals use the inverse Cholesky factor of R_j with rows in
  time/position order (nlme's factor for AR(1), CAR(1) and corSymm; nlme's
  corCompSymm uses a Helmert-type factor instead: same sums of squares per
  group, different individual values).
- AIC/BIC count beta, theta, sigma and the structure's parameters
  (``n_params``), so likelihood-ratio tests (:func:`sm_hlm.compare`) include
  the structure.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

__all__ = [
    "ResidualStructure",
    "Independence",
    "Heteroscedastic",
    "AR1",
    "ContinuousAR1",
    "Exchangeable",
    "Unstructured",
    "ResidualIndex",
    "ResidualIdentificationWarning",
    "as_structure",
]

#: box on the unconstrained scale of tanh/logit-type parameters: |Phi| <= 1 - 2.3e-7
_BOUND_CORR = 8.0
#: box on log SD ratios (ratios between e^-10 and e^10)
_BOUND_LOGSD = 10.0


class ResidualIdentificationWarning(UserWarning):
    """Random effects and a residual structure that are only jointly identified."""


@dataclass(frozen=True)
class ResidualIndex:
    """What a structure knows about the data it is bound to.

    Attributes
    ----------
    group_name
        Name of the grouping factor.
    index_name
        Name of the time or position variable (None for none).
    n_slots
        Dense structures: number of positions (or the largest group size when
        rows are exchangeable and have no position).
    slot_labels
        Labels of the positions (sorted levels), or ranks ``0..n_slots-1``.
    by_name, by_levels
        Variance covariate and its sorted levels (the first is the reference).
    """

    group_name: str
    index_name: str | None
    n_slots: int
    slot_labels: tuple[Any, ...]
    by_name: str | None
    by_levels: tuple[Any, ...]


def external_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside sm_hlm."""
    import inspect
    import os

    pkg = os.path.dirname(os.path.abspath(__file__))
    frame = inspect.currentframe()
    level = 0
    while frame is not None:
        if not os.path.abspath(frame.f_code.co_filename).startswith(pkg + os.sep):
            return max(level, 1)
        frame = frame.f_back
        level += 1
    return max(level, 1)


def _spec_name(spec: Any, default: str) -> str:
    if isinstance(spec, str):
        return spec
    name = getattr(spec, "name", None)
    return str(name) if name is not None else default


def _fmt_level(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


class ResidualStructure:
    """Base class: the interface every residual structure implements.

    A subclass sets the class attributes and overrides the ``corr_*``
    methods (and ``phi`` for ``whitening = "markov"`` or ``corr_matrix`` for
    ``whitening = "dense"``); the variance function (``hetero_by``), the
    full parameter vector, transforms and bounds are handled here.

    Parameters
    ----------
    index
        Time or position variable (column name or array), or None.
    hetero_by
        Variance covariate (column name or array): a free SD ratio for every
        level but the first (nlme's ``varIdent``), or None.

    Notes
    -----
    The full parameter vector on the unconstrained (optimiser's) scale is
    the correlation parameters followed by the log SD ratios
    log(s_l / s_1), l = 2..L.  On the natural scale the same order holds, with
    SD ratios s_l / s_1.
    """

    #: "identity" (no correlation), "markov" (AR(1) recursion) or "dense"
    whitening: ClassVar[str] = "identity"
    #: "time" (numeric, orders rows), "position" (discrete levels) or None
    index_role: ClassVar[str | None] = None
    #: the time variable must be integer valued (AR1)
    integer_time: ClassVar[bool] = False
    #: keyword of the index variable in the constructor (for repr)
    index_keyword: ClassVar[str] = "time"
    #: nlme's description of the correlation structure ("" for none)
    nlme_label: ClassVar[str] = ""

    def __init__(self, index: Any = None, *, hetero_by: Any = None):
        self._specs: dict[str, Any] = {}
        if index is not None:
            self._specs["index"] = index
        if hetero_by is not None:
            self._specs["by"] = hetero_by
        self._values: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------ the spec
    @property
    def index_name(self) -> str | None:
        """Name of the time/position variable (None when there is none)."""
        spec = self._specs.get("index")
        return None if spec is None else _spec_name(spec, self.index_keyword)

    @property
    def by_name(self) -> str | None:
        """Name of the variance covariate (None when homoscedastic)."""
        spec = self._specs.get("by")
        return None if spec is None else _spec_name(spec, "by")

    @property
    def is_independent(self) -> bool:
        """No correlation and no variance function: the plain model."""
        return self.whitening == "identity" and "by" not in self._specs

    def columns(self) -> dict[str, str]:
        """Role -> column name for the variables given by name."""
        return {role: spec for role, spec in self._specs.items() if isinstance(spec, str)}

    def resolve(self, data: pd.DataFrame) -> "ResidualStructure":
        """A copy whose named variables are taken from ``data`` (aligned rows)."""
        out = copy.copy(self)
        out._specs = dict(self._specs)
        for role, name in self.columns().items():
            if name not in data.columns:
                what = "variance covariate (hetero_by/by)" if role == "by" else \
                    f"{self.index_keyword} variable"
                avail = ", ".join(map(str, list(data.columns)[:30]))
                raise KeyError(f"the {what} {name!r} of {self!r} is not a column of the data "
                               f"(columns: {avail})")
            out._specs[role] = data[name]
        out._values = None
        return out

    def values(self, n: int) -> dict[str, Any]:
        """Role -> the variable's values (length ``n``); names must be resolved."""
        out = {}
        for role, spec in self._specs.items():
            if isinstance(spec, str):
                kw = self.index_keyword if role == "index" or isinstance(self, Heteroscedastic) \
                    else "hetero_by"
                raise TypeError(
                    f"{self!r} names the column {spec!r}; use HLM.from_formula(..., data) to "
                    f"resolve it, or pass the values ({kw}=data[{spec!r}])")
            arr = spec if isinstance(spec, pd.Series) else np.asarray(spec)
            if np.ndim(arr) != 1:
                raise ValueError(f"the {role} variable of {self!r} must be one-dimensional, got "
                                 f"shape {np.shape(arr)}")
            if len(arr) != n:
                raise ValueError(f"the {role} variable of {self!r} has {len(arr)} values for "
                                 f"{n} rows")
            out[role] = arr
        return out

    def subset(self, keep: np.ndarray) -> "ResidualStructure":
        """A copy with the rows ``keep`` of its (array) variables."""
        out = copy.copy(self)
        out._specs = {r: (s[keep] if isinstance(s, pd.Series) else np.asarray(s)[keep])
                      for r, s in self._specs.items()}
        return out

    # ---------------------------------------------------------- combining
    def __mul__(self, other: Any) -> "ResidualStructure":
        if not isinstance(other, ResidualStructure):
            return NotImplemented
        if isinstance(other, Heteroscedastic) and not isinstance(self, Heteroscedastic):
            return self._with_variance(other._specs["by"])
        if isinstance(self, Heteroscedastic) and not isinstance(other, Heteroscedastic):
            return other._with_variance(self._specs["by"])
        if isinstance(other, Independence):
            return self
        if isinstance(self, Independence):
            return other
        raise TypeError(f"cannot combine {self!r} and {other!r}: a residual structure is one "
                        "correlation structure times at most one Heteroscedastic variance function")

    __rmul__ = __mul__

    def _with_variance(self, by: Any) -> "ResidualStructure":
        if "by" in self._specs:
            raise TypeError(f"{self!r} already has a variance function")
        out = copy.copy(self)
        out._specs = dict(self._specs, by=by)
        return out

    def _repr_spec(self, spec: Any) -> str:
        return repr(spec) if isinstance(spec, str) else f"<array {_spec_name(spec, '?')!r}>"

    def __repr__(self) -> str:
        parts = []
        if "index" in self._specs:
            parts.append(f"{self.index_keyword}={self._repr_spec(self._specs['index'])}")
        if "by" in self._specs:
            parts.append(f"hetero_by={self._repr_spec(self._specs['by'])}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ------------------------------------------- correlation part (override)
    def corr_names(self, info: ResidualIndex) -> list[str]:
        """Names of the correlation parameters (natural scale)."""
        return []

    def corr_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        """Open bounds (lower, upper) of the natural correlation parameters."""
        return np.zeros(0), np.zeros(0)

    def corr_from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """Natural correlation parameters from unconstrained values."""
        return np.zeros(0)

    def corr_to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """Inverse of :meth:`corr_from_free`."""
        return np.zeros(0)

    def corr_start(self, ctx: "StartContext") -> np.ndarray:
        """Natural starting values from OLS residuals."""
        return np.zeros(0)

    def phi(self, nat: np.ndarray) -> float:
        """The AR(1) coefficient (``whitening = "markov"``)."""
        raise NotImplementedError

    def corr_matrix(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """Correlation matrix over all positions (``whitening = "dense"``)."""
        raise NotImplementedError

    def corr_pairs(self, nat: np.ndarray, a: np.ndarray, b: np.ndarray,
                   info: ResidualIndex) -> np.ndarray:
        """Correlation of the errors at index values ``a`` and ``b`` (same group).

        ``a`` and ``b`` are times (markov) or position codes (dense); they
        broadcast.
        """
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        if self.whitening == "identity":
            return (a == b).astype(float)
        if self.whitening == "markov":
            return self.phi(nat) ** np.abs(a - b).astype(float)
        C = self.corr_matrix(nat, info)
        ok = (a >= 0) & (b >= 0)
        ia = np.where(ok, a, 0).astype(np.intp)
        ib = np.where(ok, b, 0).astype(np.intp)
        return np.where(ok, C[ia, ib], np.nan)

    # -------------------------------------------- full parameter vector
    def n_corr(self, info: ResidualIndex) -> int:
        """Number of correlation parameters (override when names are costly)."""
        return len(self.corr_names(info))

    def n_params(self, info: ResidualIndex) -> int:
        """Number of free parameters (correlation and variance)."""
        return self.n_corr(info) + self._n_var(info)

    def _n_var(self, info: ResidualIndex) -> int:
        return max(len(info.by_levels) - 1, 0) if "by" in self._specs else 0

    def param_names(self, info: ResidualIndex) -> list[str]:
        """Names of the natural parameters: correlations, then SD ratios."""
        var = [f"SD ratio({info.by_name}={_fmt_level(v)})" for v in info.by_levels[1:]] \
            if "by" in self._specs else []
        return self.corr_names(info) + var

    def from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """Natural parameters from the unconstrained vector."""
        u = np.asarray(u, dtype=float)
        k = self.n_corr(info)
        return np.concatenate([self.corr_from_free(u[:k], info), np.exp(u[k:])])

    def to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """Unconstrained vector from natural parameters."""
        nat = np.asarray(nat, dtype=float)
        k = self.n_corr(info)
        return np.concatenate([self.corr_to_free(nat[:k], info), np.log(nat[k:])])

    def natural_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        """Open bounds of the natural parameters (for boundaries and intervals)."""
        lo, hi = self.corr_bounds(info)
        nv = self._n_var(info)
        return np.append(lo, np.zeros(nv)), np.append(hi, np.full(nv, np.inf))

    def free_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        """Box on the unconstrained scale given to the optimiser."""
        k = self.n_corr(info)
        nv = self._n_var(info)
        b = np.append(np.full(k, _BOUND_CORR), np.full(nv, _BOUND_LOGSD))
        return -b, b

    def sd_levels(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        """SD ratio of every level of the variance covariate (first = 1)."""
        k = self.n_corr(info)
        return np.concatenate([[1.0], np.asarray(nat, float)[k:]])

    def start(self, ctx: "StartContext") -> np.ndarray:
        """Unconstrained starting values from OLS residuals (see StartContext)."""
        info = ctx.info
        nat_c = np.asarray(self.corr_start(ctx), dtype=float)
        lo, hi = self.corr_bounds(info)
        span = hi - lo
        nat_c = np.clip(nat_c, lo + 0.02 * span, hi - 0.02 * span) if len(nat_c) else nat_c
        if self._n_var(info):
            L = len(info.by_levels)
            ss = np.bincount(ctx.by_codes, weights=ctx.resid ** 2, minlength=L)
            cnt = np.bincount(ctx.by_codes, minlength=L)
            sd = np.sqrt(ss / np.maximum(cnt, 1))
            ref = sd[0] if sd[0] > 0 else 1.0
            ratio = np.where(sd > 0, sd / ref, 1.0)[1:]
            nat_v = np.clip(ratio, np.exp(-5), np.exp(5))
        else:
            nat_v = np.zeros(0)
        return self.to_free(np.concatenate([nat_c, nat_v]), info)

    # ---------------------------------------------------------- describing
    def describe(self, nat: np.ndarray, info: ResidualIndex) -> dict[str, str]:
        """Summary lines in nlme's terms."""
        out: dict[str, str] = {}
        k = self.n_corr(info)
        g = info.group_name
        if self.nlme_label:
            out["Correlation Structure:"] = self.nlme_label
            form = f"~ {info.index_name} | {g}" if info.index_name else f"~ 1 | {g}"
            out["  Formula:"] = form
            out.update(self._describe_corr(np.asarray(nat)[:k], info))
        if self._n_var(info):
            sd = self.sd_levels(nat, info)
            out["Variance function:"] = "varIdent (different SDs per stratum)"
            out["  Var. formula:"] = f"~ 1 | {info.by_name}"
            out["  SD ratios:"] = ", ".join(f"{_fmt_level(lv)}: {v:.3f}"
                                            for lv, v in zip(info.by_levels, sd))
        return out

    def _describe_corr(self, nat: np.ndarray, info: ResidualIndex) -> dict[str, str]:
        names = self.corr_names(info)
        return {"  Parameter estimate(s):": ", ".join(f"{n} {v:.4f}" for n, v in zip(names, nat))}


@dataclass(frozen=True)
class StartContext:
    """Data for starting values: OLS residuals sorted by group then time.

    Attributes
    ----------
    info
    resid : (n,) OLS residuals, sorted
    first : (n,) bool, first row of its group
    key : (n,) time (markov) or position code (dense) of each sorted row
    group : (n,) group index of each sorted row
    by_codes : (n,) variance level codes (zeros when homoscedastic)
    n_groups : int
    has_random : bool, the model has random effects
    """

    info: ResidualIndex
    resid: np.ndarray
    first: np.ndarray
    key: np.ndarray
    group: np.ndarray
    by_codes: np.ndarray
    n_groups: int
    has_random: bool

    def lag_correlation(self, lag: float) -> float:
        """Correlation of residuals ``lag`` apart within groups (pairs of neighbours)."""
        r, key = self.resid, self.key
        same = ~self.first[1:]
        d = key[1:] - key[:-1]
        sel = same & np.isclose(d, lag)
        var = float(np.mean(r ** 2))
        if sel.sum() < 3 or var <= 0:
            return 0.0
        return float(np.sum(r[1:][sel] * r[:-1][sel]) / sel.sum() / var)

    def slot_correlation(self, n_slots: int) -> np.ndarray:
        """Pairwise-complete residual correlation matrix by position."""
        m = self.n_groups
        P = np.zeros((m, n_slots))
        M = np.zeros((m, n_slots))
        P[self.group, self.key.astype(int)] = self.resid
        M[self.group, self.key.astype(int)] = 1.0
        num = P.T @ P
        ss = (P ** 2).T @ M
        with np.errstate(invalid="ignore", divide="ignore"):
            C = num / np.sqrt(ss * ss.T)
        C = np.where(np.isfinite(C), C, 0.0)
        np.fill_diagonal(C, 1.0)
        w, V = np.linalg.eigh(C)
        C = (V * np.maximum(w, 0.05)) @ V.T
        d = np.sqrt(np.diag(C))
        return C / np.outer(d, d)


# ======================================================================
#                              structures
# ======================================================================
class Independence(ResidualStructure):
    """Independent homoscedastic errors, R_j = I (the default)."""

    whitening = "identity"

    def __init__(self) -> None:
        super().__init__()


class Heteroscedastic(ResidualStructure):
    """Independent errors with an SD ratio per level of ``by`` (nlme's varIdent).

    Parameters
    ----------
    by
        Column name or array; its sorted first level is the reference
        (ratio 1).

    Notes
    -----
    R_j = S_j^2 with S_j = diag(s_{l(i)}); the optimiser works on
    log(s_l), l = 2..L.  Multiply a correlation structure by it for
    heteroscedastic versions: ``AR1(time="wave") * Heteroscedastic(by="wave")``.
    """

    whitening = "identity"
    index_keyword = "by"

    def __init__(self, by: Any):
        if by is None:
            raise TypeError("Heteroscedastic needs by= (a column name or array)")
        super().__init__(hetero_by=by)

    def __repr__(self) -> str:
        return f"Heteroscedastic(by={self._repr_spec(self._specs['by'])})"


class AR1(ResidualStructure):
    """First-order autoregressive correlation in integer time (nlme's corAR1).

    Parameters
    ----------
    time
        Integer-valued time of each row (column name or array).  Gaps
        (missing occasions) are allowed; times must be unique within a group.
    hetero_by
        Optional variance covariate (ARH(1) when it is the time).

    Notes
    -----
    corr(e_s, e_t) = Phi^|t - s|, -1 < Phi < 1, with Phi = tanh(u).  With rows
    sorted by time and gaps d_i = t_i - t_{i-1}, the inverse Cholesky factor
    is bidiagonal::

        e*_1 = e_1,   e*_i = (e_i - Phi^d_i e_{i-1}) / sqrt(1 - Phi^(2 d_i)),

    and log|C_j| = sum_{i>1} log(1 - Phi^(2 d_i)).
    """

    whitening = "markov"
    index_role = "time"
    integer_time = True
    nlme_label = "AR(1)"

    def __init__(self, time: Any, *, hetero_by: Any = None):
        if time is None:
            raise TypeError(f"{type(self).__name__} needs time= (a column name or array)")
        super().__init__(time, hetero_by=hetero_by)

    def corr_names(self, info: ResidualIndex) -> list[str]:
        return ["Phi"]

    def corr_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        return np.array([-1.0]), np.array([1.0])

    def corr_from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        return np.tanh(u)

    def corr_to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        return np.arctanh(nat)

    def corr_start(self, ctx: StartContext) -> np.ndarray:
        r1 = ctx.lag_correlation(1.0)
        if not ctx.has_random:
            return np.array([r1])
        # random intercept + AR(1): rho_d = a + (1 - a) phi^d, solved from lags 1 and 2
        r2 = ctx.lag_correlation(2.0)
        den = 1.0 - 2.0 * r1 + r2
        a = float(np.clip((r2 - r1 ** 2) / den, 0.0, 0.9)) if abs(den) > 1e-8 else 0.0
        return np.array([(r1 - a) / (1.0 - a)])

    def phi(self, nat: np.ndarray) -> float:
        return float(nat[0])


class ContinuousAR1(AR1):
    """Continuous-time AR(1) (nlme's corCAR1): corr = Phi^|t - s| for real times.

    Parameters
    ----------
    time
        Real-valued (irregular) time of each row; unique within a group.
    hetero_by
        Optional variance covariate.

    Notes
    -----
    0 < Phi < 1 (the correlation one time unit apart), Phi = logistic(u).
    Whitening is the same bidiagonal recursion as :class:`AR1` with real gaps.
    """

    integer_time = False
    nlme_label = "Continuous AR(1)"

    def corr_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.0]), np.array([1.0])

    def corr_from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(u, float)))

    def corr_to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        nat = np.asarray(nat, float)
        return np.log(nat / (1.0 - nat))

    def corr_start(self, ctx: StartContext) -> np.ndarray:
        # correlation per unit time from neighbours: mean of r_i r_{i-1} / var ~ phi^d
        r, key, first = ctx.resid, ctx.key, ctx.first
        same = ~first[1:]
        d = (key[1:] - key[:-1])[same]
        prod = (r[1:] * r[:-1])[same] / max(float(np.mean(r ** 2)), 1e-300)
        if len(d) < 3:
            return np.array([0.5])
        rho = float(np.clip(np.mean(prod), 0.05, 0.95))
        phi = rho ** (1.0 / max(float(np.mean(d)), 1e-8))
        if ctx.has_random:
            phi *= 0.5
        return np.array([phi])


class Exchangeable(ResidualStructure):
    """Compound symmetry: equal correlation Rho between any two errors of a group.

    Parameters
    ----------
    position
        Optional position variable: orders rows within groups (for normalized
        residuals) and identifies occasions for predictions.  Without it rows
        keep their data order.
    hetero_by
        Optional variance covariate (CSH when it is the position).

    Notes
    -----
    C_j = (1 - Rho) I + Rho 11', positive definite for
    -1/(n_max - 1) < Rho < 1 with n_max the largest group;
    Rho = lo + (1 - lo) logistic(u).
    """

    whitening = "dense"
    index_role = "position"
    index_keyword = "position"
    nlme_label = "Compound symmetry"

    def __init__(self, position: Any = None, *, hetero_by: Any = None):
        super().__init__(position, hetero_by=hetero_by)

    def _lower(self, info: ResidualIndex) -> float:
        return -1.0 / (info.n_slots - 1) if info.n_slots > 1 else -1.0

    def corr_names(self, info: ResidualIndex) -> list[str]:
        return ["Rho"]

    def corr_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self._lower(info)]), np.array([1.0])

    def corr_from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        lo = self._lower(info)
        return lo + (1.0 - lo) / (1.0 + np.exp(-np.asarray(u, float)))

    def corr_to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        lo = self._lower(info)
        x = (np.asarray(nat, float) - lo) / (1.0 - lo)
        return np.log(x / (1.0 - x))

    def corr_start(self, ctx: StartContext) -> np.ndarray:
        r, g = ctx.resid, ctx.group
        s = np.bincount(g, weights=r, minlength=ctx.n_groups)
        ss = np.bincount(g, weights=r ** 2, minlength=ctx.n_groups)
        cnt = np.bincount(g, minlength=ctx.n_groups)
        pairs = float(np.sum(cnt * (cnt - 1)))
        var = float(np.mean(r ** 2))
        rho = float(np.sum(s ** 2 - ss)) / pairs / var if pairs > 0 and var > 0 else 0.0
        return np.array([0.5 * rho if ctx.has_random else rho])

    def corr_matrix(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        T = info.n_slots
        rho = float(nat[0])
        return np.full((T, T), rho) + (1.0 - rho) * np.eye(T)

    def corr_pairs(self, nat: np.ndarray, a: np.ndarray, b: np.ndarray,
                   info: ResidualIndex) -> np.ndarray:
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        return np.where(a == b, 1.0, float(nat[0]))


class Unstructured(ResidualStructure):
    """Unstructured covariance by position (nlme corSymm + varIdent; SAS TYPE=UN).

    Parameters
    ----------
    position
        Position of each row (column name or array; any sortable labels such
        as waves); unique within a group.  Gaps are allowed.
    hetero
        A free SD ratio per position (default, the full unstructured
        covariance); ``hetero=False`` gives corSymm alone (equal variances).

    Notes
    -----
    With T positions: T(T-1)/2 correlations and T-1 SD ratios.  The
    correlation matrix is parametrised by canonical partial correlations
    z_ts = tanh(u_ts) (t > s), which map R^(T(T-1)/2) one-to-one onto the
    positive definite correlation matrices through its Cholesky factor::

        L_t0 = z_t0,  L_ts = z_ts sqrt(1 - sum_{k<s} L_tk^2),
        L_tt = sqrt(1 - sum_{k<t} L_tk^2),   C = L L'.

    Parameters are ordered as nlme's corSymm: (0,1), (0,2), ..., (1,2), ...
    """

    whitening = "dense"
    index_role = "position"
    index_keyword = "position"
    nlme_label = "General correlation"

    def __init__(self, position: Any, *, hetero: bool = True):
        if position is None:
            raise TypeError("Unstructured needs position= (a column name or array)")
        super().__init__(position, hetero_by=position if hetero else None)
        self.hetero = bool(hetero)

    def __repr__(self) -> str:
        extra = "" if self.hetero else ", hetero=False"
        return f"Unstructured(position={self._repr_spec(self._specs['index'])}{extra})"

    def _with_variance(self, by: Any) -> ResidualStructure:
        if self.hetero:
            raise TypeError(f"{self!r} already has an SD ratio per position; use "
                            "Unstructured(position, hetero=False) * Heteroscedastic(by) for "
                            "another variance covariate")
        return super()._with_variance(by)

    @staticmethod
    def _pairs(T: int) -> tuple[np.ndarray, np.ndarray]:
        return _triu_pairs(T)

    def n_corr(self, info: ResidualIndex) -> int:
        return info.n_slots * (info.n_slots - 1) // 2

    def corr_names(self, info: ResidualIndex) -> list[str]:
        s, t = self._pairs(info.n_slots)
        lab = [_fmt_level(v) for v in info.slot_labels]
        return [f"Corr({lab[a]},{lab[b]})" for a, b in zip(s, t)]

    def corr_bounds(self, info: ResidualIndex) -> tuple[np.ndarray, np.ndarray]:
        k = self.n_corr(info)
        return np.full(k, -1.0), np.full(k, 1.0)

    def _cholesky_from_free(self, u: np.ndarray, T: int) -> np.ndarray:
        s, t = self._pairs(T)
        Z = np.zeros((T, T))
        Z[t, s] = np.tanh(np.asarray(u, float))
        L = np.zeros((T, T))
        rem = np.ones(T)
        for j in range(T - 1):       # loops over positions only
            L[j + 1:, j] = Z[j + 1:, j] * np.sqrt(rem[j + 1:])
            rem[j + 1:] = rem[j + 1:] - L[j + 1:, j] ** 2
        L[np.arange(T), np.arange(T)] = np.sqrt(np.maximum(rem, 0.0))
        return L

    def corr_from_free(self, u: np.ndarray, info: ResidualIndex) -> np.ndarray:
        T = info.n_slots
        L = self._cholesky_from_free(u, T)
        C = L @ L.T
        s, t = self._pairs(T)
        return C[s, t]

    def corr_to_free(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        T = info.n_slots
        s, t = self._pairs(T)
        C = np.eye(T)
        C[s, t] = nat
        C[t, s] = nat
        L = np.linalg.cholesky(C)
        cum = np.cumsum(L ** 2, axis=1)
        prev = np.hstack([np.zeros((T, 1)), cum[:, :-1]])
        Z = L / np.sqrt(np.maximum(1.0 - prev, 1e-300))
        return np.arctanh(np.clip(Z[t, s], -1 + 1e-12, 1 - 1e-12))

    def corr_start(self, ctx: StartContext) -> np.ndarray:
        C = ctx.slot_correlation(ctx.info.n_slots)
        if ctx.has_random:
            C = 0.5 * C + 0.5 * np.eye(len(C))
        s, t = self._pairs(ctx.info.n_slots)
        return C[s, t]

    def corr_matrix(self, nat: np.ndarray, info: ResidualIndex) -> np.ndarray:
        T = info.n_slots
        s, t = self._pairs(T)
        C = np.eye(T)
        k = len(s)
        C[s, t] = nat[:k]
        C[t, s] = nat[:k]
        return C

    def _describe_corr(self, nat: np.ndarray, info: ResidualIndex) -> dict[str, str]:
        C = self.corr_matrix(nat, info)
        lab = [_fmt_level(v) for v in info.slot_labels]
        out = {}
        for i in range(1, len(lab)):
            out[f"  Corr({lab[i]}, .):"] = " ".join(f"{C[i, j]:.3f}" for j in range(i))
        return out


@functools.lru_cache(maxsize=64)
def _triu_pairs(T: int) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.triu_indices(T, k=1)
    s.setflags(write=False)
    t.setflags(write=False)
    return s, t


def as_structure(residual: Any) -> ResidualStructure | None:
    """Validate the ``residual=`` argument; None and Independence() mean independent errors."""
    if residual is None:
        return None
    if not isinstance(residual, ResidualStructure):
        raise TypeError("residual= must be a residual structure such as AR1(time='wave'), "
                        f"Unstructured(position='wave') or Heteroscedastic(by='g'); got "
                        f"{type(residual).__name__}")
    return residual


def structure_columns(residual: Any) -> dict[str, str]:
    """Column names a structure reads from the formula data (role -> name)."""
    s = as_structure(residual)
    return {} if s is None else s.columns()


def resolve_structure(residual: Any, data: pd.DataFrame) -> ResidualStructure | None:
    """Resolve named variables against ``data`` (the rows the model keeps)."""
    s = as_structure(residual)
    return None if s is None else s.resolve(data)


def model_variables(fixed_formula: str, specs: Any, residual: Any, data: pd.DataFrame,
                    env_names: Any) -> set[str]:
    """The data columns a formula model reads: the fixed part's and every random term's
    variables and the residual structure's columns; raises KeyError naming any that are
    neither in ``data`` nor in the formula's namespace (``env_names``)."""
    from .data import check_columns, formula_variables

    used = formula_variables(fixed_formula)
    for s in specs:
        used |= formula_variables(s.expr)
    res_cols = structure_columns(residual)
    if res_cols:
        resolve_structure(residual, data)      # clear error for a missing column
        used |= set(res_cols.values())
    check_columns(used, data, env_names)
    return used
