"""Structured residual covariances (sm_hlm.residual, sm_hlm.whitening, sm_hlm.residual_fit).

Reference numbers come from nlme (validation/r/residual_nlme.json, written by
validation/r/residual_nlme.R on the panels of validation/r/make_residual_data.py);
R is not run here.  Other checks use dense, group-by-group computations.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sm_hlm
from sm_hlm import (AR1, HLM, ContinuousAR1, Exchangeable, Heteroscedastic, IdentificationError,
                    Independence, ResidualIdentificationWarning, SingularFitWarning, Unstructured)
from sm_hlm.simulate import simulate_panel

ROOT = Path(__file__).resolve().parent.parent
REF_PATH = ROOT / "validation" / "r" / "residual_nlme.json"
DATA = ROOT / "validation" / "r" / "data"
FORMULA = "y ~ wave*trt"

#: nlme case -> (random-effects formula, residual structure)
SPECS = {
    "gls_ar1": ("0", lambda: AR1(time="wave")),
    "gls_car1": ("0", lambda: ContinuousAR1(time="time")),
    "gls_un": ("0", lambda: Unstructured(position="wave")),
    "gls_cs": ("0", lambda: Exchangeable()),
    "gls_ar1h": ("0", lambda: AR1(time="wave") * Heteroscedastic(by="wave")),
    "lme_ri_ar1": ("1", lambda: AR1(time="wave")),
    "lme_slope_ar1": ("~ wave", lambda: AR1(time="wave")),
    "lme_ri_un": ("1", lambda: Unstructured(position="wave")),
}
#: the random intercept is confounded with the unstructured covariance (a ridge)
RIDGE = {"lme_ri_un"}
CASES = [f"{k}_{m}" for k in SPECS for m in ("ML", "REML")]


@functools.lru_cache(maxsize=None)
def ref() -> dict:
    with open(REF_PATH) as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=None)
def panel(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA / name)


@functools.lru_cache(maxsize=None)
def fitted(case: str):
    key, method = case.rsplit("_", 1)
    rf, structure = SPECS[key]
    r = ref()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResidualIdentificationWarning)
        mod = HLM.from_formula(FORMULA, panel(r["data"]), groups="subject", re_formula=rf,
                               residual=structure())
        return mod.fit(reml=method == "REML")


def nlme_structure(r: dict) -> dict[str, float]:
    """nlme's structure parameters under sm_hlm's names (SD ratios relative to wave 0)."""
    out: dict[str, float] = {}
    cs = r["corStruct"]
    if cs is not None:
        nat = cs["natural"]
        vals = list(nat.values()) if isinstance(nat, dict) else list(nat)
        if cs["class"] == "corSymm":
            s, t = np.triu_indices(6, k=1)
            for a, b, v in zip(s, t, vals):
                out[f"Corr({a},{b})"] = v
        elif cs["class"] == "corCompSymm":
            out["Rho"] = vals[0]
        else:  # corAR1 (corARMA with gaps) and corCAR1
            out["Phi"] = vals[0]
    for lv, v in (r.get("sd_ratio") or {}).items():
        if lv != "0":
            out[f"SD ratio(wave={lv})"] = v
    return out


# ---------------------------------------------------------------------------
# accuracy against nlme
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_loglik_matches_nlme(case):
    res, r = fitted(case), ref()[case]
    assert res.converged
    assert abs(res.llf - r["logLik"]) <= 1e-4
    # same parameter count, so AIC agrees too
    assert res.n_params == r["df"]
    assert abs(res.aic - r["AIC"]) <= 2e-4


@pytest.mark.parametrize("case", CASES)
def test_fixed_effects_and_se_match_nlme(case):
    res, r = fitted(case), ref()[case]
    fe = np.array([r["fixef"][k] for k in r["fixef_names"]])
    np.testing.assert_allclose(res.fe_params.to_numpy(), fe, rtol=1e-4, atol=1e-6)
    se = res.bse_fe.to_numpy()
    if case.startswith("gls") and not r["REML"]:
        # nlme's gls(method = "ML") scales vcov by the REML-type residual variance
        # rss / (N - p) instead of the ML estimate rss / N (its varBeta)
        n, p = res.nobs, res.k_fe
        se = se * np.sqrt(n / (n - p))
    np.testing.assert_allclose(se, np.array(r["se"]), rtol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if c.rsplit("_", 1)[0] not in RIDGE])
def test_structure_parameters_match_nlme(case):
    res, r = fitted(case), ref()[case]
    want = nlme_structure(r)
    got = res.residual_params
    assert sorted(got.index) == sorted(want)
    for name, v in want.items():
        assert abs(got[name] - v) <= 1e-3, (name, got[name], v)
    assert abs(np.sqrt(res.scale) / r["sigma_ref"] - 1) <= 1e-3
    if "cov_re" in r:
        np.testing.assert_allclose(res.cov_re.to_numpy(), np.array(r["cov_re"]), atol=1e-3,
                                   rtol=1e-3)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_random_intercept_unstructured_marginal_cov_matches_nlme(method):
    """Random intercept + unstructured is a ridge: compare what is identified."""
    case = f"lme_ri_un_{method}"
    res, r = fitted(case), ref()[case]
    kern = res.model._residual_kernel
    nat = res.residual_params.to_numpy()
    C = kern.structure.corr_matrix(nat, kern.info)
    sd = kern.structure.sd_levels(nat, kern.info)
    full = res.cov_re.iloc[0, 0] + res.scale * C * np.outer(sd, sd)
    np.testing.assert_allclose(full, np.array(r["marginal_cov"]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", [c for c in CASES if c.rsplit("_", 1)[0] not in RIDGE])
def test_normalized_residuals_and_fitted_match_nlme(case):
    res, r = fitted(case), ref()[case]
    if case.startswith("gls_cs"):
        # without positions exchangeable rows keep the caller's order, and normalized
        # residuals depend on the order; nlme saw the rows sorted by wave
        res2 = HLM.from_formula(FORMULA, panel(r["data"]), groups="subject", re_formula="0",
                                residual=Exchangeable(position="wave")).fit(reml=r["REML"])
        assert abs(res2.llf - res.llf) <= 1e-8
        res = res2
    rows = np.array(r["resid_normalized"]["row"])
    data = panel(r["data"])
    order = pd.Index(data["row"]).get_indexer(rows)
    ours = np.asarray(res.resid_normalized)[order]
    theirs = np.array(r["resid_normalized"]["value"])
    if case.startswith("gls_cs"):
        # nlme's corCompSymm whitens with a Helmert-type factor W (W'W = R^-1, not
        # triangular); ours is the inverse Cholesky factor in time order.  Any such W
        # gives the same squared norm per group.
        subj = data["subject"].to_numpy()[order]
        np.testing.assert_allclose(np.bincount(subj, weights=ours ** 2),
                                   np.bincount(subj, weights=theirs ** 2), rtol=2e-3, atol=1e-6)
    else:
        np.testing.assert_allclose(ours, theirs, atol=2e-3)
    fit = np.asarray(res.fittedvalues)[order]
    np.testing.assert_allclose(fit, np.array(r["fitted"]["value"]), atol=1e-3)


def test_higher_loglik_where_nlme_stops_at_its_iteration_limit():
    r = ref()["lme_slope_ar1_limit_ML"]
    assert any("iteration limit" in w for w in r["warnings"])
    res = fitted("lme_slope_ar1_ML")
    assert res.converged
    assert res.llf >= r["logLik"]
    assert res.llf - r["logLik"] > 1.0          # nlme stopped far from the optimum
    # ...which nlme reaches when allowed to converge
    assert abs(res.llf - ref()["lme_slope_ar1_ML"]["logLik"]) <= 1e-4


def test_reml_convention_no_structure():
    """nlme's REML logLik equals lme4's -REMLcrit/2 and ours (no 0.5 log|X'X| shift)."""
    c = ref()["convention"]
    assert c["half_logdet_XtX"] > 1.0        # a convention difference would be visible
    assert abs(c["lme_REML_logLik"] - c["lmer_REML_logLik"]) <= 1e-6
    assert abs(c["gls_REML_logLik"] - c["lm_REML_logLik"]) <= 1e-6
    d = panel(c["data"])
    ri = HLM.from_formula(FORMULA + " + (1 | subject)", d).fit(reml=True)
    assert abs(ri.llf - c["lme_REML_logLik"]) <= 1e-4
    gls = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0").fit(reml=True)
    assert abs(gls.llf - c["gls_REML_logLik"]) <= 1e-6


@pytest.mark.parametrize("key", ["gls_ar1", "gls_ar1h"])
def test_phi_interval_matches_nlme(key):
    """(For corCAR1 and corCompSymm nlme's apVar gives ~2% smaller SEs than the
    curvature of the profiled likelihood, which ours equals: see the next test.)"""
    for m in ("ML", "REML"):
        res, r = fitted(f"{key}_{m}"), ref()[f"{key}_{m}"]
        (iv,) = r["corStruct_intervals"]
        tab = res.residual_table()
        assert abs(tab.loc["Phi", "[0.025"] - iv["lower"]) <= 1e-3
        assert abs(tab.loc["Phi", "0.975]"] - iv["upper"]) <= 1e-3


# ---------------------------------------------------------------------------
# dense oracles
# ---------------------------------------------------------------------------

def _dense_reml_loglik(res) -> float:
    model = res.model
    beta = res.fe_params.to_numpy()
    logdet, quad = 0.0, 0.0
    XtVX = np.zeros((model.k_fe, model.k_fe))
    for g in model.group_labels:
        rows = np.flatnonzero(model.group_codes == model.group_labels.get_loc(g))
        V = res.marginal_cov(g).to_numpy()
        X = model.exog[rows]
        e = model.endog[rows] - X @ beta
        logdet += np.linalg.slogdet(V)[1]
        quad += e @ np.linalg.solve(V, e)
        XtVX += X.T @ np.linalg.solve(V, X)
    n, p = model.nobs, model.k_fe
    return -0.5 * ((n - p) * np.log(2 * np.pi) + logdet + np.linalg.slogdet(XtVX)[1] + quad)


@functools.lru_cache(maxsize=None)
def small_panel(kind: str, seed: int = 7) -> pd.DataFrame:
    kw = dict(n_subjects=40, n_waves=5, missing_frac=0.2, seed=seed,
              re_names=("Intercept", "wave"), cov_re=[[0.6, 0.05], [0.05, 0.1]])
    if kind == "car1":
        kw.update(residual="car1", irregular=True, phi=0.4)
    elif kind == "un":
        C = 0.3 + 0.5 * 0.6 ** np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
        np.fill_diagonal(C, 1.0)
        kw.update(residual="unstructured", corr=C, sd_ratio=[1, 1.2, 0.9, 1.3, 1.1],
                  re_names=("wave",), cov_re=[[0.1]], irregular=True)
    elif kind == "cs":
        kw.update(residual="exchangeable", phi=0.3, re_names=("wave",), cov_re=[[0.1]])
    else:
        kw.update(residual="ar1", phi=0.5, sd_ratio=[1, 1.3, 0.8, 1.1, 1.2])
    d = simulate_panel(**kw)
    d["grp"] = np.where(d["trt"] > 0, "b", "a")
    return d


DENSE = {
    "ar1_slope": ("(wave | subject)", "ar1", lambda: AR1(time="wave")),
    "ar1h_slope": ("(wave | subject)", "ar1", lambda: AR1(time="wave", hetero_by="wave")),
    "ar1h_trt": ("(1 | subject)", "ar1", lambda: AR1(time="wave") * Heteroscedastic(by="grp")),
    "car1": ("(1 | subject)", "car1", lambda: ContinuousAR1(time="time")),
    "un_slope": ("(0 + time | subject)", "un", lambda: Unstructured(position="wave")),
    "cs_slope": ("(0 + wave | subject)", "cs", lambda: Exchangeable()),
    "csh_grp": ("(0 + wave | subject)", "cs", lambda: Exchangeable(hetero_by="grp")),
    "hetero": ("(wave | subject)", "ar1", lambda: Heteroscedastic(by="wave")),
    "hetero_labels": ("(1 | subject)", "ar1", lambda: Heteroscedastic(by="grp")),
    "un_equal_var": ("(0 + time | subject)", "un", lambda: Unstructured(position="wave",
                                                                        hetero=False)),
    "csh_pos": ("(0 + time | subject)", "un", lambda: Exchangeable(position="wave",
                                                                   hetero_by="wave")),
    "gls_cs_grp": ("", "cs", lambda: Exchangeable(hetero_by="grp")),
    "gls_un": ("", "un", lambda: Unstructured(position="wave")),
    "gls_car1h": ("", "car1", lambda: ContinuousAR1(time="time", hetero_by="grp")),
}


@pytest.mark.filterwarnings("ignore::sm_hlm.SingularFitWarning")
@pytest.mark.parametrize("name", list(DENSE))
def test_loglik_equals_dense_groupwise_density(name):
    re_term, data, structure = DENSE[name]
    d = small_panel(data)
    if re_term:
        mod = HLM.from_formula(f"{FORMULA} + {re_term}", d, residual=structure())
    else:
        mod = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                               residual=structure())
    ml = mod.fit(reml=False)
    assert abs(ml.llf - ml.loglike_dense()) <= 1e-8 * abs(ml.llf)
    reml = mod.fit(reml=True)
    assert abs(reml.llf - _dense_reml_loglik(reml)) <= 1e-8 * abs(reml.llf)


