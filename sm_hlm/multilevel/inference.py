"""Inference for fits with several grouping factors (issue 8, item 3).

* :func:`satterthwaite`: t tests of the fixed effects with lmerTest's
  Satterthwaite df, for any number of nested or crossed factors.
* :func:`cov_robust` / :func:`coef_test_robust`: CR0/CR1/CR2 cluster-robust
  covariance of the fixed effects and t tests with Satterthwaite
  (Bell-McCaffrey) df, as clubSandwich's ``vcovCR`` / ``coef_test`` for an
  ``lmerMod`` fit; clusters are the outermost nested factor by default.

Notation: y = X beta + sum_k Z_k b_k + e, b_k[l] ~ N(0, sigma^2 Lambda_k
Lambda_k'), e ~ N(0, sigma^2 I); theta holds the free entries of the
Lambda_k in ``model.layout`` order (original units of X, y and Z_k).
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import solve_triangular

from ..engine.blocked import BlockedDeviance
from ..engine.deviance import LOG2PI
from ..engine.solution import factor_at
from ..engine.terms import parent_levels
from ..inference import _SatterthwaiteState, _satterthwaite_df, _sym_power, satterthwaite_state
from ..inference import _CS_EIG_TOL
from ..cluster_tests import _kind, _omega_terms
from ..inference_base import cluster_factor, refit_response

if TYPE_CHECKING:
    from .results import MultilevelResults

__all__ = ["satterthwaite", "cov_robust", "coef_test_robust"]


# =====================================================================
# Satterthwaite df (lmerTest)
# =====================================================================

class _Varpar:
    """Deviance and cov(beta) of a multilevel model in varpar = (theta, sigma).

    The blocked factor of the model's terms in original units; beta is
    profiled out (ML) or integrated out (REML).
    """

    def __init__(self, model: Any, reml: bool):
        self.reml = bool(reml)
        self.p = model.k_fe
        self.n = int(model.nobs)
        self.dev = BlockedDeviance(model.re_terms, model.exog, model.endog, reml=self.reml,
                                   nobs=self.n)

    def deviance(self, x: np.ndarray) -> float:
        sigma = float(x[-1])
        if not sigma > 0:
            return np.nan
        f = self.dev.factor(np.asarray(x[:-1], float))
        if f is None:
            return np.nan
        s2 = sigma * sigma
        out = f.logdet_L + f.pwrss / s2 + self.n * (LOG2PI + math.log(s2))
        if self.reml:
            out += f.logdet_RX - self.p * (LOG2PI + math.log(s2))
        return float(out)

    def cov_fe(self, x: np.ndarray) -> np.ndarray:
        p = self.p
        try:
            _, R, _ = factor_at(self.dev, np.asarray(x[:-1], float))
        except ValueError:
            return np.full((p, p), np.nan)
        RXi = solve_triangular(R[:p, :p], np.eye(p), lower=True)
        return float(x[-1]) ** 2 * (RXi.T @ RXi)


def _satterthwaite_state(res: "MultilevelResults") -> _SatterthwaiteState:
    cached = res.__dict__.get("_sm_hlm_satterthwaite")
    if cached is not None:
        return cached
    fit = res.fit_result
    vp = _Varpar(res.model, fit.reml)
    x0 = np.append(np.asarray(fit.theta, float), math.sqrt(fit.scale))
    names = tuple(res.model.layout.names) + ("sigma",)
    state = satterthwaite_state(vp.deviance, vp.cov_fe, x0, names, cov_fe=fit.cov_fe,
                                beta=fit.fe_params)
    res.__dict__["_sm_hlm_satterthwaite"] = state
    return state


def satterthwaite(results: "MultilevelResults") -> pd.DataFrame:
    """Fixed-effects table with Satterthwaite degrees of freedom (lmerTest).

    Returns
    -------
    DataFrame
        Index: fixed-effect names; columns ``Estimate``, ``Std. Error``,
        ``df``, ``t value``, ``Pr(>|t|)`` as ``summary(fit)$coefficients`` of
        an ``lmerTest::lmer`` fit.

    Notes
    -----
    As :func:`sm_hlm.inference.satterthwaite` with varpar = (theta, sigma),
    theta the free entries of every factor's Lambda_k: for the unit contrast
    L, df = 2 (L C L')^2 / (g' A g), C = sigma^2 (X'V^-1X)^-1,
    g = d(L C L')/d varpar and A = 2 H^+, H the Hessian of the deviance
    D(theta, sigma) (the REML criterion for REML fits).  D and C come from the
    blocked Cholesky factor of all factors at once
    (:class:`sm_hlm.engine.blocked.BlockedDeviance`), so nested and crossed
    factors are handled alike; H and the Jacobian of C are Richardson-
    extrapolated finite differences (numDeriv's scheme, as lmerTest).
    """
    res = getattr(results, "_results", results)
    state = _satterthwaite_state(res)
    p = len(state.beta)
    se = np.sqrt(np.diag(state.cov_fe))
    df = _satterthwaite_df(state, np.eye(p))[1]
    t = state.beta / se
    return pd.DataFrame({"Estimate": state.beta, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)},
                        index=pd.Index(list(res.model.exog_names)))


# =====================================================================
# cluster-robust covariance (clubSandwich)
# =====================================================================

def _cluster_codes(res: "MultilevelResults", cluster: Any) -> tuple[np.ndarray, str]:
    """Cluster code of each row and the cluster's name; checks the nesting."""
    model = res.model
    n = len(model.endog)
    if cluster is None:
        name = model.outermost_factor
        if name is None:
            raise ValueError(
                "the grouping factors are crossed, so there is no outermost factor to cluster "
                f"on: name the cluster with cluster= (one of the factors {model.factor_names} or "
                "a column of the data in which every factor is nested)")
        codes = model.factors[name].codes
    elif isinstance(cluster, str):
        name = cluster
        if cluster in model.factors:
            codes = model.factors[cluster].codes
        else:
            frame = getattr(model.data, "frame", None)
            if frame is None or cluster not in frame.columns:
                raise KeyError(f"cluster={cluster!r} is neither a grouping factor "
                               f"{model.factor_names} nor a column of the data")
            col = frame[cluster]
            idx = getattr(model, "row_index", None)
            col = col.loc[idx] if idx is not None else col
            if col.isna().any():
                raise ValueError(f"cluster column {cluster!r} has missing values in the "
                                 "fitted rows")
            codes = pd.factorize(col.to_numpy())[0]
    else:
        a = np.asarray(cluster)
        if a.shape != (n,):
            raise ValueError(f"cluster must be a factor name, a column name or an array of "
                             f"{n} labels, got shape {a.shape}")
        name = "cluster"
        codes = pd.factorize(a)[0]
        if np.any(codes < 0):
            raise ValueError("cluster labels contain missing values")
    codes = np.asarray(codes, dtype=np.intp)
    m = int(codes.max()) + 1
    if m < 2:
        raise ValueError(f"cluster-robust covariance needs at least two clusters; {name!r} "
                         "has one")
    for t in model.re_terms:
        if parent_levels(t.refs, codes, t.n_levels) is None:
            raise ValueError(
                f"the grouping factor {t.factor!r} is not nested in the cluster {name!r}: "
                "cluster-robust covariances (clubSandwich) need every random effect nested "
                "within the clusters; cluster on a factor that contains all the others")
    return codes, name


def _cluster_batches(res: "MultilevelResults", codes: np.ndarray, kind: str
                     ) -> list[tuple[np.ndarray, ...]]:
    """Per-cluster dense pieces, batched by cluster size.

    For each distinct size s: X_c (m_s, s, p), W_c = V_c^-1, the CR2
    adjustment A_c (None for CR0), e_c (m_s, s) and V_c (m_s, s, s), V_c
    relative to sigma^2.
    """
    model = res.model
    fit = res.fit_result
    X, y = model.exog, model.endog
    e = y - X @ np.asarray(fit.fe_params, float)
    M = np.asarray(fit.cov_fe, float) / fit.scale
    relcov = [np.asarray(c, float) / fit.scale for c in fit.cov_re]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for s in np.unique(sizes):
        cl = np.flatnonzero(sizes == s)
        rows = order[starts[cl][:, None] + np.arange(s)[None, :]]     # (m_s, s)
        Xc = X[rows]
        V = np.broadcast_to(np.eye(s), (len(cl), s, s)).copy()
        for t, P in zip(model.re_terms, relcov):
            z = t.z[rows]
            same = t.refs[rows][:, :, None] == t.refs[rows][:, None, :]
            V += np.where(same, z @ P @ np.swapaxes(z, 1, 2), 0.0)
        W = np.linalg.inv(V)
        A = None
        if kind == "CR2":
            Vh = _sym_power(V, 0.5, 0.0)
            Hc = Xc @ M @ np.swapaxes(Xc, 1, 2)
            B = Vh @ (V - Hc) @ Vh
            B = 0.5 * (B + np.swapaxes(B, 1, 2))
            A = Vh @ _sym_power(B, -0.5, _CS_EIG_TOL) @ Vh
        out.append((Xc, W, A, e[rows], V))
    return out


def cov_robust(results: "MultilevelResults", kind: str = "CR2", *, cluster: Any = None
               ) -> pd.DataFrame:
    """Cluster-robust covariance of the fixed effects (clubSandwich's ``vcovCR``).

    Parameters
    ----------
    results : MultilevelResults
    kind : {"CR2", "CR1", "CR0"}
    cluster : str or array_like, optional
        The clusters: a grouping factor of the model, a column of the data or
        one label per row.  Default: the outermost factor of a nested model;
        required for crossed factors.  Every grouping factor must be nested
        in the clusters.

    Returns
    -------
    DataFrame
        p x p labelled covariance, as ``vcovCR(fit, type = kind)`` for the
        ``lmerMod`` fit.

    Raises
    ------
    ValueError
        For crossed factors without ``cluster``, or a factor not nested in
        the clusters (clubSandwich's "non-nested random effects").

    Notes
    -----
    V_c = I + sum_k Z_kc Psi_k Z_kc' / sigma^2 is the working covariance of
    cluster c (the fitted one; block diagonal over clusters since every
    factor is nested in them), W_c = V_c^-1, M = (X'V^-1X)^-1,
    e_c = y_c - X_c beta, and

        V^CR = M [sum_c X_c'W_c A_c e_c e_c'A_c'W_c X_c] M,

    A_c = I (CR0, CR1 with the factor m/(m-1)) or, for CR2,
    A_c = V_c^{1/2} B_c^{-1/2} V_c^{1/2},
    B_c = V_c^{1/2}(V_c - X_c M X_c')V_c^{1/2} (eigenvalues below 1e-12
    dropped, as clubSandwich).  The n_c x n_c matrices are formed per
    cluster, batched over clusters of equal size.
    """
    res = getattr(results, "_results", results)
    key = _kind(kind)
    codes, _ = _cluster_codes(res, cluster)
    m = int(codes.max()) + 1
    comps = []
    for Xc, W, A, ec, _V in _cluster_batches(res, codes, "CR2" if key == "CR2" else "CR0"):
        v = ec if A is None else np.einsum("mab,mb->ma", A, ec)
        comps.append(np.einsum("mak,mab,mb->mk", Xc, W, v))
    C = np.concatenate(comps)
    M = np.asarray(res.fit_result.cov_fe, float) / res.fit_result.scale
    cov = M @ (C.T @ C) @ M
    cov *= cluster_factor(key, m, int(res.model.nobs), res.model.k_fe)
    cov = 0.5 * (cov + cov.T)
    names = list(res.model.exog_names)
    return pd.DataFrame(cov, index=names, columns=names)


def coef_test_robust(results: "MultilevelResults", cov_type: str = "CR2", *,
                     cluster: Any = None) -> pd.DataFrame:
    """Cluster-robust t tests with Satterthwaite df (clubSandwich's ``coef_test``).

    Returns
    -------
    DataFrame
        ``Estimate``, ``Std. Error`` (robust), ``df``, ``t value``,
        ``Pr(>|t|)``, as ``coef_test(fit, vcov = cov_type, test =
        "Satterthwaite")``.

    Notes
    -----
    As :func:`sm_hlm.cluster_tests.coef_test_robust` with the clusters of
    :func:`cov_robust`: for coefficient c, g_j = A_j W_j X_j M c,
    d_j = g_j'V_j g_j, h_j = X_j'g_j, S = sum_j h_j h_j', and
    df = (sum_j d_j - h_j'M h_j)^2 /
    (sum_j d_j^2 - 2 sum_j d_j h_j'M h_j + tr(M S M S)).
    """
    res = getattr(results, "_results", results)
    key = _kind(cov_type)
    codes, _ = _cluster_codes(res, cluster)
    names = list(res.model.exog_names)
    beta = np.asarray(res.fit_result.fe_params, float)
    se = np.sqrt(np.diag(cov_robust(res, key, cluster=cluster).to_numpy()))
    M = np.asarray(res.fit_result.cov_fe, float) / res.fit_result.scale
    Ds, Hs = [], []
    for Xc, W, A, _e, V in _cluster_batches(res, codes, "CR2" if key == "CR2" else "CR0"):
        G = W @ Xc @ M                                        # (m_s, s, p), C = I
        if A is not None:
            G = A @ G
        Ds.append(np.swapaxes(G, 1, 2) @ V @ G)
        Hs.append(np.swapaxes(Xc, 1, 2) @ G)
    D, H = np.concatenate(Ds), np.concatenate(Hs)
    omega, a, S = _omega_terms(D, H, M)
    d = np.einsum("mii->mi", D)
    ad = np.einsum("mii->mi", a)
    MS = np.einsum("ab,iibc->iac", M, S)
    trP2 = (d ** 2).sum(0) - 2.0 * (d * ad).sum(0) + np.einsum("iab,iba->i", MS, MS)
    df = np.diag(omega) ** 2 / trP2
    t = beta / se
    return pd.DataFrame({"Estimate": beta, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)}, index=pd.Index(names))


# =====================================================================
# simulate, refit, parametric bootstrap
# =====================================================================

def _with_endog(model: Any, y: np.ndarray) -> Any:
    """A shallow copy of ``model`` with the response ``y`` (the designs, factors and
    the blocked symbolic analysis shared; only the response-dependent parts new)."""
    import copy

    new = copy.copy(model)
    new.endog = y
    for k in ("_working_cache", "_blocked_cache"):
        new.__dict__.pop(k, None)
    base = model.__dict__.get("_blocked_cache")
    if base is not None:
        Xw, yw = new._working[:2]
        new.__dict__["_blocked_cache"] = base.with_response(Xw, yw)
    return new


def simulate(results: "MultilevelResults", nsim: int = 1, *, seed: Any = None) -> pd.DataFrame:
    """Responses simulated from the fitted model (lme4's ``simulate``).

    Returns
    -------
    DataFrame
        One column per simulation (``sim_1``...), one row per fitted row.

    Notes
    -----
    y* = X beta + sum_k Z_k b*_k + e*, b*_k[l] ~ N(0, Psi_k) drawn through a
    symmetric square root of Psi_k (singular fits included), e* ~ N(0,
    sigma^2 I), all at the estimates; ``seed`` is a seed or a
    ``numpy.random.Generator`` (the same seed gives the same draws).
    """
    from ..toolbox import _psd_factor

    res = getattr(results, "_results", results)
    model, fit = res.model, res.fit_result
    nsim = int(nsim)
    if nsim < 1:
        raise ValueError(f"nsim must be at least 1, got {nsim}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = len(model.endog)
    sims = np.repeat((model.exog @ np.asarray(fit.fe_params, float))[:, None], nsim, axis=1)
    for t, cov in zip(model.re_terms, fit.cov_re):
        F = _psd_factor(np.asarray(cov, float))
        b = np.einsum("ab,lbs->las", F, rng.standard_normal((t.n_levels, t.S, nsim)))
        sims += np.einsum("iq,iqs->is", t.z, b[t.refs])
    sims += math.sqrt(fit.scale) * rng.standard_normal((n, nsim))
    idx = getattr(model, "row_index", None)
    return pd.DataFrame(sims, index=idx, columns=[f"sim_{i + 1}" for i in range(nsim)])


def refit(results: "MultilevelResults", endog: Any, **fit_kwargs: Any) -> Any:
    """The model of ``results`` fitted to a new response (lme4's ``refit``).

    ``endog`` holds one value per fitted row, in their order; the fit uses
    the same criterion (ML/REML) and starts at the estimates' theta.
    ``fit_kwargs`` go to :meth:`MultilevelHLM.fit`.
    """
    res = getattr(results, "_results", results)
    model = res.model
    y = refit_response(endog, len(model.endog))
    new = _with_endog(model, y)
    fit_kwargs.setdefault("start_params", np.asarray(res.theta, float))
    return new.fit(reml=bool(res.reml), **fit_kwargs)


def sdcor_labels(model: Any) -> list[str]:
    """Labels of the random effects' SDs and correlations in lme4's theta order (its
    ``.sig01``...; ``sd(Intercept|g)``, ``cor(Intercept,x|g)``), then ``sigma``."""
    from ..engine.terms import theta_to_lme4

    out = []
    for t in model.re_terms:
        for i, j in t.theta_index():
            out.append(f"sd({t.names[i]}|{t.factor})" if i == j
                       else f"cor({t.names[j]},{t.names[i]}|{t.factor})")
    perm = theta_to_lme4(np.arange(len(out), dtype=float), model.layout).astype(int)
    return [out[k] for k in perm] + ["sigma"]


def sdcor(model: Any, theta: np.ndarray, scale: float) -> np.ndarray:
    """SDs and correlations of the random effects (lme4's theta order) and sigma."""
    from ..engine.terms import theta_to_lme4

    sigma = math.sqrt(scale)
    vals = []
    for t, lam in zip(model.re_terms, model.layout.lambdas(np.asarray(theta, float))):
        cov = scale * lam @ lam.T
        sd = np.sqrt(np.diag(cov))
        for i, j in t.theta_index():
            if i == j:
                vals.append(sd[i])
            else:
                den = sd[i] * sd[j]
                vals.append(cov[i, j] / den if den > 0 else np.nan)
    return np.append(theta_to_lme4(np.asarray(vals), model.layout), sigma)


def bootstrap(results: "MultilevelResults", n: int, *, seed: int | None = None,
              progress: bool = True, alpha: float = 0.05) -> Any:
    """Parametric bootstrap (lme4's ``bootMer``, ``use.u = FALSE``).

    Returns
    -------
    sm_hlm.inference.BootstrapResult
        Replicates of the fixed effects, the SDs and correlations of the
        random effects and sigma (labels of :func:`sdcor_labels`), then the
        variance components (``results.params``' names).

    Notes
    -----
    Each replicate simulates y* as :func:`simulate` (one draw of a
    generator seeded by ``seed``, so the first k replicates of a run with
    n > k are those of a run with k) and refits it (:func:`refit`, from the
    estimates' theta, the same ML/REML criterion).  Failed refits give NaN
    rows (``n_failed``); refits that report non-convergence are kept and
    counted (``n_nonconverged``).
    """
    from ..inference import BootstrapResult, _Progress

    res = getattr(results, "_results", results)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive number of replicates, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    model, fit = res.model, res.fit_result
    rng = np.random.default_rng(seed)
    columns = list(model.exog_names) + sdcor_labels(model) + list(model.vcomp_names())

    def row(r: Any) -> np.ndarray:
        f = r.fit_result
        return np.concatenate([f.fe_params, sdcor(model, f.theta, f.scale),
                               np.asarray(r._vcomp_values, float)])

    out = np.full((n, len(columns)), np.nan)
    n_failed = n_nonconv = 0
    bar = _Progress(n, progress)
    try:
        for b in range(n):
            y = simulate(res, 1, seed=rng).to_numpy()[:, 0]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = refit(res, y)
                rb = getattr(r, "_results", r)
                out[b] = row(rb)
                n_nonconv += int(not rb.converged)
            except (FloatingPointError, np.linalg.LinAlgError, ValueError, RuntimeError):
                n_failed += 1
            bar.update()
    finally:
        bar.close()
    est = pd.Series(row(res), index=columns, name="estimate")
    return BootstrapResult(replicates=pd.DataFrame(out, columns=columns), estimates=est,
                           n_failed=n_failed, n_nonconverged=n_nonconv, alpha=alpha, seed=seed,
                           reml=bool(fit.reml))
