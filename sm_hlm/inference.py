"""Inference beyond Wald tests: Satterthwaite df, profile intervals, bootstrap,
cluster-robust covariances.

* :func:`satterthwaite` / :func:`contest`: t and F tests of the fixed effects
  with Satterthwaite denominator degrees of freedom, as R's lmerTest.
* :func:`conf_int_profile`: profile-likelihood intervals, as lme4's
  ``confint(fit, method = "profile")``.
* :func:`bootstrap`: parametric bootstrap (lme4's ``bootMer``) refitting only
  the response-dependent sufficient statistics.
* :func:`cov_robust`: CR0/CR1/CR2 cluster-robust covariance of the fixed
  effects with the groups as clusters, as clubSandwich's ``vcovCR``.

Notation: y_j = X_j beta + Z_j b_j + e_j for groups j = 1..m, with
b_j ~ N(0, Psi), Psi = sigma^2 Lambda Lambda', e_j ~ N(0, sigma^2 I), so that
y_j ~ N(X_j beta, sigma^2 V_j) with V_j = I + Z_j Lambda Lambda' Z_j'.
``theta`` holds the free entries of the relative factor Lambda (lme4's
order).
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .engine.numdiff import hessian_richardson, jacobian_richardson
from .inference_base import _unwrap, cluster_factor, robust_kind
from .engine.deviance import LOG2PI, ProfiledDeviance, SufficientStats
from .engine.linalg import group_crossprod
from .engine.optimizer import minimize_bobyqa, minimize_deviance

if TYPE_CHECKING:
    from .model import HLM
    from .results import HLMResults

__all__ = [
    "satterthwaite",
    "contest",
    "conf_int_profile",
    "profile_parameter_names",
    "bootstrap",
    "BootstrapResult",
    "cov_robust",
]

#: lmerTest's tolerance on the eigenvalues of the deviance Hessian.
_HESS_EIG_TOL = 1e-8
#: clubSandwich's threshold on eigenvalues in its matrix powers (10^-12).
_CS_EIG_TOL = 1e-12


# =====================================================================
# the deviance and cov(beta) in all variance parameters
# =====================================================================

class _VarparFunctions:
    """The deviance and cov(beta) as functions of varpar = (theta, u, sigma).

    theta: the relative covariance factor of the random effects; u: the
    residual structure's parameters on the optimiser's unconstrained scale
    (absent for independent errors); sigma: the residual SD (of the
    reference level of a variance covariate).  beta is profiled out.  With
    a structure, the deviance is that of the whitened data plus log|R|
    (:mod:`sm_hlm.whitening`).
    """

    def __init__(self, model: "HLM", reml: bool):
        self.model = model
        self.reml = bool(reml)
        self.kern = getattr(model, "_residual_kernel", None)
        self.nt = model.re_design.n_theta
        self.nr = 0 if self.kern is None else self.kern.n_params
        self._dev = None if self.kern is not None else model.deviance_function(reml=self.reml)

    def point(self, res: "HLMResults") -> np.ndarray:
        fit = res.fit_result
        parts = [np.asarray(fit.theta, float)]
        if self.kern is not None:
            parts.append(np.asarray(fit.residual_free, float))
        parts.append([math.sqrt(fit.scale)])
        return np.concatenate(parts)

    def names(self) -> tuple[str, ...]:
        rd = self.model.re_design
        res_names = tuple(f"residual.{n}" for n in self.kern.param_names) if self.kern else ()
        return tuple(rd.theta_names) + res_names + ("sigma",)

    def stats(self, u: np.ndarray) -> tuple[SufficientStats, float] | None:
        """Whitened sufficient statistics and log|R| at ``u`` (None if not PD)."""
        if not np.all(np.isfinite(u)):
            return None
        with np.errstate(all="ignore"):
            try:
                return self.kern.stats(np.asarray(u, float))
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                return None

    def deviance_fn(self, u: np.ndarray | None) -> tuple[ProfiledDeviance, float] | None:
        """The profiled deviance of theta at ``u`` and log|R| (None if not PD)."""
        if self.kern is None:
            return self._dev, 0.0
        st = self.stats(u)
        if st is None:
            return None
        return ProfiledDeviance(st[0], self.kern.lambda_, reml=self.reml), st[1]

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        x = np.asarray(x, float)
        return x[:self.nt], x[self.nt:self.nt + self.nr], float(x[-1])

    def deviance(self, x: np.ndarray) -> float:
        theta, u, sigma = self.split(x)
        dv = self.deviance_fn(u)
        if dv is None:
            return np.nan
        return _varpar_deviance(dv[0], np.append(theta, sigma)) + dv[1]

    def cov_fe(self, x: np.ndarray) -> np.ndarray:
        theta, u, sigma = self.split(x)
        dv = self.deviance_fn(u)
        if dv is None:
            p = self.model.k_fe
            return np.full((p, p), np.nan)
        return _varpar_cov_fe(dv[0], np.append(theta, sigma))


# =====================================================================
# Satterthwaite degrees of freedom (lmerTest)
# =====================================================================

@dataclass(frozen=True)
class _SatterthwaiteState:
    """What lmerTest stores on an lmerModLmerTest object."""

    varpar: np.ndarray        # (theta, sigma) at the estimates
    vcov_varpar: np.ndarray   # 2 H^+ (H: Hessian of the deviance in varpar)
    jac: np.ndarray           # (k, p, p): d cov_fe / d varpar_i
    cov_fe: np.ndarray
    beta: np.ndarray
    names: tuple[str, ...]
    hessian_eigenvalues: np.ndarray


def _varpar_deviance(dev: ProfiledDeviance, x: np.ndarray) -> float:
    """-2 log-likelihood (beta profiled) or REML criterion at varpar = (theta, sigma)."""
    n, p = dev.stats.nobs, dev.stats.k_fe
    t = dev.terms(np.asarray(x[:-1]))
    if t is None:
        return np.nan
    s2 = float(x[-1]) ** 2
    out = t.logdet_L + t.pwrss / s2 + n * (LOG2PI + math.log(s2))
    if dev.reml:
        out += t.logdet_RX - p * (LOG2PI + math.log(s2))
    return float(out)


def _varpar_cov_fe(dev: ProfiledDeviance, x: np.ndarray) -> np.ndarray:
    """sigma^2 (X'V(theta)^-1 X)^-1 at varpar = (theta, sigma)."""
    p = dev.stats.k_fe
    t = dev.terms(np.asarray(x[:-1]))
    if t is None:
        return np.full((p, p), np.nan)
    RXi = np.linalg.inv(t.R[:p, :p])
    return float(x[-1]) ** 2 * (RXi.T @ RXi)


def satterthwaite_state(deviance: Callable[[np.ndarray], float],
                        cov_fe_of: Callable[[np.ndarray], np.ndarray], x0: np.ndarray,
                        names: tuple[str, ...], *, cov_fe: Any, beta: Any
                        ) -> _SatterthwaiteState:
    """lmerTest's ingredients at varpar ``x0``: 2 H^+ (H the Richardson Hessian of
    ``deviance``; eigenvalues below 1e-8 dropped, a warning for negative ones) and the
    Jacobian of ``cov_fe_of`` (beta's covariance as a function of varpar), with the
    estimates ``cov_fe`` and ``beta``."""
    H = hessian_richardson(deviance, x0)
    if not np.all(np.isfinite(H)):
        raise RuntimeError("the Hessian of the deviance in the variance parameters "
                           f"{list(names)} is not finite at the estimates (a parameter at "
                           "the edge of its range?): Satterthwaite df are not available")
    evals, evecs = np.linalg.eigh(H)
    if np.any(evals < -_HESS_EIG_TOL):
        warnings.warn("the Hessian of the deviance in the variance parameters has negative "
                      f"eigenvalue(s) {evals[evals < -_HESS_EIG_TOL]}: the fit may not have "
                      "converged; Satterthwaite df may be unreliable", RuntimeWarning,
                      stacklevel=4)
    pos = evals > _HESS_EIG_TOL
    Hinv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    jac = jacobian_richardson(cov_fe_of, x0)   # (p, p, k)
    return _SatterthwaiteState(
        varpar=x0, vcov_varpar=2.0 * Hinv, jac=np.moveaxis(jac, -1, 0),
        cov_fe=np.asarray(cov_fe, float), beta=np.asarray(beta, float),
        names=names, hessian_eigenvalues=evals)


def _satterthwaite_state(results: Any) -> _SatterthwaiteState:
    res = _unwrap(results, "Satterthwaite df", structured=True)
    cached = getattr(res, "_sm_hlm_satterthwaite", None)
    if cached is not None:
        return cached
    model = res.model
    fit = res.fit_result
    vf = _VarparFunctions(model, reml=bool(fit.reml))
    x0 = vf.point(res)
    state = satterthwaite_state(vf.deviance, vf.cov_fe, x0, tuple(vf.names()),
                                cov_fe=fit.cov_fe, beta=fit.fe_params)
    try:
        object.__setattr__(res, "_sm_hlm_satterthwaite", state)
    except (AttributeError, TypeError):  # pragma: no cover - exotic results objects
        pass
    return state


def _satterthwaite_df(state: _SatterthwaiteState, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variances of L beta and their Satterthwaite df, one per contrast row of L (r, p)."""
    var = np.einsum("ri,ij,rj->r", L, state.cov_fe, L)
    grad = np.einsum("ri,kij,rj->rk", L, state.jac, L)
    denom = np.einsum("rk,kl,rl->r", grad, state.vcov_varpar, grad)
    pos = denom > 0
    df = np.full(len(var), np.inf)
    df[pos] = 2.0 * var[pos] ** 2 / denom[pos]
    return var, df


def satterthwaite(results: Any) -> pd.DataFrame:
    """Fixed-effects table with Satterthwaite degrees of freedom (lmerTest).

    Parameters
    ----------
    results : HLMResults
        An ML or REML fit.

    Returns
    -------
    DataFrame
        Index: fixed-effect names; columns ``Estimate``, ``Std. Error``,
        ``df``, ``t value``, ``Pr(>|t|)``, as ``summary(fit)$coefficients``
        of an ``lmerTest::lmer`` fit.

    Notes
    -----
    For a contrast L (here the unit vectors) the t statistic
    L beta / sqrt(L C L') with C = sigma^2 (X'V^-1 X)^-1 has approximately a
    t distribution with

        df = 2 (L C L')^2 / (g' A g),

    where g = d(L C L') / d varpar is the gradient of the contrast variance
    with respect to the variance parameters varpar = (theta, sigma) and
    A = 2 H^-1 their asymptotic covariance, H being the Hessian of the
    deviance D(theta, sigma) (-2 log-likelihood with beta profiled for ML,
    the REML criterion for REML fits).  H and g are computed by Richardson-
    extrapolated finite differences (numDeriv's scheme, as lmerTest); H is
    inverted on its eigenvalues above 1e-8 (a Moore-Penrose inverse, as
    lmerTest).  The df are invariant to the parametrisation of the variance
    parameters at an interior optimum.

    With a residual structure e_j ~ N(0, sigma^2 R_j(phi)) the variance
    parameters are varpar = (theta, u, sigma), u the structure's parameters
    on the optimiser's unconstrained scale (``fit_result.residual_free``),
    and D is the deviance of the whitened data plus log|R| (the fit's own
    ML or REML criterion); H is then the Hessian in all of them and g the
    gradient of L C L' in all of them (lmerTest's recipe with the structure
    parameters added, as nlme's ``apVar`` covers the correlation and
    variance-function parameters).
    """
    res = _unwrap(results, "satterthwaite()", structured=True)
    state = _satterthwaite_state(res)
    p = len(state.beta)
    names = list(res.model.exog_names)
    se = np.sqrt(np.diag(state.cov_fe))
    df = _satterthwaite_df(state, np.eye(p))[1]
    t = state.beta / se
    pval = 2.0 * stats.t.sf(np.abs(t), df)
    return pd.DataFrame({"Estimate": state.beta, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": pval}, index=pd.Index(names))


def _get_fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """Denominator df of an F statistic from the df of its q independent t's."""
    nu = np.asarray(nu, dtype=float)
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - len(nu))


def contest(results: Any, L: Any, rhs: Any = 0.0, *, joint: bool = True,
            eps: float = float(np.sqrt(np.finfo(float).eps)),
            ddf: str = "satterthwaite") -> pd.DataFrame:
    """Test linear contrasts of the fixed effects with Satterthwaite df (lmerTest).

    Parameters
    ----------
    results : HLMResults
    L : array_like, shape (p,) or (r, p)
        Contrast vector or matrix (one row per contrast), columns in the
        order of the fixed effects.
    rhs : float or array_like
        Null values of L beta.
    joint : bool
        For several rows, one F test of all (True, lmerTest's ``contestMD``)
        or a t test per row (False).
    ddf : {"satterthwaite", "kenward-roger"}
        Denominator df.  ``"kenward-roger"`` delegates to
        :func:`sm_hlm.kenward_roger.kenward_roger` (adjusted covariance, F
        scaling, an extra ``F.scaling`` column; ``eps`` unused).

    Returns
    -------
    DataFrame
        t tests: columns ``Estimate``, ``Std. Error``, ``df``, ``t value``,
        ``Pr(>|t|)`` (one row per contrast).  F test: ``F value``,
        ``NumDF``, ``DenDF``, ``Pr(>F)`` (one row).

    Notes
    -----
    t test of one row L: see :func:`satterthwaite`.  F test (Fai & Cornelius
    1996, as lmerTest): with the eigen-decomposition L C L' = P D P', the
    q = rank(L C L') rows of P'L are independent contrasts with t statistics
    t_m and Satterthwaite df nu_m; F = sum_m t_m^2 / q and, with
    E = sum_m nu_m / (nu_m - 2), the denominator df are 2E / (E - q)
    (2 if some nu_m <= 2; the common value if all nu_m are equal).
    """
    key = str(ddf).lower()
    if key in ("kenward-roger", "kenward_roger"):
        from .kenward_roger import kenward_roger
        return kenward_roger(results, L, rhs, joint=joint)
    if key != "satterthwaite":
        raise ValueError(f"ddf must be 'satterthwaite' or 'kenward-roger', got {ddf!r}")
    res = _unwrap(results, "contest()", structured=True)
    state = _satterthwaite_state(res)
    p = len(state.beta)
    Lm = np.atleast_2d(np.asarray(L, dtype=float))
    if Lm.ndim != 2 or Lm.shape[1] != p:
        raise ValueError(f"L must have {p} columns (one per fixed effect), got shape {Lm.shape}")
    r = Lm.shape[0]
    rhs_a = np.asarray(rhs, dtype=float)
    if rhs_a.ndim > 1 or rhs_a.size not in (1, r):
        raise ValueError(f"rhs must be a scalar or have {r} entries (one per row of L), got "
                         f"shape {rhs_a.shape}")
    rhs_v = np.broadcast_to(rhs_a.reshape(-1), (r,))
    if r == 1 or not joint:
        est = Lm @ state.beta
        var, df = _satterthwaite_df(state, Lm)
        se = np.sqrt(var)
        t = (est - rhs_v) / se
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "df": df, "t value": t,
                             "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)})
    beta = state.beta
    if np.any(rhs_v != 0):
        beta = beta - np.linalg.pinv(Lm) @ rhs_v
    VL = Lm @ state.cov_fe @ Lm.T
    d, P = np.linalg.eigh(VL)
    order = np.argsort(d)[::-1]
    d, P = d[order], P[:, order]
    pos = d > max(eps * d[0], 0.0)
    q = int(pos.sum())
    if q == 0:
        raise ValueError("the contrast matrix has rank 0 (L C L' is zero)")
    if q < r and np.any(rhs_v != 0):
        warnings.warn("contrast is rank deficient and the test may be affected", RuntimeWarning,
                      stacklevel=2)
    PtL = (P.T @ Lm)[:q]
    t2 = (PtL @ beta) ** 2 / d[:q]
    F = float(t2.sum() / q)
    nu = _satterthwaite_df(state, PtL)[1]
    ddf = _get_fstat_ddf(nu)
    return pd.DataFrame({"F value": [F], "NumDF": [q], "DenDF": [ddf],
                         "Pr(>F)": [float(stats.f.sf(F, q, ddf))]})


# =====================================================================
# variance parameters on lme4's sd/cor scale
# =====================================================================

def profile_parameter_names(model: "HLM") -> pd.DataFrame:
    """Readable and lme4 names of the parameters of :func:`conf_int_profile`.

    Returns
    -------
    DataFrame
        Index: readable labels, in lme4's order (the random-effect SDs and
        correlations in theta order, the residual structure's parameters on
        their natural scale, e.g. ``Phi`` or ``SD ratio(wave=1)``, if any,
        ``sigma``, then the fixed effects):
        ``sd(Intercept|school)``, ``cor(Intercept,ses|school)``,
        ``sd(ses|school)``, ``sigma``, ``Intercept``, ``ses``...  Columns
        ``lme4`` (lme4's ``oldNames = TRUE`` names: ``.sig01``, ``.sig02``,
        ..., ``.sigma``, ``(Intercept)``, ...; a structure parameter keeps its
        name) and ``kind`` (``"sd"``, ``"cor"``, ``"residual"``, ``"sigma"``,
        ``"beta"``).
    """
    rd = model.re_design
    labels, lme4, kinds = [], [], []
    k = 0
    for term in rd.terms:
        for i, j in term.theta_index():
            k += 1
            if i == j:
                labels.append(f"sd({term.names[i]}|{term.group})")
                kinds.append("sd")
            else:
                labels.append(f"cor({term.names[j]},{term.names[i]}|{term.group})")
                kinds.append("cor")
            lme4.append(f".sig{k:02d}")
    kern = getattr(model, "_residual_kernel", None)
    if kern is not None:
        for name in kern.param_names:
            labels.append(name)
            lme4.append(name)         # no lme4 counterpart: the structure's own name
            kinds.append("residual")
    labels.append("sigma")
    lme4.append(".sigma")
    kinds.append("sigma")
    for name in model.exog_names:
        labels.append(str(name))
        lme4.append("(Intercept)" if name == "Intercept" else str(name))
        kinds.append("beta")
    return pd.DataFrame({"lme4": lme4, "kind": kinds}, index=pd.Index(labels))


def _sdcor_from_theta(rd: Any, theta: np.ndarray, sigma: float) -> np.ndarray:
    """lme4's Cv_to_Sv: (sd, cor) entries in theta order, given sigma."""
    cov = rd.cov_re(np.asarray(theta, float), sigma * sigma)
    out = []
    for term, _, sd, corr in rd.term_blocks(cov):
        for i, j in term.theta_index():
            # a correlation with a zero SD is reported as 0, as lme4 does
            out.append(sd[i] if i == j else np.nan_to_num(corr[i, j], nan=0.0))
    return np.array(out, dtype=float)


def _psd_cholesky(C: np.ndarray, tol: float = 1e-10) -> np.ndarray | None:
    """Lower factor of a PSD correlation matrix (None if not PSD)."""
    k = C.shape[0]
    Lc = np.zeros_like(C)
    for j in range(k):
        s = C[j, j] - Lc[j, :j] @ Lc[j, :j]
        if s < -tol:
            return None
        d = math.sqrt(max(s, 0.0))
        Lc[j, j] = d
        for i in range(j + 1, k):
            v = C[i, j] - Lc[i, :j] @ Lc[j, :j]
            if d > tol:
                Lc[i, j] = v / d
            elif abs(v) > 1e-8:
                return None
    return Lc


def _theta_from_sdcor(rd: Any, sv: np.ndarray, sigma: float) -> np.ndarray | None:
    """lme4's Sv_to_Cv: theta from (sd, cor) in theta order and sigma (None if invalid)."""
    theta = np.empty(rd.n_theta)
    pos = 0
    for term in rd.terms:
        idx = term.theta_index()
        block = sv[pos:pos + len(idx)]
        if not term.correlated:
            theta[pos:pos + len(idx)] = block / sigma
            pos += len(idx)
            continue
        sd = np.zeros(term.k)
        R = np.eye(term.k)
        for (i, j), v in zip(idx, block):
            if i == j:
                sd[i] = v
            else:
                R[i, j] = R[j, i] = v
        Lc = _psd_cholesky(R)
        if Lc is None:
            return None
        lam = (sd[:, None] / sigma) * Lc
        theta[pos:pos + len(idx)] = [lam[i, j] for i, j in idx]
        pos += len(idx)
    return theta


# =====================================================================
# profile-likelihood intervals (lme4's confint(method = "profile"))
# =====================================================================

class _Profiler:
    """Signed square roots of ML deviance differences along one parameter."""

    def __init__(self, fun: Callable[[float, np.ndarray], tuple[float, np.ndarray]],
                 estimate: float, start: np.ndarray, base: float):
        self.fun = fun                 # (value, start) -> (min deviance, argmin)
        self.estimate = estimate
        self.base = base
        self.points: dict[float, tuple[float, np.ndarray]] = {estimate: (0.0, start)}
        self.lower_dev = 0.0

    def zeta(self, v: float) -> float:
        v = float(v)
        if v in self.points:
            return self.points[v][0]
        near = min(self.points, key=lambda a: abs(a - v))
        fval, arg = self.fun(v, self.points[near][1])
        diff = fval - self.base
        self.lower_dev = min(self.lower_dev, diff)
        # a non-finite deviance (e.g. sigma -> 0) is far beyond any cut-off
        z = math.copysign(math.sqrt(max(diff, 0.0)) if np.isfinite(diff) else 1e6,
                          v - self.estimate)
        self.points[v] = (z, arg)
        return z

    def end(self, direction: int, target: float, step: float, bound: float,
            xtol: float) -> float:
        """The value on side ``direction`` (+1/-1) where |zeta| = target (or ``bound``)."""
        est = self.estimate
        if direction * (bound - est) <= 0:     # estimate on the bound
            return bound
        inside, v = est, est + direction * step
        for _ in range(60):
            if direction * (v - bound) >= 0:
                v = bound
            z = abs(self.zeta(v))
            if z >= target:
                break
            if v == bound:
                return bound
            # zeta is nearly linear in the parameter: extrapolate (at most 4x)
            dist = abs(v - est)
            inside = v
            grow = min(max(target / z * 1.1, 1.2), 4.0) if z > 0 else 4.0
            v = est + direction * dist * grow
        else:  # pragma: no cover - pathological profile
            return np.nan
        root = optimize.brentq(lambda a: abs(self.zeta(a)) - target, inside, v, xtol=xtol,
                               rtol=1e-12, maxiter=200)
        return float(root)


def profile_ends(prof: _Profiler, label: str, est: float, step: float,
                 bounds: tuple[float, float], target: float) -> tuple[float, float]:
    """Both ends of a profile interval (first step at most half the parameter's
    range), with a warning when the profile found a deviance below the optimum."""
    width = bounds[1] - bounds[0]
    step = min(step, width / 2) if np.isfinite(width) else step
    xtol = 1e-9 * max(1.0, abs(est))
    lo_v = prof.end(-1, target, step, bounds[0], xtol)
    hi_v = prof.end(+1, target, step, bounds[1], xtol)
    if prof.lower_dev < -1e-6:
        warnings.warn(f"profiling {label} found a deviance {-prof.lower_dev:.3g} below the ML "
                      "optimum: the fit had not converged", RuntimeWarning, stacklevel=3)
    return lo_v, hi_v


def _ml_deviance_sv(dev: ProfiledDeviance, rd: Any, sv: np.ndarray) -> float:
    """-2 log-likelihood with beta profiled at (sd/cor..., sigma); ``dev`` is an ML deviance."""
    sigma = float(sv[-1])
    if not sigma > 0:
        return np.inf
    theta = _theta_from_sdcor(rd, sv[:-1], sigma)
    if theta is None:
        return np.inf
    out = _varpar_deviance(dev, np.append(theta, sigma))
    return out if np.isfinite(out) else np.inf


def _ml_deviance_sv_structured(vf: _VarparFunctions, rd: Any, sv: np.ndarray) -> float:
    """As :func:`_ml_deviance_sv` with a residual structure: sv = (sd/cor..., phi..., sigma),
    phi the structure's natural parameters; ``vf`` holds ML functions."""
    kern = vf.kern
    sigma = float(sv[-1])
    if not sigma > 0:
        return np.inf
    ns = len(sv) - 1 - vf.nr
    nat = np.asarray(sv[ns:-1], float)
    lo, hi = kern.structure.natural_bounds(kern.info)
    if np.any(nat <= lo) or np.any(nat >= hi):
        return np.inf
    theta = _theta_from_sdcor(rd, sv[:ns], sigma)
    if theta is None:
        return np.inf
    try:
        with np.errstate(all="ignore"):
            u = kern.structure.to_free(nat, kern.info)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return np.inf
    out = vf.deviance(np.concatenate([theta, u, [sigma]]))
    return out if np.isfinite(out) else np.inf


def _reduced_stats(stats_: SufficientStats, k: int, value: float) -> SufficientStats:
    """Sufficient statistics with beta_k fixed at ``value`` (x_k moved to an offset)."""
    p = stats_.k_fe
    # [X y] T = [X without x_k, y - value x_k]
    T = np.zeros((p + 1, p))
    T[:p, :p - 1] = np.delete(np.eye(p), k, axis=1)
    T[p, p - 1] = 1.0
    T[k, p - 1] = -value
    ZtW = np.einsum("qrm,rs->qsm", stats_.ZtW, T)
    WtW = T.T @ stats_.WtW @ T
    return SufficientStats(ZtZ=stats_.ZtZ, ZtW=ZtW, WtW=WtW, nobs=stats_.nobs, k_fe=p - 1)


def _select(names: pd.DataFrame, which: Any) -> list[int]:
    if which is None:
        return list(range(len(names)))
    if isinstance(which, str):
        if which == "theta_":
            return [i for i, k in enumerate(names["kind"]) if k != "beta"]
        if which == "beta_":
            return [i for i, k in enumerate(names["kind"]) if k == "beta"]
        which = [which]
    out = []
    labels = list(names.index)
    lme4 = list(names["lme4"])
    for w in which:
        if isinstance(w, (int, np.integer)):
            if not 0 <= w < len(labels):
                raise IndexError(f"parameter position {w} is out of range: there are "
                                 f"{len(labels)} parameters {labels}")
            out.append(int(w))
        elif w in labels:
            out.append(labels.index(w))
        elif w in lme4:
            out.append(lme4.index(w))
        else:
            raise KeyError(f"unknown parameter {w!r}; choose from {labels} or lme4's {lme4}, "
                           "or 'theta_' / 'beta_'")
    return out


def _perc_labels(alpha: float) -> tuple[str, str]:
    a = alpha / 2

    def fmt(x: float) -> str:
        return f"{100 * x:.3g} %"
    return fmt(a), fmt(1 - a)


def conf_int_profile(results: Any, alpha: float = 0.05, *, which: Any = None) -> pd.DataFrame:
    """Profile-likelihood confidence intervals (lme4's ``confint(method = "profile")``).

    Parameters
    ----------
    results : HLMResults
        An ML or REML fit.  As in lme4, the profiles are of the ML
        deviance: a REML fit is refitted by ML first.
    alpha : float
        1 - confidence level.
    which : None, str or sequence
        Parameters to profile: None (all), ``"theta_"`` (the random-effect
        SDs and correlations and sigma), ``"beta_"`` (the fixed effects), or
        a list of labels (readable or lme4 names, see
        :func:`profile_parameter_names`) or positions.

    Returns
    -------
    DataFrame
        Index: readable labels (``sd(Intercept|school)``,
        ``cor(Intercept,ses|school)``, ``sd(ses|school)``, ``sigma``, then the
        fixed effects).  Columns: the limits, named as lme4 (``"2.5 %"``,
        ``"97.5 %"``), and ``lme4`` with lme4's row names (``.sig01``,
        ``.sig02``, ``.sig03``, ``.sigma``, ``(Intercept)``, ...).

    Notes
    -----
    For a parameter phi (an SD or correlation of the random effects, sigma,
    or a fixed effect) the profile deviance is

        D_phi(v) = min { D(psi) : phi(psi) = v },

    the ML deviance -2 log L minimised over all the other parameters, and
    zeta(v) = sign(v - phi_hat) sqrt(D_phi(v) - D(psi_hat)).  The interval
    ends solve zeta(v) = -/+ z_{1 - alpha/2}, i.e. the deviance rises by the
    chi^2_1(1 - alpha) quantile; they are found by bracketing and Brent's
    method (lme4 interpolates a spline through a grid of zeta values
    instead, so expect agreement to about 1e-4 relative).

    * Variance parameters: D(sd/cor..., sigma) has beta profiled in closed
      form (the GLS estimate at theta); the remaining sd/cor/sigma are
      re-optimised by BOBYQA (bounds sd >= 0, |cor| <= 1) from the nearest
      profiled point.
    * Fixed effect beta_k: x_k beta_k is moved to an offset, so that the
      profiled deviance of the reduced model (the other betas and sigma^2 in
      closed form) is minimised over theta only; its sufficient statistics
      are a linear transform of the full model's.

    When the profile does not reach the cut-off before a bound (0 for an SD,
    -1 or 1 for a correlation) the bound is reported, as lme4 does.

    With a residual structure the structure's parameters (natural scale:
    Phi, Rho, correlations, SD ratios) are profiled too, between the random-
    effect parameters and sigma; the deviance is the whitened one plus
    log|R|, every other parameter (including the structure's) is re-optimised
    at each point, and a structure parameter's range is its natural one
    (e.g. (-1, 1) for Phi, (0, inf) for an SD ratio).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    res = _unwrap(results, "conf_int_profile()", structured=True)
    model = res.model
    rd = model.re_design
    kern = getattr(model, "_residual_kernel", None)
    names = profile_parameter_names(model)
    sel = _select(names, which)
    target = float(stats.norm.ppf(1 - alpha / 2))
    p = model.k_fe
    kinds = list(names["kind"])
    lo_name, hi_name = _perc_labels(alpha)
    if kern is None:
        dev = model.deviance_function(reml=False)
        # the ML optimum, polished with tight tolerances
        theta0 = np.asarray(res.fit_result.theta, float)
        if res.reml:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theta0 = np.asarray(model.fit(reml=False, compute_vcomp_cov=False).theta, float)
        rec = minimize_bobyqa(dev, theta0, rd.theta_lower, ftol_abs=1e-12, xtol_abs=1e-10,
                              initial_step=0.05)
        theta_hat = rec.end if rec.fun_end <= dev(theta0) else theta0
        base = float(dev(theta_hat))
        t_hat = dev.terms(theta_hat)
        nat_hat = np.zeros(0)

        def dev_sv(sv: np.ndarray) -> float:
            return _ml_deviance_sv(dev, rd, sv)
    else:
        vf = _VarparFunctions(model, reml=False)
        nt = rd.n_theta
        f_ml = kern.objective(nt, reml=False)
        lower_x = np.concatenate([rd.theta_lower, kern.free_lower])
        upper_x = np.concatenate([np.full(nt, np.inf), kern.free_upper])
        ml = res
        if res.reml:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ml = _unwrap(model.fit(reml=False, compute_vcomp_cov=False),
                             structured=True)
        x0 = np.concatenate([ml.fit_result.theta, ml.fit_result.residual_free])
        rec = minimize_bobyqa(f_ml, x0, lower_x, upper_x, ftol_abs=1e-12, xtol_abs=1e-10,
                              initial_step=0.05)
        x_hat = rec.end if rec.fun_end <= f_ml(x0) else x0
        theta_hat, u_hat = x_hat[:nt], x_hat[nt:]
        base = float(f_ml(x_hat))
        dv = vf.deviance_fn(u_hat)
        dev = dv[0]
        t_hat = dev.terms(theta_hat)
        nat_hat = kern.natural(u_hat)

        def dev_sv(sv: np.ndarray) -> float:
            return _ml_deviance_sv_structured(vf, rd, sv)
    if t_hat is None:
        raise RuntimeError("the ML deviance is not defined at the ML estimates")
    sigma_hat = math.sqrt(dev.scale(t_hat))
    beta_hat = t_hat.beta
    sv_hat = np.concatenate([_sdcor_from_theta(rd, theta_hat, sigma_hat), nat_hat,
                             [sigma_hat]])
    n_vp = len(sv_hat)

    # approximate standard errors (for the first steps only)
    RXi = np.linalg.inv(t_hat.R[:p, :p])
    se_beta = sigma_hat * np.sqrt(np.sum(RXi ** 2, axis=0))
    se_sv = np.full(n_vp, np.nan)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            H = hessian_richardson(dev_sv, sv_hat, d=0.01)
            cov = 2.0 * np.linalg.inv(H)
            se_sv = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    except (np.linalg.LinAlgError, ValueError):
        pass

    kinds_vp = np.array(kinds[:n_vp])
    lower = np.where(np.isin(kinds_vp, ("sd", "sigma")), 0.0, -1.0)
    upper = np.where(np.isin(kinds_vp, ("sd", "sigma")), np.inf, 1.0)
    bounded = kinds_vp == "cor"
    if kern is not None:
        # the structure's natural range (open): nudged inside, where the deviance is finite
        nlo, nhi = kern.structure.natural_bounds(kern.info)
        span = np.where(np.isfinite(nhi - nlo), nhi - nlo, 1.0)
        res_ix = np.flatnonzero(kinds_vp == "residual")
        lower[res_ix] = nlo + 1e-9 * span
        upper[res_ix] = np.where(np.isfinite(nhi), nhi - 1e-9 * span, np.inf)
        bounded[res_ix] = np.isfinite(nhi)
    scale_sv = np.where(bounded, 1.0, np.maximum(np.abs(sv_hat), 1e-3 * sigma_hat))

    def vp_fun(w: int) -> Callable[[float, np.ndarray], tuple[float, np.ndarray]]:
        others = [i for i in range(n_vp) if i != w]
        lo = lower[others] / scale_sv[others]
        hi = upper[others] / scale_sv[others]
        lo = np.where(np.array(kinds)[others] == "sigma", 1e-6, lo)

        def fun(v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
            def obj(u: np.ndarray) -> float:
                sv = np.empty(n_vp)
                sv[w] = v
                sv[others] = u * scale_sv[others]
                return dev_sv(sv)
            x0 = np.clip(start, lo, hi)
            r = minimize_bobyqa(obj, x0, lo, hi, ftol_abs=1e-11, xtol_abs=1e-9,
                                initial_step=0.05)
            return r.fun_end, r.end
        return fun

    def fe_fun(k: int) -> Callable[[float, np.ndarray], tuple[float, np.ndarray]]:
        if kern is not None:
            def fun_s(v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
                def obj(x: np.ndarray) -> float:
                    st = vf.stats(x[nt:])
                    if st is None:
                        return np.inf
                    dk = ProfiledDeviance(_reduced_stats(st[0], k, v), kern.lambda_,
                                          reml=False)
                    out = dk(x[:nt]) + st[1]
                    return out if np.isfinite(out) else np.inf
                r = minimize_bobyqa(obj, np.clip(start, lower_x, upper_x), lower_x, upper_x,
                                    ftol_abs=1e-11, xtol_abs=1e-9, initial_step=0.05)
                return r.fun_end, r.end
            return fun_s

        def fun(v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
            dk = ProfiledDeviance(_reduced_stats(model._stats, k, v), rd.lambda_, reml=False,
                                  theta_index=rd.lambda_index)
            r = minimize_bobyqa(dk, np.maximum(start, rd.theta_lower), rd.theta_lower,
                                ftol_abs=1e-11, xtol_abs=1e-9, initial_step=0.05)
            return r.fun_end, r.end
        return fun

    rows = {}
    for i in sel:
        label = names.index[i]
        if i < n_vp:
            others = [j for j in range(n_vp) if j != i]
            prof = _Profiler(vp_fun(i), float(sv_hat[i]), sv_hat[others] / scale_sv[others], base)
            est = float(sv_hat[i])
            step = se_sv[i] if np.isfinite(se_sv[i]) and se_sv[i] > 0 else \
                0.1 * max(abs(est), 0.1 * sigma_hat if kinds[i] != "cor" else 1.0)
            bounds = (lower[i], upper[i])
        else:
            k = i - n_vp
            start = theta_hat if kern is None else x_hat
            prof = _Profiler(fe_fun(k), float(beta_hat[k]), start, base)
            est = float(beta_hat[k])
            step = float(se_beta[k])
            bounds = (-np.inf, np.inf)
        lo_v, hi_v = profile_ends(prof, label, est, step * target, bounds, target)
        rows[label] = (lo_v, hi_v, names["lme4"].iloc[i])
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[lo_name, hi_name, "lme4"])
    out[[lo_name, hi_name]] = out[[lo_name, hi_name]].astype(float)
    return out


# =====================================================================
# parametric bootstrap
# =====================================================================

@dataclass(frozen=True)
class BootstrapResult:
    """Replicates of a parametric bootstrap.

    Attributes
    ----------
    replicates : DataFrame, shape (n, k)
        One row per replicate (NaN for failed refits); columns: the fixed
        effects, the random-effect SDs and correlations and ``sigma``
        (labels of :func:`profile_parameter_names`), then the variance
        components ``Var(...)``/``Cov(...)`` (results.params' names).
    estimates : Series
        The same quantities at the original fit.
    n_failed : int
        Refits that raised or gave a non-finite deviance.
    n_nonconverged : int
        Refits whose optimiser reported non-convergence (kept).
    alpha : float
        Default 1 - level of :meth:`conf_int`.
    seed : int or None
    reml : bool
    """

    replicates: pd.DataFrame
    estimates: pd.Series
    n_failed: int
    n_nonconverged: int = 0
    alpha: float = 0.05
    seed: int | None = None
    reml: bool = True

    @property
    def n(self) -> int:
        return len(self.replicates)

    @property
    def bse(self) -> pd.Series:
        """Bootstrap standard errors (SD of the successful replicates)."""
        return self.replicates.std(ddof=1).rename("bse")

    def conf_int(self, alpha: float | None = None) -> pd.DataFrame:
        """Percentile intervals (lme4's ``confint(method = "boot", boot.type = "perc")``).

        Quantiles of the successful replicates by linear interpolation
        (``numpy.quantile``'s default).
        """
        a = self.alpha if alpha is None else alpha
        if not 0 < a < 1:
            raise ValueError(f"alpha must be in (0, 1), got {a}")
        lo, hi = _perc_labels(a)
        q = self.replicates.quantile([a / 2, 1 - a / 2]).T
        q.columns = [lo, hi]
        return q

    def summary(self) -> pd.DataFrame:
        """Estimate, bootstrap bias, SE and percentile interval per parameter."""
        ci = self.conf_int()
        return pd.concat([self.estimates.rename("estimate"),
                          (self.replicates.mean() - self.estimates).rename("bias"),
                          self.bse, ci], axis=1)

    def __repr__(self) -> str:
        return (f"BootstrapResult(n={self.n}, n_failed={self.n_failed}, "
                f"method={'REML' if self.reml else 'ML'}, seed={self.seed})")


class _Progress:
    """tqdm when installed, else a plain counter on stderr (never required)."""

    def __init__(self, total: int, enabled: bool, desc: str = "bootstrap"):
        self.total, self.enabled, self.desc = total, enabled, desc
        self.count = 0
        self._bar = None
        self._every = max(1, total // 100)
        if enabled:
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=total, desc=desc)
            except ImportError:
                self._bar = None

    def update(self) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
        elif self.count % self._every == 0 or self.count == self.total:
            sys.stderr.write(f"\r{self.desc}: {self.count}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _param_row(rd: Any, theta: np.ndarray, beta: np.ndarray, scale: float,
               nat: np.ndarray | None = None) -> np.ndarray:
    sigma = math.sqrt(scale)
    cov = rd.cov_re(theta, scale)
    r, c = rd.vcomp_index()
    nat_ = np.zeros(0) if nat is None else np.asarray(nat, float)
    return np.concatenate([beta, _sdcor_from_theta(rd, theta, sigma), nat_, [sigma], cov[r, c]])


def bootstrap(results: Any, n: int, *, seed: int | None = None, progress: bool = True,
              alpha: float = 0.05, chunk: int = 32) -> BootstrapResult:
    """Parametric bootstrap of an HLM fit (lme4's ``bootMer``, ``use.u = FALSE``).

    Parameters
    ----------
    results : HLMResults
        The fit to resample from; refits use the same criterion (ML/REML).
    n : int
        Number of replicates.
    seed : int, optional
        Seed of :func:`numpy.random.default_rng`; the same seed gives the
        same replicates (and the first k replicates of a run with n > k).
    progress : bool
        Show a progress bar (tqdm if installed, else a counter on stderr).
    alpha : float
        Default 1 - level of :meth:`BootstrapResult.conf_int`.
    chunk : int
        Replicates whose cross products are formed together (independent
        errors; with a residual structure each replicate has its own kernel).

    Returns
    -------
    BootstrapResult

    Notes
    -----
    Each replicate draws u_j ~ N(0, I_q) and e ~ N(0, I_n) and sets

        y* = X beta_hat + Z_j (sigma_hat Lambda_hat u_j) + sigma_hat e,

    so b*_j ~ N(0, Psi_hat) (also for a singular Psi_hat).  Only the
    response-dependent sufficient statistics Z_j'y*, X'y* and y*'y* change
    between replicates (Z_j'Z_j, Z_j'X_j and X'X are reused): they are
    formed for a chunk of replicates at once, and each replicate's profiled
    deviance is minimised by BOBYQA from theta_hat.

    With a residual structure e_j ~ N(0, sigma^2 R_j(phi)): each replicate
    draws u_j ~ N(0, I_q) and then z_j ~ N(0, I_k) for every group (k the
    largest group size; the draws beyond a group's n_j are unused), and sets
    e_j = L_j z_j with L_j the Cholesky factor of sigma_hat^2 R_j(phi_hat)
    (rows in time/position order).  The whitened statistics depend on phi,
    so each replicate gets the kernel of its own response
    (:meth:`sm_hlm.whitening.ResidualKernel.with_endog`) and (theta, u) are
    refitted jointly by BOBYQA from the estimates, as ``fit()`` does.  The
    replicates then also hold the structure's parameters (natural scale).
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of replicates, got {n}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of replicates, got {chunk}")
    res = _unwrap(results, "bootstrap()", structured=True)
    model = res.model
    fit = res.fit_result
    rd = model.re_design
    reml = bool(fit.reml)
    rng = np.random.default_rng(seed)
    if getattr(model, "_residual_kernel", None) is not None:
        return _bootstrap_structured(res, n, rng, progress=progress, alpha=alpha, seed=seed)
    st = model._stats
    p, q, m = model.k_fe, rd.q, model.n_groups
    order = model._order
    X = model.exog[order]
    Z = model.exog_re[order]
    codes = model.group_codes[order]
    starts = model._starts
    nobs = X.shape[0]
    sigma = math.sqrt(fit.scale)
    lam = rd.lambda_(np.asarray(fit.theta, float))
    mu = X @ np.asarray(fit.fe_params, float)
    theta0 = np.asarray(fit.theta, float)
    names = profile_parameter_names(model)
    n_vp = rd.n_theta + 1
    columns = (list(model.exog_names) + list(names.index[:n_vp]) + rd.vcomp_names())
    out = np.full((n, len(columns)), np.nan)
    n_failed = 0
    n_nonconv = 0
    bar = _Progress(n, progress)
    try:
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            # always `chunk` columns (zeros past the end), so that replicate i's cross
            # products come out bit-identical whatever n is
            Y = np.zeros((nobs, chunk))
            for b in range(c1 - c0):
                u = rng.standard_normal((m, q))
                e = rng.standard_normal(nobs)
                bj = sigma * (u @ lam.T)                         # (m, q)
                Y[:, b] = mu + np.einsum("ij,ij->i", Z, bj[codes]) + sigma * e
            ZtY = group_crossprod(Z, Y, starts) if q else np.zeros((0, chunk, m))
            XtY = X.T @ Y
            YtY = np.einsum("ib,ib->b", Y, Y)
            for b in range(c1 - c0):
                ZtW = st.ZtW.copy()
                ZtW[:, p, :] = ZtY[:, b, :]
                WtW = st.WtW.copy()
                WtW[:p, p] = WtW[p, :p] = XtY[:, b]
                WtW[p, p] = YtY[b]
                stats_b = SufficientStats(ZtZ=st.ZtZ, ZtW=ZtW, WtW=WtW, nobs=st.nobs, k_fe=p)
                try:
                    dev_b = ProfiledDeviance(stats_b, rd.lambda_, reml=reml,
                                             theta_index=rd.lambda_index)
                    rec = minimize_deviance(dev_b, rd.theta_lower, start=theta0,
                                            identity=rd.theta_start())
                    t = dev_b.terms(rec.end)
                    if t is None or not np.isfinite(rec.fun_end):
                        raise FloatingPointError("deviance not finite at the refit")
                    out[c0 + b] = _param_row(rd, rec.end, t.beta, dev_b.scale(t))
                    n_nonconv += int(not rec.converged)
                except (FloatingPointError, np.linalg.LinAlgError, ValueError, RuntimeError):
                    n_failed += 1
                bar.update()
    finally:
        bar.close()
    est = pd.Series(_param_row(rd, theta0, np.asarray(fit.fe_params, float), fit.scale),
                    index=columns, name="estimate")
    return BootstrapResult(replicates=pd.DataFrame(out, columns=columns), estimates=est,
                           n_failed=n_failed, n_nonconverged=n_nonconv, alpha=alpha, seed=seed,
                           reml=reml)


def _bootstrap_structured(res: "HLMResults", n: int, rng: np.random.Generator, *,
                          progress: bool, alpha: float, seed: int | None) -> BootstrapResult:
    """The parametric bootstrap of a fit with a residual structure (see :func:`bootstrap`)."""
    from .residual_results import padded_residual_cov

    model = res.model
    fit = res.fit_result
    rd = model.re_design
    kern = model._residual_kernel
    reml = bool(fit.reml)
    nt, q, m = rd.n_theta, rd.q, model.n_groups
    theta0 = np.asarray(fit.theta, float)
    u0 = np.asarray(fit.residual_free, float)
    x0 = np.concatenate([theta0, u0])
    lower = np.concatenate([rd.theta_lower, kern.free_lower])
    upper = np.concatenate([np.full(nt, np.inf), kern.free_upper])
    sigma = math.sqrt(fit.scale)
    lam = rd.lambda_(theta0)
    mu = model.exog @ np.asarray(fit.fe_params, float)                  # caller's order
    Z, codes = model.exog_re, model.group_codes
    rows, inside, S = padded_residual_cov(res)
    Lr = np.linalg.cholesky(S)                                           # (m, k, k)
    k = rows.shape[1]
    names = profile_parameter_names(model)
    n_vp = int((names["kind"] != "beta").sum())
    columns = list(model.exog_names) + list(names.index[:n_vp]) + rd.vcomp_names()
    out = np.full((n, len(columns)), np.nan)
    n_failed = n_nonconv = 0
    bar = _Progress(n, progress)
    try:
        for b in range(n):
            ub = rng.standard_normal((m, q))
            zb = rng.standard_normal((m, k))
            y = mu.copy()
            if q:
                y += np.einsum("ij,ij->i", Z, (sigma * (ub @ lam.T))[codes])
            e = np.einsum("mab,mb->ma", Lr, zb)
            y[rows[inside]] += e[inside]
            try:
                kb = kern.with_endog(y)
                rec = minimize_bobyqa(kb.objective(nt, reml=reml), x0, lower, upper,
                                      ftol_abs=1e-12, xtol_abs=1e-8)
                dev_b, _ = kb.deviance(rec.end[nt:], reml=reml)
                t = dev_b.terms(rec.end[:nt])
                if t is None or not np.isfinite(rec.fun_end):
                    raise FloatingPointError("deviance not finite at the refit")
                out[b] = _param_row(rd, rec.end[:nt], t.beta, dev_b.scale(t),
                                    kern.natural(rec.end[nt:]))
                n_nonconv += int(not rec.converged)
            except (FloatingPointError, np.linalg.LinAlgError, ValueError, RuntimeError):
                n_failed += 1
            bar.update()
    finally:
        bar.close()
    est = pd.Series(_param_row(rd, theta0, np.asarray(fit.fe_params, float), fit.scale,
                               kern.natural(u0)), index=columns, name="estimate")
    return BootstrapResult(replicates=pd.DataFrame(out, columns=columns), estimates=est,
                           n_failed=n_failed, n_nonconverged=n_nonconv, alpha=alpha, seed=seed,
                           reml=reml)


# =====================================================================
# cluster-robust covariance (clubSandwich's vcovCR for lmerMod)
# =====================================================================

def _sym_power(S: np.ndarray, power: float, tol: float) -> np.ndarray:
    """S^power for a stack (m, r, r) of symmetric PSD matrices (eigenvalues <= tol -> 0)."""
    w, U = np.linalg.eigh(S)
    ok = w > tol
    wp = np.where(ok, np.where(ok, w, 1.0) ** power, 0.0)
    return (U * wp[:, None, :]) @ np.swapaxes(U, 1, 2)


def _cluster_components(res: "HLMResults", kind: str) -> np.ndarray:
    """Per-group score contributions c_j = X_j' W_j A_j e_j, shape (m, p)."""
    PX, WS, A, Qe, _ = _cluster_pieces(res, kind)
    v = Qe if A is None else np.einsum("mab,mb->ma", A, Qe)
    return np.einsum("mak,mab,mb->mk", PX, WS, v)


def _cluster_pieces(res: "HLMResults", kind: str) -> tuple[np.ndarray, np.ndarray,
                                                          np.ndarray | None, np.ndarray,
                                                          np.ndarray]:
    """Per-group pieces in a basis Q_j of the group's rows (see cov_robust).

    Returns Q_j'X_j (m, r0, p), Q_j'W_j Q_j, the CR2 adjustment Q_j'A_j Q_j
    (None for CR0), Q_j'e_j (m, r0) and Q_j'V_j Q_j (m, r0, r0).  Q_j is an
    orthonormal basis of span[Z_j X_j] for independent errors, the
    (padded) identity with a residual structure.
    """
    if getattr(res.model, "_residual_kernel", None) is not None:
        PX, Qe, VS = _structured_basis(res)
    else:
        PX, Qe, VS = _span_basis(res)
    WS = np.linalg.inv(VS)
    if kind == "CR2":
        M = np.asarray(res.fit_result.cov_fe, float) / res.fit_result.scale  # relative
        Vh = _sym_power(VS, 0.5, 0.0)
        HS = PX @ M @ np.swapaxes(PX, 1, 2)
        B = Vh @ (VS - HS) @ Vh
        B = 0.5 * (B + np.swapaxes(B, 1, 2))
        A = Vh @ _sym_power(B, -0.5, _CS_EIG_TOL) @ Vh
    else:
        A = None
    return PX, WS, A, Qe, VS


def _span_basis(res: "HLMResults") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q_j'X_j, Q_j'e_j and Q_j'V_j Q_j in an orthonormal basis Q_j of span[Z_j X_j]."""
    model = res.model
    fit = res.fit_result
    rd = model.re_design
    order = model._order
    X = model.exog[order]
    Z = model.exog_re[order]
    y = model.endog[order]
    p, q = X.shape[1], Z.shape[1]
    F = np.column_stack([Z, X])
    r0 = q + p
    G = np.moveaxis(group_crossprod(F, np.column_stack([F, y]), model._starts), -1, 0)
    FtF = G[:, :, :r0]                                        # (m, r0, r0)
    beta = np.asarray(fit.fe_params, float)
    Fte = G[:, :, r0] - FtF[:, :, q:] @ beta                 # F_j' e_j, (m, r0)
    # orthonormal basis Q_j of span(F_j) through the scaled Gram matrix (rank-revealing)
    dg = np.sqrt(np.einsum("mii->mi", FtF))
    dg = np.where(dg > 0, dg, 1.0)
    Gs = FtF / dg[:, :, None] / dg[:, None, :]
    w, U = np.linalg.eigh(Gs)
    keep = w > 1e-10 * w.max(axis=1, keepdims=True)
    winv = np.where(keep, 1.0 / np.sqrt(np.where(keep, w, 1.0)), 0.0)
    # Q_j = F_j D^-1 U w^-1/2 (dropped columns zero); coordinates of F_j and e_j
    T = (U / dg[:, :, None]) * winv[:, None, :]             # (m, r0, r0): F D^-1 U w^-1/2 = F T
    P = np.swapaxes(T, 1, 2) @ FtF                           # Q'F, (m, r0, r0)
    Qe = np.einsum("mab,ma->mb", T, Fte)                     # Q'e
    PZ, PX = P[:, :, :q], P[:, :, q:]
    lam = rd.lambda_(np.asarray(fit.theta, float))
    PZL = PZ @ lam
    VS = np.eye(r0) + PZL @ np.swapaxes(PZL, 1, 2)           # Q'V_j Q (identity off span)
    return PX, Qe, VS


def _structured_basis(res: "HLMResults") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X_j, e_j and V_j / sigma^2 = R_j + Z_j Lambda Lambda' Z_j', padded to the largest group.

    The padding has zero rows of X_j and e_j and the identity in V_j, so it
    adds nothing to any sum over the groups.
    """
    from .residual_results import padded_residual_cov

    model = res.model
    fit = res.fit_result
    rows, inside, R = padded_residual_cov(res, scale=1.0)
    mask = inside[:, :, None]
    PX = np.where(mask, model.exog[rows], 0.0)                                   # (m, k, p)
    e = model.endog - model.exog @ np.asarray(fit.fe_params, float)
    Qe = np.where(inside, e[rows], 0.0)                                          # (m, k)
    VS = R
    if model.k_re:
        ZL = np.where(mask, model.exog_re[rows], 0.0) @ model.re_design.lambda_(
            np.asarray(fit.theta, float))
        VS = VS + ZL @ np.swapaxes(ZL, 1, 2)
    return PX, Qe, VS


def cov_robust(results: Any, kind: str = "CR2", *, full: bool = False) -> pd.DataFrame:
    """Cluster-robust covariance of the fixed effects, clusters = groups (clubSandwich).

    Parameters
    ----------
    results : HLMResults
    kind : {"CR2", "CR1", "CR1S", "CR0"} or statsmodels' "cluster" (= CR1S)
        Small-sample adjustment: CR2 (bias-reduced linearisation, Bell &
        McCaffrey 2002; Pustejovsky & Tipton 2018), CR1 (CR0 times
        m / (m - 1)) or CR0 (none).
    full : bool
        Return the covariance of all of ``results.params`` (fixed effects
        then variance components): the robust block for the fixed effects,
        the model-based block of ``cov_params()`` for the variance
        components, zero between them.  This is the shape statsmodels'
        ``t_test``/``wald_test`` expect for ``cov_p``:
        ``results.t_test("ses = 0", cov_p=cov_robust(results, full=True))``.

    Returns
    -------
    DataFrame
        p x p (or full) labelled covariance matrix, as ``clubSandwich::vcovCR(
        fit, cluster = group, type = kind)`` for an ``lmerMod`` fit.

    Notes
    -----
    With the working model's V_j = I + Z_j Lambda Lambda' Z_j' (relative to
    sigma^2; the scale cancels), W_j = V_j^-1, M = (sum_j X_j'W_j X_j)^-1
    and marginal residuals e_j = y_j - X_j beta_hat,

        V^CR = M [sum_j X_j'W_j A_j e_j e_j'A_j'W_j X_j] M.

    CR0 has A_j = I.  CR2 takes clubSandwich's default target Phi_j = V_j
    (``inverse_var = TRUE``) and, with any D_j such that D_j'D_j = V_j,

        A_j = D_j' B_j^{-1/2} D_j,   B_j = D_j (V_j - X_j M X_j') D_j',

    B^{-1/2} the symmetric (pseudo-) inverse square root (eigenvalues below
    1e-12 dropped, as clubSandwich).  A_j does not depend on the choice of
    D_j; we use D_j = V_j^{1/2}.

    No n_j x n_j matrix is formed: V_j, X_j M X_j' and hence B_j and A_j act
    as the identity (or zero) on the orthogonal complement of
    S_j = span[Z_j X_j], and map S_j into itself.  With an orthonormal basis
    Q_j of S_j (from the eigen-decomposition of the scaled Gram matrix
    [Z_j X_j]'[Z_j X_j], dropping eigenvalues below 1e-10 of the largest,
    so group-level columns collinear with Z_j are handled), all of them are
    (q + p) x (q + p) matrices Q_j'(.)Q_j, and

        X_j'W_j A_j e_j = (Q_j'X_j)' (Q_j'W_j Q_j) (Q_j'A_j Q_j) Q_j'e_j.

    Everything is batched over the groups from per-group cross products of
    [Z X y].

    With a residual structure the working model is the fitted one,
    V_j = Z_j Lambda Lambda' Z_j' + R_j (relative to sigma^2; clubSandwich's
    target and weights for an ``lme`` or ``gls`` fit with correlation and
    variance structures).  V_j is then not the identity off span[Z_j X_j],
    and since A_j is not invariant to whitening by R_j, the same formulas
    are evaluated on each group's n_j x n_j matrices, padded to the largest
    group and batched over the groups (m k^2 numbers for groups of at most
    k rows).
    """
    key = robust_kind(kind)
    res = _unwrap(results, "cov_robust()", structured=True)
    model = res.model
    m = model.n_groups
    if m < 2:
        raise ValueError("cluster-robust covariance needs at least two groups")
    comps = _cluster_components(res, "CR2" if key == "CR2" else "CR0")
    M = np.asarray(res.fit_result.cov_fe, float) / res.fit_result.scale
    meat = comps.T @ comps
    cov = M @ meat @ M
    cov = cov * cluster_factor(key, m, int(model.nobs), model.k_fe)
    cov = 0.5 * (cov + cov.T)
    names = list(model.exog_names)
    if not full:
        return pd.DataFrame(cov, index=names, columns=names)
    allnames = list(model.data.param_names)
    p = len(names)
    fullcov = np.array(res.cov_params(), dtype=float, copy=True)
    fullcov[:p, :] = 0.0
    fullcov[:, :p] = 0.0
    fullcov[:p, :p] = cov
    return pd.DataFrame(fullcov, index=allnames, columns=allnames)
