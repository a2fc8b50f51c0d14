"""lme4's toolbox: drop1 (lme4 / lmerTest), ranef(cond_var=True), simulate, refit."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from sm_hlm import AR1, HLM, Exchangeable, Heteroscedastic, Unstructured
from sm_hlm.simulate import simulate_nels
from sm_hlm.terms import droppable_terms, fixed_terms

from .conftest import load_csv, load_json

REF = load_json("report_refs.json")
FORMULA = "mscore ~ flp*ses + C(urbanicity, Treatment('urban')) + public + (ses | school)"
URB = "C(urbanicity, Treatment('urban'))"


def _quiet(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f()


def _r_name(name: str) -> str:
    return "urbanicity" if name == URB else name


@pytest.fixture(scope="module")
def nels_fits(nels):
    return {key: _quiet(lambda: HLM.from_formula(FORMULA, nels).fit(reml=reml))
            for key, reml in [("nels_ML", False), ("nels_REML", True)]}


@pytest.mark.parametrize("key", ["nels_ML", "nels_REML"])
def test_drop1_chisq_matches_lme4(nels_fits, key):
    r = REF["drop1"][key]
    tab = nels_fits[key].drop1()
    assert [_r_name(n) for n in tab.index] == ["<none>", "urbanicity", "flp:ses", "public"]
    assert sorted(_r_name(n) for n in tab.index) == sorted(r["rows"])
    for i, row in enumerate(r["rows"]):
        ours = tab.loc[URB if row == "urbanicity" else row]
        # lme4's ML optimum and ours differ by ~1e-9 in deviance
        assert ours["AIC"] == pytest.approx(r["AIC"][i], abs=1e-5)
        if i:
            assert ours["npar"] == r["npar"][i]
            assert ours["LRT"] == pytest.approx(r["LRT"][i], abs=1e-5)
            assert ours["Pr(Chi)"] == pytest.approx(r["p"][i], rel=1e-4)
    assert tab.attrs["refitted_ml"] == (key == "nels_REML")


@pytest.mark.parametrize("key", ["nels_ML", "nels_REML"])
def test_drop1_f_matches_lmertest(nels_fits, key):
    r = REF["drop1_F"][key]
    res = nels_fits[key]
    # lme4 stops short on the REML fit (max|grad| 3e-3 warning): ours is at least as good
    assert res.llf >= r["logLik"] - 1e-7
    at_lme4 = _quiet(lambda: res.model.results_at(np.array(r["theta"]), reml=r["REML"]))
    # at lme4's theta: F and sums of squares to 1e-6; the df come from numerical
    # derivatives (lmerTest: numDeriv, ours: Richardson), observed 2e-6 apart
    for fit, rtol, df_rtol in [(at_lme4, 1e-6, 1e-5), (res, 2e-4, 2e-4)]:
        tab = fit.drop1(test="F")
        for i, row in enumerate(r["rows"]):
            ours = tab.loc[URB if row == "urbanicity" else row]
            assert ours["NumDF"] == r["NumDF"][i]
            assert ours["F value"] == pytest.approx(r["F"][i], rel=rtol)
            assert ours["Sum Sq"] == pytest.approx(r["SumSq"][i], rel=rtol)
            assert ours["Mean Sq"] == pytest.approx(r["MeanSq"][i], rel=rtol)
            assert ours["DenDF"] == pytest.approx(r["DenDF"][i], rel=df_rtol)
            assert ours["Pr(>F)"] == pytest.approx(r["p"][i], rel=10 * rtol)


def test_ranef_cond_var_matches_lme4_nels(nels_fits):
    r = REF["ranef_condvar"]
    theta = np.array(REF["drop1"]["nels_REML"]["theta"])
    res = _quiet(lambda: nels_fits["nels_REML"].model.results_at(theta, reml=True))
    tab = res.ranef(cond_var=True)
    assert list(tab.columns) == ["Intercept", "ses", "condvar(Intercept)", "condvar(ses)",
                                 "condsd(Intercept)", "condsd(ses)"]
    for i, g in enumerate(r["schools"]):
        row = tab.loc[g]
        assert row["Intercept"] == pytest.approx(r["ranef"][i]["Intercept"], rel=1e-7)
        assert row["ses"] == pytest.approx(r["ranef"][i]["ses"], rel=1e-7)
        np.testing.assert_allclose(row[["condsd(Intercept)", "condsd(ses)"]], r["condsd"][i],
                                   rtol=1e-7)
        np.testing.assert_allclose(res.random_effects_cov[g].to_numpy(), r["condcov"][i],
                                   rtol=1e-7)


def test_ranef_cond_var_matches_lme4_core():
    r = load_json("core_lme4.json")["slope_REML"]
    res = _quiet(lambda: HLM.from_formula(r["formula"], load_csv(r["data"])).fit(reml=True))
    tab = res.ranef(cond_var=True)
    cov = np.array(r["condvar"]["cov"])                        # (G, q, q)
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    idx = pd.Index(r["condvar"]["group"])
    np.testing.assert_allclose(tab.loc[idx, ["condsd(Intercept)", "condsd(x)"]], sd, rtol=1e-5)
    np.testing.assert_allclose(tab.loc[idx, ["condvar(Intercept)", "condvar(x)"]] ** 0.5, sd,
                               rtol=1e-5)
    assert list(res.ranef().columns) == ["Intercept", "x"]


# ------------------------------------------------------------------ sim data
@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    d = simulate_nels(n_schools=40, mean_size=8, seed=17)
    rng = np.random.default_rng(2)
    d["urb"] = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)][d.school - 1001]
    return d


@pytest.fixture(scope="module")
def fit(data):
    return _quiet(lambda: HLM.from_formula("mscore ~ flp*ses + C(urb) + (ses | school)",
                                           data).fit(reml=False))


def test_marginality(fit):
    terms = fixed_terms(fit.model)
    assert [t.name for t in terms] == ["Intercept", "C(urb)", "flp", "ses", "flp:ses"]
    assert terms[1].columns == (1, 2)
    assert [t.name for t in droppable_terms(terms)] == ["C(urb)", "flp:ses"]


def test_drop1_refits_by_ml(fit, data):
    tab = fit.drop1()
    for name, formula in [("C(urb)", "mscore ~ flp*ses + (ses | school)"),
                          ("flp:ses", "mscore ~ flp + ses + C(urb) + (ses | school)")]:
        sub = _quiet(lambda: HLM.from_formula(formula, data).fit(reml=False))
        assert tab.loc[name, "AIC"] == pytest.approx(sub.aic, abs=1e-6)
        assert tab.loc[name, "LRT"] == pytest.approx(2 * (fit.llf - sub.llf), abs=1e-6)
    assert tab.loc["C(urb)", "npar"] == 2
    assert tab.loc["<none>", "AIC"] == pytest.approx(fit.aic)
    none = fit.drop1(test="none")
    assert list(none.columns) == ["npar", "AIC"]
    with pytest.raises(ValueError, match="test must be"):
        fit.drop1(test="LRT")


def test_drop1_f_is_the_wald_f(fit):
    tab = fit.drop1(test="F")
    cols = [c for c in fit.fe_params.index if c.startswith("C(urb)")]
    b = fit.fe_params[cols].to_numpy()
    V = fit.cov_fe.loc[cols, cols].to_numpy()
    assert tab.loc["C(urb)", "F value"] == pytest.approx(b @ np.linalg.solve(V, b) / 2, rel=1e-10)
    assert tab.loc["flp:ses", "F value"] == pytest.approx(
        (fit.fe_params["flp:ses"] / fit.bse_fe["flp:ses"]) ** 2, rel=1e-10)
    assert tab.loc["flp:ses", "DenDF"] == pytest.approx(
        fit.satterthwaite().loc["flp:ses", "df"], rel=1e-10)


def test_simulate_moments_and_seed(fit):
    model = fit.model
    sims = fit.simulate(4000, seed=5)
    assert sims.shape == (int(fit.nobs), 4000) and list(sims.columns[:2]) == ["sim_1", "sim_2"]
    assert sims.index.equals(fit.fittedvalues.index)
    pd.testing.assert_frame_equal(fit.simulate(3, seed=9), fit.simulate(3, seed=9))
    assert not fit.simulate(3, seed=9).equals(fit.simulate(3, seed=10))
    Y = sims.to_numpy()
    eta = model.exog @ fit.fe_params.to_numpy()
    psi = fit.cov_re.to_numpy()
    Z = model.exog_re
    var = np.einsum("ij,jk,ik->i", Z, psi, Z) + fit.scale
    se_mean = np.sqrt(var / Y.shape[1])
    assert np.max(np.abs(Y.mean(axis=1) - eta) / se_mean) < 5
    # variances and within-group covariances (relative MC error ~ 2.2%)
    np.testing.assert_allclose(Y.var(axis=1), var, rtol=0.12)
    rows = np.flatnonzero(model.group_codes == 0)[:2]
    other = np.flatnonzero(model.group_codes == 1)[0]
    c = np.cov(Y[[rows[0], rows[1], other]])
    assert c[0, 1] == pytest.approx(Z[rows[0]] @ psi @ Z[rows[1]], rel=0.15)
    assert abs(c[0, 2]) < 5 * np.sqrt(var[rows[0]] * var[other] / Y.shape[1])
    cond = fit.simulate(4000, seed=6, use_u=True).to_numpy()
    np.testing.assert_allclose(cond.var(axis=1).mean(), fit.scale, rtol=0.02)
    assert np.max(np.abs(cond.mean(axis=1) - np.asarray(fit.fittedvalues))
                  / np.sqrt(fit.scale / 4000)) < 5


def test_refit(fit, data):
    same = fit.refit(fit.model.endog)
    assert same.llf == pytest.approx(fit.llf, abs=1e-8) and same.reml == fit.reml
    y = fit.simulate(1, seed=3)["sim_1"]
    new = _quiet(lambda: fit.refit(y))
    # the same model fitted from scratch, from the same start (refit starts at theta)
    direct = _quiet(lambda: HLM.from_formula("mscore ~ flp*ses + C(urb) + (ses | school)",
                                             data.assign(mscore=y.to_numpy())).fit(
        reml=False, start_params=fit.theta))
    assert new.llf == pytest.approx(direct.llf, abs=1e-9)
    np.testing.assert_allclose(new.params, direct.params, rtol=1e-9)
    # the refitted model keeps the formula: new data can be predicted
    np.testing.assert_allclose(new.predict(data.iloc[:5]), direct.predict(data.iloc[:5]),
                               rtol=1e-9)
    with pytest.raises(ValueError, match="rows"):
        fit.refit(y.iloc[:-1])
    with pytest.raises(ValueError, match="missing"):
        fit.refit(np.r_[np.nan, y.to_numpy()[1:]])


def test_refit_and_drop1_with_residual_structure():
    d = load_csv("panel_ri_ar1.csv")
    res = _quiet(lambda: HLM.from_formula("y ~ wave*trt + (1 | subject)", d,
                                          residual=AR1(time="wave")).fit(reml=False))
    again = res.refit(res.model.endog)
    assert again.llf == pytest.approx(res.llf, abs=1e-6)
    tab = res.drop1()
    sub = _quiet(lambda: HLM.from_formula("y ~ wave + trt + (1 | subject)", d,
                                          residual=AR1(time="wave")).fit(reml=False))
    assert list(tab.index) == ["<none>", "wave:trt"]
    assert tab.loc["wave:trt", "AIC"] == pytest.approx(sub.aic, abs=1e-5)


@pytest.mark.parametrize("structure", [lambda: AR1(time="wave") * Heteroscedastic(by="wave"),
                                       lambda: Unstructured(position="wave"),
                                       lambda: Exchangeable()])
def test_simulate_with_residual_structure(structure):
    d = load_csv("panel_ri_ar1.csv")
    res = _quiet(lambda: HLM.from_formula("y ~ wave*trt + (1 | subject)", d,
                                          residual=structure()).fit())
    nsim = 4000
    Y = res.simulate(nsim, seed=12).to_numpy()
    model = res.model
    for code in (0, 3, 17):
        rows = np.flatnonzero(model.group_codes == code)
        V = res.marginal_cov(model.group_labels[code]).to_numpy()   # Z Psi Z' + sigma^2 S R S
        C = np.cov(Y[rows])
        # sampling SE of a covariance: sqrt((V_ii V_jj + V_ij^2) / nsim)
        se = np.sqrt((np.outer(np.diag(V), np.diag(V)) + V ** 2) / nsim)
        assert np.max(np.abs(C - V) / se) < 5
        eta = model.exog[rows] @ res.fe_params.to_numpy()
        assert np.max(np.abs(Y[rows].mean(axis=1) - eta) / np.sqrt(np.diag(V) / nsim)) < 5