def test_ar1_term_store_equals_row_whitening():
    d = small_panel("ar1")
    mod = HLM.from_formula(f"{FORMULA} + (wave | subject)", d,
                           residual=AR1(time="wave", hetero_by="wave"))
    kern = mod._residual_kernel
    assert kern.term_store is not None
    u = np.array([0.4, 0.2, -0.3, 0.1, 0.25])
    fast, ld_fast = kern.stats(u)
    store, kern.term_store = kern.term_store, None
    try:
        slow, ld_slow = kern.stats(u)
    finally:
        kern.term_store = store
    np.testing.assert_allclose(fast.ZtZ, slow.ZtZ, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.ZtW, slow.ZtW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.WtW, slow.WtW, rtol=1e-12)
    assert abs(ld_fast - ld_slow) <= 1e-10 * abs(ld_slow)


@pytest.mark.filterwarnings("ignore::sm_hlm.SingularFitWarning")
@pytest.mark.parametrize("name", ["ar1h_slope", "car1", "un_slope", "csh_grp"])
def test_whitening_is_the_inverse_cholesky_factor(name):
    """U_j^-1 from the kernel equals chol(R_j)^-1 with rows in time order; solve = R_j^-1."""
    re_term, data, structure = DENSE[name]
    d = small_panel(data)
    res = HLM.from_formula(f"{FORMULA} + {re_term}", d, residual=structure()).fit(reml=True)
    kern = res.model._residual_kernel
    u = res.fit_result.residual_free
    E = np.random.default_rng(1).normal(size=(len(d), 2))
    W = kern.whiten(u, E)
    S = kern.solve(u, E)
    key = kern.key
    for g in res.model.group_labels[:8]:
        rows = np.flatnonzero(res.model.group_codes == res.model.group_labels.get_loc(g))
        rows = rows[np.argsort(key[rows], kind="stable")]
        R = res.residual_cov(g).loc[d.index[rows], d.index[rows]].to_numpy() / res.scale
        U = np.linalg.cholesky(R)
        np.testing.assert_allclose(W[rows], np.linalg.solve(U, E[rows]), atol=1e-10)
        np.testing.assert_allclose(S[rows], np.linalg.solve(R, E[rows]), atol=1e-9)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), phi=st.floats(-0.9, 0.9), lv=st.floats(-1.0, 1.0))
