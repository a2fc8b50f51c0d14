"""Profile-likelihood confidence intervals of multilevel fits (lme4's
``confint(fit, method = "profile")``) for any number of grouping factors."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

from ..engine.blocked import BlockedDeviance
from ..engine.deviance import LOG2PI
from ..engine.optimizer import minimize_bobyqa
from ..inference import _perc_labels, _Profiler, _select, profile_ends

if TYPE_CHECKING:
    from .results import MultilevelResults

__all__ = ["profile_parameter_names", "conf_int_profile"]


def _terms_lme4_order(model: Any) -> list[int]:
    """Model terms in lme4's order (decreasing number of levels, as summary prints)."""
    pos = {t.factor: k for k, t in enumerate(model.re_terms)}
    return [pos[f] for f in model.factor_names]


def profile_parameter_names(model: Any) -> pd.DataFrame:
    """Labels of the profiled parameters: each term's SDs and correlations (block by
    block, lme4's ``.sig01``... order), ``sigma``, then the fixed effects.

    Returns a DataFrame indexed by readable labels with columns ``lme4`` (lme4's row
    name), ``kind`` ("sd", "cor", "sigma", "beta"), ``term`` and ``i``, ``j`` (the
    entry of the term's covariance).
    """
    rows, n = [], 0
    for k in _terms_lme4_order(model):
        t = model.re_terms[k]
        for i, j in t.theta_index():
            n += 1
            if i == j:
                rows.append((f"sd({t.names[i]}|{t.factor})", f".sig{n:02d}", "sd", k, i, j))
            else:
                rows.append((f"cor({t.names[j]},{t.names[i]}|{t.factor})", f".sig{n:02d}",
                             "cor", k, i, j))
    rows.append(("sigma", ".sigma", "sigma", -1, -1, -1))
    for name in model.exog_names:
        lme4 = ("(Intercept)" if name == "Intercept"
                else str(name).replace("[T.", "").replace("]", "").replace(" ** ", "^"))
        rows.append((str(name), lme4, "beta", -1, -1, -1))
    df = pd.DataFrame(rows, columns=["label", "lme4", "kind", "term", "i", "j"])
    return df.set_index("label")


def _theta_from_sv(model: Any, names: pd.DataFrame, sv: np.ndarray) -> np.ndarray | None:
    """theta (model order) from SDs, correlations and sigma; None outside the valid set."""
    sigma = float(sv[-1])
    if not sigma > 0:
        return None
    covs = {k: np.zeros((t.S, t.S)) for k, t in enumerate(model.re_terms)}
    sds = {k: np.zeros(t.S) for k, t in enumerate(model.re_terms)}
    vp = names[names["kind"].isin(["sd", "cor"])]
    for (kind, k, i, j), v in zip(vp[["kind", "term", "i", "j"]].itertuples(index=False), sv):
        if kind == "sd":
            if v < 0:
                return None
            sds[k][i] = v
        else:
            if not -1.0 <= v <= 1.0:
                return None
            covs[k][i, j] = covs[k][j, i] = v
    out = []
    for k, t in enumerate(model.re_terms):
        C = covs[k] + np.eye(t.S)
        psi = C * np.outer(sds[k], sds[k]) / sigma ** 2
        lam = np.zeros((t.S, t.S))
        o = 0
        for b in t.block_sizes:
            blk = psi[o:o + b, o:o + b]
            if np.all(np.diag(blk) > 0):
                try:
                    lam[o:o + b, o:o + b] = np.linalg.cholesky(blk)
                except np.linalg.LinAlgError:
                    return None
            elif b == 1:
                lam[o, o] = 0.0
            else:                       # a zero SD inside a correlated block: its row is 0
                keep = np.diag(blk) > 0
                sub = blk[np.ix_(keep, keep)]
                try:
                    L = np.linalg.cholesky(sub) if keep.any() else np.zeros((0, 0))
                except np.linalg.LinAlgError:
                    return None
                full = np.zeros((b, b))
                full[np.ix_(keep, keep)] = L
                lam[o:o + b, o:o + b] = full
            o += b
        out += [lam[i, j] for i, j in t.theta_index()]
    return np.asarray(out)


def _sv_from_theta(model: Any, names: pd.DataFrame, theta: np.ndarray, sigma: float
                   ) -> np.ndarray:
    lams = model.layout.lambdas(theta)
    out = []
    vp = names[names["kind"].isin(["sd", "cor"])]
    for kind, k, i, j in vp[["kind", "term", "i", "j"]].itertuples(index=False):
        psi = sigma ** 2 * lams[k] @ lams[k].T
        if kind == "sd":
            out.append(math.sqrt(max(psi[i, i], 0.0)))
        else:
            den = math.sqrt(psi[i, i] * psi[j, j])
            out.append(psi[i, j] / den if den > 0 else 0.0)
    return np.asarray(out + [sigma])


