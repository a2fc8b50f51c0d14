"""Tests of sm_hlm.inference: Satterthwaite df, profile intervals, parametric
bootstrap and cluster-robust covariances.

R references (lmerTest 3.1-3, lme4 1.1-31, clubSandwich 0.5.8) are read from
validation/r/inference_refs.json, written by validation/r/inference_refs.R;
R is not run here.  Tolerances against R:

* Satterthwaite df: 1e-3 relative (observed <= 1.3e-5); estimates, SEs and t
  values 1e-4 relative.
* profile intervals: 1e-3 relative for SDs, sigma and fixed effects
  (observed <= 5e-5); 1e-3 absolute for correlations, whose lme4 ends are
  off by up to 6e-4 because lme4 falls back to linear interpolation of its
  coarse zeta grid for .sig02 ("bad spline fit"); our ends are checked to be
  exact roots by an independent optimisation instead.
* clubSandwich vcovCR: SEs 1e-4 relative (observed <= 1.5e-6), whole
  matrices 1e-3 relative to their largest entry.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from sm_hlm import HLM
from sm_hlm import inference as inf
from sm_hlm.simulate import simulate_mixed

ROOT = Path(__file__).resolve().parents[1]
NELS_PATH = ROOT.parent / "shared" / "data" / "nels.csv"
REFS_PATH = ROOT / "validation" / "r" / "inference_refs.json"
FORMULAS = {
    "fit.1": "mscore ~ ses + (ses | school)",
    "fit.2": "mscore ~ flp + ses + flp*ses + (ses | school)",
}
KEYS = [f"{f}_{m}" for f in FORMULAS for m in ("ML", "REML")]
needs_nels = pytest.mark.skipif(
    not NELS_PATH.exists(),
    reason=f"NELS data not found at {NELS_PATH} (the project's shared data set, "
           "checked out beside the repository)")


def _lme4_name(name: str) -> str:
    return "(Intercept)" if name == "Intercept" else name


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def refs() -> dict:
    with open(REFS_PATH) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def nels_fits() -> dict:
    """The four NELS fits, each fitted once for the module."""
    if not NELS_PATH.exists():
        pytest.skip(f"NELS data not found at {NELS_PATH}")
    data = pd.read_csv(NELS_PATH)
    data["school"] = data["school"].astype(str)      # a factor, as in R
    out = {}
    for name, formula in FORMULAS.items():
        model = HLM.from_formula(formula, data)
        for method in ("ML", "REML"):
            out[f"{name}_{method}"] = model.fit(reml=method == "REML")
    return out


@pytest.fixture(scope="module")
def nels_profiles(nels_fits: dict) -> dict:
    return {key: nels_fits[key].conf_int_profile() for key in ("fit.1_ML", "fit.2_REML")}


@pytest.fixture(scope="module")
def sim_data() -> pd.DataFrame:
    """Unbalanced groups (including sizes 1 and 2) and a group-level predictor w."""
    df = simulate_mixed(n_groups=40, mean_group_size=5, min_group_size=1,
                        fe_params={"Intercept": 1.0, "x": 0.5, "z": -0.3},
                        re_names=("Intercept", "x"), cov_re=[[1.0, 0.3], [0.3, 0.5]],
                        scale=1.0, seed=11)
    rng = np.random.default_rng(7)
    df["w"] = rng.normal(size=40)[df["group"] - 1]
    # make sure there are tiny groups: keep 1 row of group 1 and 2 rows of group 2
    drop = df.index[(df["group"] == 1)][1:].append(df.index[(df["group"] == 2)][2:])
    return df.drop(drop).reset_index(drop=True)


@pytest.fixture(scope="module")
def sim_fit(sim_data: pd.DataFrame):
    return HLM.from_formula("y ~ x + z + w + (x | group)", sim_data).fit()


# ======================================================== Satterthwaite (R)
@needs_nels
@pytest.mark.parametrize("key", KEYS)
def test_satterthwaite_matches_lmertest(key: str, refs: dict, nels_fits: dict):
    ref = refs[key]["coefficients"]
    tab = nels_fits[key].satterthwaite()
    assert list(tab.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    assert [_lme4_name(n) for n in tab.index] == ref["names"]
    np.testing.assert_allclose(tab["df"], ref["df"], rtol=1e-3)
    for col in ("Estimate", "Std. Error", "t value"):
        np.testing.assert_allclose(tab[col], ref[col], rtol=1e-4)
    np.testing.assert_allclose(tab["Pr(>|t|)"], ref["Pr(>|t|)"], rtol=1e-2, atol=1e-12)


@needs_nels
@pytest.mark.parametrize("key", ["fit.1_ML", "fit.2_REML"])
def test_vcov_varpar_matches_lmertest(key: str, refs: dict, nels_fits: dict):
    state = inf._satterthwaite_state(nels_fits[key])
    A = np.array(refs[key]["vcov_varpar"])
    np.testing.assert_allclose(state.vcov_varpar, A, rtol=5e-3, atol=1e-3 * np.abs(A).max())
    np.testing.assert_allclose(state.varpar, refs[key]["theta"] + [refs[key]["sigma"]],
                               rtol=1e-3)


@needs_nels
@pytest.mark.parametrize("key", KEYS)
def test_contest_matches_lmertest(key: str, refs: dict, nels_fits: dict):
    res = nels_fits[key]
    for ref in refs[key]["contest"]:
        L = np.array(ref["L"], dtype=float)
        out = inf.contest(res, L)
        if ref["type"] == "t":
            assert len(out) == 1
            np.testing.assert_allclose(out["df"].iloc[0], ref["df"], rtol=1e-3)
            np.testing.assert_allclose(out["Estimate"].iloc[0], ref["Estimate"], rtol=1e-4)
            np.testing.assert_allclose(out["Std. Error"].iloc[0], ref["Std. Error"], rtol=1e-4)
        else:
            assert out["NumDF"].iloc[0] == ref["NumDF"]
            np.testing.assert_allclose(out["DenDF"].iloc[0], ref["DenDF"], rtol=1e-3)
            np.testing.assert_allclose(out["F value"].iloc[0], ref["F value"], rtol=1e-4)


@needs_nels
def test_summary_satterthwaite_uses_df(nels_fits: dict, refs: dict):
    res = nels_fits["fit.2_REML"]
    text = res.summary(ddf="satterthwaite").as_text()
    assert "df" in text
    assert res.satterthwaite() is not None


# ========================================================= Satterthwaite (sim)
def _balanced_ri(m: int = 30, k: int = 8, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), k)
    w = rng.normal(size=m)[g]
    y = 1 + 0.5 * w + rng.normal(size=m)[g] + rng.normal(size=m * k)
    return pd.DataFrame({"g": g, "w": w, "y": y})


def test_satterthwaite_group_level_predictor_has_between_df():
    """Balanced random-intercept model: the df of a group-level predictor are m - 2."""
    res = HLM.from_formula("y ~ w + (1 | g)", _balanced_ri()).fit(reml=True)
    tab = res.satterthwaite()
    np.testing.assert_allclose(tab["df"], [28.0, 28.0], rtol=1e-5)
    np.testing.assert_allclose(tab["Std. Error"], res.bse_fe, rtol=1e-10)
    np.testing.assert_allclose(tab["Pr(>|t|)"],
                               2 * stats.t.sf(np.abs(tab["t value"]), tab["df"]), rtol=1e-12)


def test_satterthwaite_level1_and_level2_df(sim_fit):
    tab = sim_fit.satterthwaite()
    m = sim_fit.model.n_groups
    n = sim_fit.model.nobs
    # the group-level predictor: about the number of groups; level-1 z: about n
    assert 0.5 * m < tab.loc["w", "df"] < 1.5 * m
    assert tab.loc["z", "df"] > 0.6 * n


def test_contest_consistency(sim_fit):
    tab = sim_fit.satterthwaite()
    p = sim_fit.model.k_fe
    eye = np.eye(p)
    rows = inf.contest(sim_fit, eye, joint=False)
    np.testing.assert_allclose(rows["df"], tab["df"], rtol=1e-12)
    # a one-row F test is the square of the t test, with the same df
    one = inf.contest(sim_fit, eye[:1], joint=True)
    assert "t value" in one.columns
    F = inf.contest(sim_fit, eye[[1, 3]])
    t2 = inf.contest(sim_fit, eye[[1, 3]], joint=False)
    assert F["NumDF"].iloc[0] == 2
    assert F["DenDF"].iloc[0] > 0
    # a contrast repeated twice has rank 1: F = t^2 with the t df
    F1 = inf.contest(sim_fit, np.vstack([eye[3], 2 * eye[3]]))
    np.testing.assert_allclose(F1["F value"].iloc[0], t2["t value"].iloc[1] ** 2, rtol=1e-10)
    np.testing.assert_allclose(F1["DenDF"].iloc[0], t2["df"].iloc[1], rtol=1e-10)
    with pytest.raises(ValueError, match="columns"):
        inf.contest(sim_fit, np.ones(p + 1))


def test_contest_rhs_and_bad_input(sim_fit):
    p = sim_fit.model.k_fe
    eye = np.eye(p)
    base = inf.contest(sim_fit, eye[[1, 3]], joint=False)
    shifted = inf.contest(sim_fit, eye[[1, 3]], rhs=[0.5, -1.0], joint=False)
    np.testing.assert_allclose(shifted["t value"],
                               (base["Estimate"] - [0.5, -1.0]) / base["Std. Error"], rtol=1e-12)
    np.testing.assert_allclose(shifted["df"], base["df"], rtol=1e-12)
    # a scalar rhs applies to every row
    np.testing.assert_allclose(inf.contest(sim_fit, eye[[1, 3]], rhs=0.5, joint=False)["t value"],
                               (base["Estimate"] - 0.5) / base["Std. Error"], rtol=1e-12)
    with pytest.raises(ValueError, match="rhs must be a scalar or have 2 entries"):
        inf.contest(sim_fit, eye[[1, 3]], rhs=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="rhs must be"):
        inf.contest(sim_fit, eye[[1, 3]], rhs=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="columns"):
        inf.contest(sim_fit, np.ones((1, 2, p)))


def test_fstat_ddf_rules():
    assert inf._get_fstat_ddf(np.array([10.0])) == 10.0
    assert inf._get_fstat_ddf(np.array([10.0, 10.0])) == 10.0
    assert inf._get_fstat_ddf(np.array([10.0, 1.5])) == 2.0
    E = 10 / 8 + 20 / 18
    assert math.isclose(inf._get_fstat_ddf(np.array([10.0, 20.0])), 2 * E / (E - 2))


def test_richardson_derivatives():
    def f(x):
        return math.exp(x[0]) * math.sin(x[1]) + x[0] ** 2 * x[1] ** 3

    x = np.array([0.3, 1.1])
    H = inf.hessian_richardson(f, x)
    a, b = x
    exact = np.array([[math.exp(a) * math.sin(b) + 2 * b ** 3,
                       math.exp(a) * math.cos(b) + 6 * a * b ** 2],
                      [math.exp(a) * math.cos(b) + 6 * a * b ** 2,
                       -math.exp(a) * math.sin(b) + 6 * a ** 2 * b]])
    np.testing.assert_allclose(H, exact, rtol=1e-8)
    J = inf.jacobian_richardson(lambda v: np.array([v[0] * v[1], np.exp(v[1])]), x)
    np.testing.assert_allclose(J, [[b, a], [0.0, math.exp(b)]], rtol=1e-9)


# ============================================================ profile CIs (R)
@needs_nels
@pytest.mark.parametrize("key", ["fit.1_ML", "fit.2_REML"])
def test_profile_ci_matches_lme4(key: str, refs: dict, nels_profiles: dict):
    ci = nels_profiles[key]
    ref = refs[key]["confint_profile"]
    assert list(ci.columns) == ["2.5 %", "97.5 %", "lme4"]
    assert list(ci["lme4"]) == ref["names"]
    assert list(ci.index[:4]) == ["sd(Intercept|school)", "cor(Intercept,ses|school)",
                                  "sd(ses|school)", "sigma"]
    for i, label in enumerate(ci.index):
        got = ci.iloc[i, :2].to_numpy(float)
        want = np.array([ref["lower"][i], ref["upper"][i]])
        if label.startswith("cor("):
            np.testing.assert_allclose(got, want, atol=1e-3, err_msg=label)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-3, err_msg=label)
    # the tight ones (no spline trouble in lme4): fixed effects and sigma
    fe = [i for i, k in enumerate(ci.index) if not k.startswith(("sd(", "cor("))]
    np.testing.assert_allclose(ci.iloc[fe, :2].to_numpy(float),
                               np.column_stack([np.array(ref["lower"])[fe],
                                                np.array(ref["upper"])[fe]]), rtol=1e-6)


@needs_nels
def test_profile_correlation_ends_are_exact_roots(nels_fits: dict, nels_profiles: dict):
    """Independent check of the correlation profile: fix rho and minimise the
    profiled ML deviance over (theta_11, |theta_2.|) by Nelder-Mead."""
    res = nels_fits["fit.1_ML"]
    model = res.model
    dev = model.deviance_function(reml=False)
    base = dev(res.theta)
    target = stats.norm.ppf(0.975) ** 2

    def profile(rho: float) -> float:
        def f(x: np.ndarray) -> float:
            return dev(np.array([x[0], rho * x[1], math.sqrt(1 - rho ** 2) * x[1]]))
        x0 = [res.theta[0], math.hypot(res.theta[1], res.theta[2])]
        o = optimize.minimize(f, x0, method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
        return o.fun - base

    lo, hi = nels_profiles["fit.1_ML"].loc["cor(Intercept,ses|school)", ["2.5 %", "97.5 %"]]
    assert abs(profile(lo) - target) < 1e-3
    assert abs(profile(hi) - target) < 1e-3


@needs_nels
def test_profile_reml_fit_profiles_ml(nels_fits: dict, nels_profiles: dict):
    """As lme4, a REML fit is profiled on the ML deviance (refitted by ML)."""
    ml = nels_fits["fit.2_ML"].conf_int_profile(which="beta_")
    reml = nels_profiles["fit.2_REML"].loc[ml.index]
    np.testing.assert_allclose(ml.iloc[:, :2].to_numpy(float), reml.iloc[:, :2].to_numpy(float),
                               rtol=1e-6)


# ========================================================== profile CIs (sim)
def test_profile_ci_options(sim_fit):
    ci = sim_fit.conf_int_profile(alpha=0.1, which=["sigma", ".sig01", "x"])
    assert list(ci.index) == ["sigma", "sd(Intercept|group)", "x"]
    assert list(ci.columns) == ["5 %", "95 %", "lme4"]
    assert list(ci["lme4"]) == [".sigma", ".sig01", "x"]
    ests = {"sigma": math.sqrt(sim_fit.scale), "x": sim_fit.fe_params["x"]}
    for k, v in ests.items():
        assert ci.loc[k, "5 %"] < v < ci.loc[k, "95 %"]
    assert list(sim_fit.conf_int_profile(which="theta_").index) == [
        "sd(Intercept|group)", "cor(Intercept,x|group)", "sd(x|group)", "sigma"]
    with pytest.raises(KeyError, match="unknown parameter"):
        sim_fit.conf_int_profile(which=["nope"])
    with pytest.raises(ValueError, match="alpha"):
        sim_fit.conf_int_profile(alpha=1.5)


def test_profile_ci_positions(sim_fit):
    """Integer positions select the same rows as labels; positions out of range
    raise (a negative one used to profile sigma under a fixed effect's label)."""
    by_pos = sim_fit.conf_int_profile(which=[3, 5])
    by_name = sim_fit.conf_int_profile(which=["sigma", "x"])
    pd.testing.assert_frame_equal(by_pos, by_name)
    n_par = len(inf.profile_parameter_names(sim_fit.model))
    for bad in (-1, n_par):
        with pytest.raises(IndexError, match="out of range"):
            sim_fit.conf_int_profile(which=[bad])


def test_profile_ci_fixed_effect_matches_direct_refit(sim_data: pd.DataFrame, sim_fit):
    """At the profile's end for beta_x, the ML deviance of the model with x
    moved to an offset is the ML optimum plus chi2_1(0.95)."""
    ci = sim_fit.conf_int_profile(which=["x"])
    ml = HLM.from_formula("y ~ x + z + w + (x | group)", sim_data).fit(reml=False)
    target = stats.chi2.ppf(0.95, 1)
    for end in ci.iloc[0, :2]:
        d = sim_data.assign(yo=sim_data["y"] - end * sim_data["x"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = HLM.from_formula("yo ~ z + w + (x | group)", d).fit(reml=False)
        assert abs((-2 * r.llf) - (-2 * ml.llf) - target) < 1e-4


def test_profile_ci_sd_lower_end_zero_on_boundary():
    """An SD estimated at zero: the lower end is 0, as lme4 reports."""
    df = simulate_mixed(n_groups=50, mean_group_size=8, fe_params={"Intercept": 1.0, "x": 0.5},
                        re_names=("Intercept", "x"), cov_re=[[1.0, 0.0], [0.0, 0.01]],
                        scale=1.0, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = HLM.from_formula("y ~ x + (1 | group) + (0 + x | group)", df).fit(reml=False)
    assert res.theta[1] == 0.0
    ci = res.conf_int_profile(which="theta_")
    assert ci.loc["sd(x|group)", "2.5 %"] == 0.0
    assert 0 < ci.loc["sd(x|group)", "97.5 %"] < 1.0
    assert list(ci["lme4"]) == [".sig01", ".sig02", ".sigma"]


def test_profile_parameter_names(sim_fit):
    names = inf.profile_parameter_names(sim_fit.model)
    assert list(names.index) == ["sd(Intercept|group)", "cor(Intercept,x|group)", "sd(x|group)",
                                 "sigma", "Intercept", "x", "z", "w"]
    assert list(names["lme4"]) == [".sig01", ".sig02", ".sig03", ".sigma", "(Intercept)", "x",
                                   "z", "w"]


def test_sdcor_theta_roundtrip(sim_fit):
    rd = sim_fit.model.re_design
    sigma = math.sqrt(sim_fit.scale)
    sv = inf._sdcor_from_theta(rd, sim_fit.theta, sigma)
    cov = sim_fit.cov_re.to_numpy()
    np.testing.assert_allclose(sv[[0, 2]], np.sqrt(np.diag(cov)), rtol=1e-12)
    np.testing.assert_allclose(sv[1], cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]), rtol=1e-12)
    np.testing.assert_allclose(inf._theta_from_sdcor(rd, sv, sigma), sim_fit.theta, rtol=1e-12)
    assert inf._theta_from_sdcor(rd, np.array([1.0, 1.0, 1.0]), 1.0) is not None  # |cor| = 1
    assert inf._theta_from_sdcor(rd, np.array([1.0, 0.0, 0.0]), 1.0) is not None  # sd = 0
    # a zero SD: the correlation is reported as 0 (lme4), SDs are scaled by sigma
    np.testing.assert_array_equal(inf._sdcor_from_theta(rd, np.array([1.0, 0.0, 0.0]), 2.0),
                                  [2.0, 0.0, 0.0])


# ================================================================ bootstrap
def test_bootstrap_seeded_reproducible(sim_fit):
    a = sim_fit.bootstrap(12, seed=123, progress=False)
    b = sim_fit.bootstrap(12, seed=123, progress=False)
    c = sim_fit.bootstrap(12, seed=124, progress=False)
    pd.testing.assert_frame_equal(a.replicates, b.replicates)
    assert not np.allclose(a.replicates.to_numpy(), c.replicates.to_numpy())
    # the first k replicates do not depend on n (across a chunk boundary)
    d = inf.bootstrap(sim_fit, 40, seed=123, progress=False)
    np.testing.assert_array_equal(d.replicates.to_numpy()[:12], a.replicates.to_numpy())
    assert a.n_failed == 0 and a.n == 12
    names = list(sim_fit.model.exog_names) + ["sd(Intercept|group)", "cor(Intercept,x|group)",
                                              "sd(x|group)", "sigma"]
    assert list(a.replicates.columns[:len(names)]) == names
    assert list(a.replicates.columns[len(names):]) == sim_fit.model.re_design.vcomp_names()


def test_bootstrap_replicate_equals_full_refit(sim_data: pd.DataFrame, sim_fit):
    """The sufficient-statistics fast path equals building and fitting a new
    model on the simulated response (drawn as documented: u_j, then e)."""
    boot = sim_fit.bootstrap(2, seed=9, progress=False)
    model = sim_fit.model
    fit = sim_fit.fit_result
    rng = np.random.default_rng(9)
    order = model._order
    lam = model.re_design.lambda_(fit.theta)
    sigma = math.sqrt(fit.scale)
    X, Z, codes = model.exog[order], model.exog_re[order], model.group_codes[order]
    for i in range(2):
        u = rng.standard_normal((model.n_groups, model.k_re))
        e = rng.standard_normal(len(order))
        y = X @ fit.fe_params + np.einsum("ij,ij->i", Z, (sigma * u @ lam.T)[codes]) + sigma * e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # same start (theta_hat) as the bootstrap's refits, so the same optimiser path
            r = HLM(y, X, codes, Z).fit(start_params=fit.theta, reml=sim_fit.reml)
        row = boot.replicates.iloc[i]
        np.testing.assert_allclose(row.iloc[:model.k_fe], r.fit_result.fe_params, rtol=1e-7,
                                   atol=1e-8)
        np.testing.assert_allclose(row["sigma"], math.sqrt(r.scale), rtol=1e-7)
        np.testing.assert_allclose(row[model.re_design.vcomp_names()], r.fit_result.vcomp,
                                   rtol=1e-6, atol=1e-8)


def test_bootstrap_intervals_and_bse(sim_fit):
    boot = inf.bootstrap(sim_fit, 150, seed=2, progress=False, alpha=0.1)
    ci = boot.conf_int()
    assert list(ci.columns) == ["5 %", "95 %"]
    assert list(boot.conf_int(0.05).columns) == ["2.5 %", "97.5 %"]
    fe = list(sim_fit.model.exog_names)
    assert np.all(ci.loc[fe, "5 %"] < sim_fit.fe_params) and np.all(sim_fit.fe_params
                                                                    < ci.loc[fe, "95 %"])
    # bootstrap SEs of the fixed effects agree with the model-based ones
    np.testing.assert_allclose(boot.bse[fe], sim_fit.bse_fe, rtol=0.3)
    smry = boot.summary()
    assert {"estimate", "bias", "bse"} <= set(smry.columns)
    np.testing.assert_allclose(boot.estimates[fe], sim_fit.fe_params)


def test_bootstrap_progress_counter(sim_fit, capsys):
    inf.bootstrap(sim_fit, 3, seed=1, progress=True)
    err = capsys.readouterr().err
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert "bootstrap: 3/3" in err
    with pytest.raises(ValueError):
        inf.bootstrap(sim_fit, 0)
    with pytest.raises(ValueError, match="chunk"):
        inf.bootstrap(sim_fit, 3, chunk=0)


# ==================================================== cluster-robust (R)
@needs_nels
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", ["CR0", "CR1", "CR2"])
def test_cov_robust_matches_clubsandwich(key: str, kind: str, refs: dict, nels_fits: dict):
    res = nels_fits[key]
    V = inf.cov_robust(res, kind)
    Vr = np.array(refs[key]["vcovCR"][kind])
    assert list(V.index) == list(res.model.exog_names)
    np.testing.assert_allclose(np.sqrt(np.diag(V)), np.sqrt(np.diag(Vr)), rtol=1e-4)
    np.testing.assert_allclose(V.to_numpy(), Vr, atol=1e-3 * np.abs(Vr).max())


# ================================================== cluster-robust (sim)
def _dense_cr(res, kind: str) -> np.ndarray:
    """Group-by-group dense sandwich (clubSandwich's formulas with n_j x n_j matrices)."""
    model, fit = res.model, res.fit_result
    lam = model.re_design.lambda_(fit.theta)
    psi = lam @ lam.T
    M = fit.cov_fe / fit.scale
    meat = np.zeros((model.k_fe, model.k_fe))
    for g in range(model.n_groups):
        idx = np.flatnonzero(model.group_codes == g)
        X, Z, y = model.exog[idx], model.exog_re[idx], model.endog[idx]
        V = np.eye(len(idx)) + Z @ psi @ Z.T
        e = y - X @ fit.fe_params
        if kind == "CR2":
            w, U = np.linalg.eigh(V)
            Vh = (U * np.sqrt(w)) @ U.T
            B = Vh @ (V - X @ M @ X.T) @ Vh
            w, U = np.linalg.eigh(B)
            ok = w > 1e-12
            Bm = (U * np.where(ok, 1 / np.sqrt(np.where(ok, w, 1)), 0)) @ U.T
            e = Vh @ Bm @ Vh @ e
        c = X.T @ np.linalg.solve(V, e)
        meat += np.outer(c, c)
    out = M @ meat @ M
    return out * model.n_groups / (model.n_groups - 1) if kind == "CR1" else out


@pytest.mark.parametrize("formula", [
    "y ~ x + z + w + (x | group)",
    "y ~ x + w + x:w + (1 | group)",
    "y ~ x + z + w + (1 | group) + (0 + x | group)",
    "y ~ x + z + (x + z | group)",
])
@pytest.mark.parametrize("kind", ["CR0", "CR1", "CR2"])
def test_cov_robust_equals_dense_sandwich(sim_data: pd.DataFrame, formula: str, kind: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = HLM.from_formula(formula, sim_data).fit()
    sizes = res.model.group_sizes
    assert sizes.min() == 1 and (sizes < res.model.k_fe + res.model.k_re).any()
    got = inf.cov_robust(res, kind).to_numpy()
    want = _dense_cr(res, kind)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_cov_robust_cr2_reduces_to_ols_hc2_like_for_tiny_variance():
    """With Psi -> 0, V_j = I and CR2 is the Bell-McCaffrey OLS estimator:
    A_j = (I - H_jj)^{-1/2}."""
    df = simulate_mixed(n_groups=25, mean_group_size=4, fe_params={"Intercept": 1.0, "x": 1.0},
                        re_names=("Intercept",), cov_re=[[1.0]], scale=1.0, seed=3)
    model = HLM.from_formula("y ~ x + (1 | group)", df)
    res = model.results_at(np.array([0.0]), reml=True, compute_vcomp_cov=False)
    X, y = model.exog, model.endog
    XtXi = np.linalg.inv(X.T @ X)
    e = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    meat = np.zeros((2, 2))
    for g in range(model.n_groups):
        idx = np.flatnonzero(model.group_codes == g)
        Xj = X[idx]
        H = Xj @ XtXi @ Xj.T
        w, U = np.linalg.eigh(np.eye(len(idx)) - H)
        c = Xj.T @ ((U / np.sqrt(w)) @ U.T) @ e[idx]
        meat += np.outer(c, c)
    np.testing.assert_allclose(inf.cov_robust(res).to_numpy(), XtXi @ meat @ XtXi, rtol=1e-9)


def test_cov_robust_in_t_test_and_summary(sim_fit):
    V = sim_fit.cov_robust()                    # the fixed effects, p x p
    assert V.shape == (sim_fit.model.k_fe,) * 2
    full = inf.cov_robust(sim_fit, "CR2", full=True)
    names = list(sim_fit.model.data.param_names)
    assert list(full.index) == names
    np.testing.assert_allclose(full.loc[V.index, V.columns], V)
    tt = sim_fit.t_test("x = 0", cov_p=full)
    np.testing.assert_allclose(tt.sd.ravel()[0], math.sqrt(V.loc["x", "x"]), rtol=1e-12)
    np.testing.assert_allclose(np.ravel(tt.effect)[0], sim_fit.fe_params["x"])
    r = np.zeros(len(names))
    r[names.index("w")] = 1.0
    np.testing.assert_allclose(sim_fit.t_test(r, cov_p=full).sd.ravel()[0],
                               math.sqrt(V.loc["w", "w"]), rtol=1e-12)
    # a fixed-effects-only cov_p is padded with the model-based variance-component block
    np.testing.assert_allclose(sim_fit.t_test("x = 0", cov_p=V).sd.ravel()[0],
                               math.sqrt(V.loc["x", "x"]), rtol=1e-12)
    w = sim_fit.wald_test("x = 0, w = 0", cov_p=V, scalar=True)
    b = sim_fit.fe_params[["x", "w"]].to_numpy()
    Vxw = V.loc[["x", "w"], ["x", "w"]].to_numpy()
    np.testing.assert_allclose(w.statistic, b @ np.linalg.solve(Vxw, b), rtol=1e-10)
    smry = sim_fit.summary(cov_type="CR2")
    text = smry.as_text()
    assert "cluster-robust (CR2)" in text
    assert f"{math.sqrt(V.loc['x', 'x']):.4f}" in text
    with pytest.raises(ValueError, match="cov_type and ddf"):
        sim_fit.summary(cov_type="CR2", ddf="satterthwaite")
    with pytest.raises(ValueError, match="rows as independent"):
        sim_fit.cov_robust("HC3")
    with pytest.raises(ValueError, match="cov_type must be one of"):
        sim_fit.cov_robust("CR7")
    np.testing.assert_allclose(inf.cov_robust(sim_fit, "cr1"),
                               inf.cov_robust(sim_fit, "CR0") * 40 / 39, rtol=1e-12)


def test_row_order_does_not_matter(sim_data: pd.DataFrame, sim_fit):
    """Rows in any order (the model sorts by group internally)."""
    shuffled = sim_data.sample(frac=1.0, random_state=3)
    res = HLM.from_formula("y ~ x + z + w + (x | group)", shuffled).fit()
    np.testing.assert_allclose(inf.cov_robust(res, "CR2"), inf.cov_robust(sim_fit, "CR2"),
                               rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(res.satterthwaite()["df"], sim_fit.satterthwaite()["df"],
                               rtol=1e-4)