def test_profiled_deviance_equals_dense_for_random_panels(seed, phi, lv):
    """Any panel (missing waves, unequal sizes, shuffled rows) and any parameters."""
    rng = np.random.default_rng(seed)
    n_sub = int(rng.integers(4, 12))
    d = simulate_panel(n_subjects=n_sub, n_waves=5, missing_frac=0.3, residual="ar1", phi=0.3,
                       re_names=("Intercept",), cov_re=[[0.5]], seed=seed)
    mod = HLM.from_formula("y ~ wave + (1 | subject)", d,
                           residual=AR1(time="wave", hetero_by="trt"))
    kern = mod._residual_kernel
    u = np.r_[np.arctanh(phi), np.full(kern.n_params - 1, lv)]
    theta = np.array([0.7])
    dev = kern.objective(1, reml=False)(np.r_[theta, u])
    # dense: -2 log L maximised over beta and sigma^2 at (theta, u)
    nat = kern.natural(u)
    Vs, Xs, ys = [], [], []
    for g in mod.group_labels:
        rows = np.flatnonzero(mod.group_codes == mod.group_labels.get_loc(g))
        t = d["wave"].to_numpy()[rows]
        s = kern.structure.sd_levels(nat, kern.info)[kern.by_codes[rows]]
        R = (np.sign(phi) ** np.abs(np.subtract.outer(t, t))
             * np.abs(phi) ** np.abs(np.subtract.outer(t, t))) * np.outer(s, s)
        Vs.append(R + theta[0] ** 2)
        Xs.append(mod.exog[rows])
        ys.append(mod.endog[rows])
    Vi = [np.linalg.inv(V) for V in Vs]
    beta = np.linalg.solve(sum(X.T @ A @ X for X, A in zip(Xs, Vi)),
                           sum(X.T @ A @ y for X, A, y in zip(Xs, Vi, ys)))
    n = len(d)
    r2 = sum((y - X @ beta) @ A @ (y - X @ beta) for X, A, y in zip(Xs, Vi, ys))
    dense = sum(np.linalg.slogdet(V)[1] for V in Vs) + n * (1 + np.log(2 * np.pi * r2 / n))
    assert abs(dev - dense) <= 1e-8 * abs(dense)