def conf_int_profile(results: "MultilevelResults", alpha: float = 0.05, *,
                     which: Any = None) -> pd.DataFrame:
    """Profile-likelihood intervals of the SDs, correlations, sigma and fixed effects.

    Parameters
    ----------
    results
        An ML or REML multilevel fit; as in lme4 the profiles are of the ML
        deviance (a REML fit is refitted by ML first).
    alpha
        1 - confidence level.
    which
        None (all), ``"theta_"`` (SDs, correlations, sigma), ``"beta_"`` (fixed
        effects), or a list of labels (readable or lme4's ``.sig01``...).

    Returns
    -------
    DataFrame
        Index: ``sd(Intercept|school)``, ``cor(Intercept,x|school)``, ...,
        ``sigma``, then the fixed effects; columns: the limits (``"2.5 %"``,
        ``"97.5 %"``) and ``lme4`` (lme4's row names).

    Notes
    -----
    The profile deviance of a parameter phi is the ML deviance minimised over
    every other parameter with phi held at v; the ends solve
    D_phi(v) - D_min = chi^2_1(1 - alpha) (bracketing and Brent's method).
    SDs, correlations and sigma: beta is profiled in closed form at
    (theta, sigma), -2 log L = n log(2 pi sigma^2) + log|L|^2 + r^2(theta) / sigma^2,
    the other SDs, correlations and sigma by BOBYQA.  A fixed effect beta_k
    = v: x_k beta_k becomes an offset and the reduced model's profiled
    deviance is minimised over theta (the symbolic analysis is shared along
    the profile).  A bound (0 for an SD, +-1 for a correlation) not reached by
    the cut-off is reported, as lme4 does.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    res = getattr(results, "_results", results)
    model = res.model
    names = profile_parameter_names(model)
    sel = _select(names, which)
    target = float(stats.norm.ppf(1 - alpha / 2))
    lo_name, hi_name = _perc_labels(alpha)
    ml = res
    if res.reml:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ml = model.fit(reml=False, compute_vcomp_cov=False)._results
    base_dev = model.deviance_function(reml=False)
    tscale = model._theta_scale()
    sy = model._working[5]
    n = int(model.nobs)

    def dev_theta_sigma(theta: np.ndarray, sigma: float) -> float:
        f = base_dev.factor(theta / tscale)
        if f is None:
            return np.inf
        return float(n * (LOG2PI + 2 * math.log(sigma)) + f.logdet_L
                     + sy * sy * f.pwrss / sigma ** 2)

    n_vp = int((names["kind"] != "beta").sum())

    def dev_sv(sv: np.ndarray) -> float:
        theta = _theta_from_sv(model, names, sv)
        return np.inf if theta is None else dev_theta_sigma(theta, float(sv[-1]))

    theta_hat = np.asarray(ml.theta, dtype=float)
    sigma_hat = math.sqrt(ml.scale)
    sv_hat = _sv_from_theta(model, names, theta_hat, sigma_hat)
    base = dev_sv(sv_hat)
    beta_hat = np.asarray(ml.fit_result.fe_params)
    se_beta = np.sqrt(np.diag(ml.fit_result.cov_fe))
    kinds = np.array(names["kind"])
    lower = np.where(kinds[:n_vp] == "cor", -1.0, 0.0)
    upper = np.where(kinds[:n_vp] == "cor", 1.0, np.inf)
    scale_sv = np.where(kinds[:n_vp] == "cor", 1.0, np.maximum(np.abs(sv_hat), 1e-3 * sigma_hat))

    def vp_fun(w: int) -> Callable[[float, np.ndarray], tuple[float, np.ndarray]]:
        others = [i for i in range(n_vp) if i != w]
        lo = np.where(kinds[others] == "sigma", 1e-6, lower[others] / scale_sv[others])
        hi = upper[others] / scale_sv[others]

        def fun(v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
            def obj(u: np.ndarray) -> float:
                sv = np.empty(n_vp)
                sv[w] = v
                sv[others] = u * scale_sv[others]
                return dev_sv(sv)
            if not others:
                return obj(np.zeros(0)), start
            r = minimize_bobyqa(obj, np.clip(start, lo, hi), lo, hi, ftol_abs=1e-11,
                                xtol_abs=1e-9, initial_step=0.05)
            return r.fun_end, r.end
        return fun

    def fe_fun(k: int) -> Callable[[float, np.ndarray], tuple[float, np.ndarray]]:
        X = model.exog
        keep = [c for c in range(X.shape[1]) if c != k]
        Xr = X[:, keep]
        reduced = BlockedDeviance(model.re_terms, Xr, model.endog, reml=False, nobs=n)
        lower_t = model.layout.lower

        def fun(v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
            dk = reduced.with_response(Xr, model.endog - v * X[:, k])
            r = minimize_bobyqa(dk, np.maximum(start, lower_t), lower_t, ftol_abs=1e-11,
                                xtol_abs=1e-9, initial_step=0.05)
            return r.fun_end, r.end
        return fun

    rows = {}
    for i in sel:
        label = names.index[i]
        if i < n_vp:
            others = [j for j in range(n_vp) if j != i]
            prof = _Profiler(vp_fun(i), float(sv_hat[i]), sv_hat[others] / scale_sv[others],
                             base)
            est = float(sv_hat[i])
            step = 0.2 * max(abs(est), 0.1 * sigma_hat if kinds[i] != "cor" else 1.0)
            bounds = (lower[i], upper[i])
        else:
            k = i - n_vp
            prof = _Profiler(fe_fun(k), float(beta_hat[k]), theta_hat, base)
            est = float(beta_hat[k])
            step = float(se_beta[k]) * target
            bounds = (-np.inf, np.inf)
        lo_v, hi_v = profile_ends(prof, label, est, step, bounds, target)
        rows[label] = (lo_v, hi_v, names["lme4"].iloc[i])
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[lo_name, hi_name, "lme4"])
    out[[lo_name, hi_name]] = out[[lo_name, hi_name]].astype(float)
    return out