@pytest.mark.parametrize("case", ["gls_cs_ML", "gls_car1_REML", "gls_ar1_ML"])
def test_standard_error_is_the_curvature_of_the_profiled_deviance(case):
    """One structure parameter, no random effects: the profiled deviance of u is the
    profile likelihood, whose curvature is the inverse variance."""
    res = fitted(case)
    kern = res.model._residual_kernel
    f = kern.objective(0, reml=res.reml)
    u = res.fit_result.residual_free
    h = 1e-3
    H = (f(u + h) - 2 * f(u) + f(u - h)) / h ** 2
    assert abs(np.sqrt(2 / H) / np.sqrt(res.fit_result.residual_free_cov[0, 0]) - 1) <= 1e-3


def test_standard_error_delta_method_and_interval():
    res = fitted("gls_cs_ML")
    kern = res.model._residual_kernel
    f = kern.objective(0, reml=False)
    u = res.fit_result.residual_free
    h = 1e-3
    H = (f(u + h) - 2 * f(u) + f(u - h)) / h ** 2
    # delta method on the natural scale: Rho = lo + (1 - lo) logistic(u)
    tab = res.residual_table()
    lo = -1 / 5
    rho = tab.loc["Rho", "Estimate"]
    dr = (rho - lo) * (1 - rho) / (1 - lo)
    se = tab.loc["Rho", "Std.Err."]
    assert abs(se - dr * np.sqrt(2 / H)) <= 1e-3 * se
    assert tab.loc["Rho", "[0.025"] < rho < tab.loc["Rho", "0.975]"]


# ---------------------------------------------------------------------------
# row order, labels, outputs
# ---------------------------------------------------------------------------

def test_row_order_does_not_matter_and_outputs_keep_callers_order():
    d = small_panel("ar1").copy()
    d.index = pd.Index([f"r{i}" for i in range(len(d))], name="visit")
    a = HLM.from_formula(f"{FORMULA} + (wave | subject)", d,
                         residual=AR1(time="wave", hetero_by="wave")).fit(reml=False)
    perm = np.random.default_rng(3).permutation(len(d))
    e = d.iloc[perm]
    b = HLM.from_formula(f"{FORMULA} + (wave | subject)", e,
                         residual=AR1(time="wave", hetero_by="wave")).fit(reml=False)
    assert abs(a.llf - b.llf) <= 1e-7
    assert list(b.resid_normalized.index) == list(e.index)
    for attr in ("resid_normalized", "fittedvalues", "resid"):
        # equal up to the optimiser's precision (the parameters agree to ~1e-4 on this
        # flat small-sample likelihood); misaligned rows would differ by O(1)
        x, y = getattr(a, attr), getattr(b, attr)
        np.testing.assert_allclose(x.loc[e.index].to_numpy(), y.to_numpy(), atol=2e-3)


def test_residual_cov_is_labelled_and_equals_the_structure():
    res = fitted("gls_ar1h_REML")
    d = panel("panel_ar1h.csv")
    g = res.model.group_labels[5]
    S = res.residual_cov(g)
    rows = np.flatnonzero(d["subject"].to_numpy() == g)
    assert list(S.index) == list(d.index[rows])          # caller's rows, caller's order
    t = d["wave"].to_numpy()[rows]
    p = res.residual_params
    sd = np.array([1.0] + [p[f"SD ratio(wave={k})"] for k in range(1, 6)])[t]
    want = res.scale * p["Phi"] ** np.abs(np.subtract.outer(t, t)) * np.outer(sd, sd)
    np.testing.assert_allclose(S.to_numpy(), want, rtol=1e-12)
    T = res.residual_cov(g, label="time")
    assert list(T.index) == list(t)
    marg = res.marginal_cov(g)
    np.testing.assert_allclose(marg.to_numpy(), S.to_numpy())


def test_blups_account_for_the_residual_correlation():
    """b_j = Psi Z_j' V_j^-1 (y_j - X_j beta) with V_j including R_j."""
    res = fitted("lme_slope_ar1_REML")
    model = res.model
    beta = res.fe_params.to_numpy()
    psi = res.cov_re.to_numpy()
    re = res.ranef()
    for g in model.group_labels[:10]:
        rows = np.flatnonzero(model.group_codes == model.group_labels.get_loc(g))
        V = res.marginal_cov(g).to_numpy()
        Z = model.exog_re[rows]
        b = psi @ Z.T @ np.linalg.solve(V, model.endog[rows] - model.exog[rows] @ beta)
        np.testing.assert_allclose(re.loc[g].to_numpy(), b, atol=1e-8)


# ---------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------

def test_prediction_adds_the_conditional_mean_of_correlated_errors():
    res = fitted("lme_slope_ar1_ML")
    model = res.model
    d = panel("panel_slope_ar1.csv")
    subj = res.model.group_labels[:4]
    trt = d.groupby("subject")["trt"].first().loc[subj]
    new = pd.DataFrame({"subject": np.repeat(subj, 2), "wave": np.tile([6, 8], 4),
                        "trt": np.repeat(trt, 2).to_numpy()})
    new.index = pd.Index([f"n{i}" for i in range(len(new))])
    pred = res.predict(new)
    assert list(pred.index) == list(new.index)
    beta = res.fe_params.to_numpy()
    psi = res.cov_re.to_numpy()
    p = res.residual_params
    for i, (g, w, trt) in enumerate(new[["subject", "wave", "trt"]].itertuples(index=False)):
        rows = np.flatnonzero(model.group_codes == model.group_labels.get_loc(g))
        t = d["wave"].to_numpy()[rows]
        x = np.array([1.0, w, trt, w * trt])
        z = np.array([1.0, w])
        V = res.marginal_cov(g).to_numpy()
        c = z @ psi @ model.exog_re[rows].T + res.scale * p["Phi"] ** np.abs(w - t)
        want = x @ beta + c @ np.linalg.solve(V, model.endog[rows] - model.exog[rows] @ beta)
        assert abs(pred.iloc[i] - want) <= 1e-8
    plain = res.predict(new, correlated=False)
    b = res.ranef()
    base = np.array([np.array([1.0, w, trt, w * trt]) @ beta + b.loc[g] @ np.array([1.0, w])
                     for g, w, trt in new[["subject", "wave", "trt"]].itertuples(index=False)])
    np.testing.assert_allclose(plain.to_numpy(), base, atol=1e-10)
    # the forecast shrinks towards the BLUP prediction as the lag grows
    assert np.all(np.abs(pred.to_numpy() - base)[1::2] < np.abs(pred.to_numpy() - base)[::2])


def test_prediction_rejects_positions_never_seen():
    res = fitted("gls_un_REML")
    new = pd.DataFrame({"subject": [1, 2], "wave": [2, 7], "trt": [0.0, 1.0]})
    with pytest.raises(ValueError, match=r"position\(s\) \[7\].*never seen"):
        res.predict(new)
    ok = res.predict(new.iloc[:1])
    assert np.isfinite(ok.iloc[0])
    car1 = fitted("gls_car1_REML")
    with pytest.raises(KeyError, match="lack the time/position variable 'time'"):
        car1.predict(new.iloc[:1])


def test_prediction_without_the_correlated_term_needs_no_positions():
    """correlated=False does not use the structure: unseen positions are fine."""
    res = fitted("gls_un_REML")
    new = pd.DataFrame({"subject": [1, 2], "wave": [2, 7], "trt": [0.0, 1.0]})
    pred = res.predict(new, correlated=False)
    X = np.column_stack([np.ones(2), new["wave"], new["trt"], new["wave"] * new["trt"]])
    np.testing.assert_allclose(pred.to_numpy(), X @ res.fe_params.to_numpy(), rtol=1e-12)


def test_prediction_rejects_groups_of_the_wrong_length():
    """Array interface without random effects: a short groups array used to leave the
    last rows without their correlated term, silently."""
    d = panel("panel_ar1.csv")
    X = np.column_stack([np.ones(len(d)), d["wave"], d["trt"], d["wave"] * d["trt"]])
    res = HLM(d["y"], X, d["subject"], np.zeros((len(d), 0)),
              residual=AR1(time=d["wave"].to_numpy())).fit()
    g = d["subject"].to_numpy()[:3]
    t = {"time": d["wave"].to_numpy()[:3] + 1}
    full = res.predict(X[:3], groups=g, residual_data=t)
    one = res.predict(X[2:3], groups=g[2:3], residual_data={"time": t["time"][2:]})
    assert full[2] == pytest.approx(one[0], rel=1e-12)
    with pytest.raises(ValueError, match=r"groups has shape \(2,\) for 3 new rows"):
        res.predict(X[:3], groups=g[:2], residual_data=t)


def test_prediction_rejects_unseen_variance_levels():
    d = small_panel("cs")
    res = HLM.from_formula(FORMULA + " + (0 + wave | subject)", d,
                           residual=Exchangeable(hetero_by="grp")).fit()
    new = pd.DataFrame({"subject": [1], "wave": [1], "trt": [0.0], "grp": ["zz"]})
    with pytest.raises(ValueError, match="never seen"):
        res.predict(new)


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------

def test_exports_and_combinations():
    for name in ("AR1", "ContinuousAR1", "Exchangeable", "Unstructured", "Heteroscedastic",
                 "Independence", "ResidualStructure"):
        assert name in sm_hlm.__all__
    a = AR1(time="wave") * Heteroscedastic(by="wave")
    assert repr(a) == repr(AR1(time="wave", hetero_by="wave"))
    assert repr(Heteroscedastic(by="wave") * Exchangeable()) == "Exchangeable(hetero_by='wave')"
    with pytest.raises(TypeError, match="already has an SD ratio"):
        Unstructured(position="wave") * Heteroscedastic(by="trt")
    with pytest.raises(TypeError, match="cannot combine"):
        AR1(time="wave") * Exchangeable()
    with pytest.raises(TypeError, match="residual structure"):
        HLM.from_formula(FORMULA, panel("panel_ar1.csv"), groups="subject", residual="ar1")


def test_combined_and_keyword_forms_fit_identically():
    d = panel("panel_ar1h.csv")
    a = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                         residual=AR1(time="wave") * Heteroscedastic(by="wave")).fit()
    b = fitted("gls_ar1h_REML")
    assert a.llf == pytest.approx(b.llf, abs=1e-9)


def test_array_interface_matches_formula():
    d = panel("panel_ri_ar1.csv")
    X = np.column_stack([np.ones(len(d)), d["wave"], d["trt"], d["wave"] * d["trt"]])
    res = HLM(d["y"], X, d["subject"], residual=AR1(time=d["wave"].to_numpy())).fit()
    assert res.llf == pytest.approx(fitted("lme_ri_ar1_REML").llf, abs=1e-6)
    with pytest.raises(TypeError, match="names the column 'wave'"):
        HLM(d["y"], X, d["subject"], residual=AR1(time="wave"))
    with pytest.raises(TypeError, match=r"pass the values \(hetero_by=data\['trt'\]\)"):
        HLM(d["y"], X, d["subject"], residual=AR1(time=d["wave"].to_numpy(), hetero_by="trt"))
    with pytest.raises(ValueError, match="values for"):
        HLM(d["y"], X, d["subject"], residual=AR1(time=np.arange(5)))
    # new array rows: times passed with residual_data
    pred = res.predict(X[:3], groups=d["subject"].to_numpy()[:3],
                       residual_data={"time": d["wave"].to_numpy()[:3] + 1})
    assert pred.shape == (3,)


def test_independence_keeps_the_plain_path():
    d = panel("panel_ri_ar1.csv")
    plain = HLM.from_formula(FORMULA + " + (1 | subject)", d)
    ind = HLM.from_formula(FORMULA + " + (1 | subject)", d, residual=Independence())
    assert ind.residual is None and ind._residual_kernel is None
    a, b = plain.fit(), ind.fit()
    assert a.llf == b.llf and a.n_params == b.n_params
    assert len(b.residual_params) == 0
    np.testing.assert_allclose(np.asarray(b.resid_normalized), np.asarray(b.resid_scaled))


def test_missing_time_rows_are_dropped_with_the_formula():
    d = panel("panel_ar1.csv").copy()
    d.loc[d.index[:5], "wave"] = np.nan
    with pytest.warns(sm_hlm.DroppedRowsWarning, match="5"):
        mod = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                               residual=AR1(time="wave"))
    assert mod.nobs == len(d) - 5


def test_parameter_counts_and_likelihood_ratio_test():
    ar1 = fitted("gls_ar1_ML")
    d = panel("panel_ar1.csv")
    ind = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0").fit(reml=False)
    assert ar1.n_params == ind.n_params + 1
    tab = sm_hlm.compare(ind, ar1)
    assert tab["Df"].iloc[1] == 1
    assert tab["Chisq"].iloc[1] == pytest.approx(2 * (ar1.llf - ind.llf))
    assert tab["Pr(>Chisq)"].iloc[1] < 1e-10
    un = fitted("gls_un_ML")
    assert un.n_params == 4 + 1 + 15 + 5


def test_summary_describes_the_structure_in_nlme_terms():
    txt = fitted("gls_ar1h_REML").summary().as_text()
    assert "Correlation Structure:" in txt and "AR(1)" in txt
    assert "~ wave | subject" in txt and "Phi 0.4881" in txt
    assert "Variance function:" in txt and "varIdent" in txt
    assert "wave=5" in txt                                # residual row per stratum
    assert "General correlation" in fitted("gls_un_REML").summary().as_text()
    assert "Compound symmetry" in fitted("gls_cs_REML").summary().as_text()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_time_column_missing_or_non_numeric():
    d = panel("panel_ar1.csv").copy()
    with pytest.raises(KeyError, match="'visit'.*not a column"):
        HLM.from_formula(FORMULA, d, groups="subject", re_formula="0", residual=AR1(time="visit"))
    d["wave_s"] = "w" + d["wave"].astype(str)
    with pytest.raises(TypeError, match="'wave_s'.*must be numeric"):
        HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                         residual=AR1(time="wave_s"))
    with pytest.raises(ValueError, match="integer times.*ContinuousAR1"):
        HLM.from_formula(FORMULA, panel("panel_car1.csv"), groups="subject", re_formula="0",
                         residual=AR1(time="time"))
    # positions may be labels: an Unstructured structure accepts them
    mod = HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                           residual=Unstructured(position="wave_s"))
    assert mod._residual_kernel.info.slot_labels[0] == "w0"


def test_duplicate_times_name_the_group_and_time():
    d = panel("panel_ar1.csv").copy()
    i = d.index[d["subject"] == 17][:2]
    d.loc[i[1], "wave"] = d.loc[i[0], "wave"]
    t = int(d.loc[i[0], "wave"])
    with pytest.raises(ValueError, match=rf"duplicate time {t} of 'wave' in group 17 of 'subject'"):
        HLM.from_formula(FORMULA, d, groups="subject", re_formula="0", residual=AR1(time="wave"))
    with pytest.raises(ValueError, match=rf"duplicate position {t} of 'wave' in group 17"):
        HLM.from_formula(FORMULA, d, groups="subject", re_formula="0",
                         residual=Unstructured(position="wave"))


def test_unstructured_that_the_data_cannot_identify():
    d = panel("panel_un.csv")
    # waves 0 and 5 never observed together
    gone = d[~((d["wave"] == 5) & d["subject"].isin(d.loc[d["wave"] == 0, "subject"]))]
    with pytest.raises(IdentificationError, match=r"\(0, 5\).*never observed together"):
        HLM.from_formula(FORMULA, gone, groups="subject", re_formula="0",
                         residual=Unstructured(position="wave"))
    # more parameters than observations
    few = d[d["subject"] <= 5].copy()
    few["visit"] = np.arange(len(few))
    with pytest.raises(IdentificationError, match="parameters"):
        HLM.from_formula(FORMULA, few, groups="subject", re_formula="0",
                         residual=Unstructured(position="visit"))
    # a random intercept is confounded with it: a warning
    with pytest.warns(ResidualIdentificationWarning, match="confounded"):
        HLM.from_formula(FORMULA + " + (1 | subject)", d, residual=Unstructured(position="wave"))


def test_phi_running_to_the_boundary_warns_and_is_reported():
    rng = np.random.default_rng(5)
    n_sub, waves = 60, 6
    subject = np.repeat(np.arange(n_sub), waves)
    wave = np.tile(np.arange(waves), n_sub)
    y = 0.5 * wave + rng.normal(size=n_sub)[subject] * 2 + rng.normal(scale=1e-3, size=len(wave))
    d = pd.DataFrame({"subject": subject, "wave": wave, "y": y})
    mod = HLM.from_formula("y ~ wave", d, groups="subject", re_formula="0",
                           residual=AR1(time="wave"))
    with pytest.warns(SingularFitWarning, match="Phi = 0.9999.*boundary 1"):
        res = mod.fit(reml=False)
    assert res.residual_boundary == ["Phi"]
    assert res.residual_params["Phi"] > 0.999
    assert "Boundary:" in res.summary().as_text()
    # alternating errors run to -1
    y2 = 0.5 * wave + rng.normal(size=n_sub)[subject] * (-1.0) ** wave + \
        rng.normal(scale=1e-3, size=len(wave))
    d2 = d.assign(y=y2)
    with pytest.warns(SingularFitWarning, match="boundary -1"):
        res2 = HLM.from_formula("y ~ wave", d2, groups="subject", re_formula="0",
                                residual=AR1(time="wave")).fit(reml=False)
    assert res2.residual_params["Phi"] < -0.999
