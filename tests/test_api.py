"""statsmodels conventions: formula vs arrays, lme4 vs statsmodels syntax, results API."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.base.model import LikelihoodModel, LikelihoodModelResults

import sm_hlm
from sm_hlm.formula.api import hlm
from sm_hlm.simulate import simulate_nels


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return simulate_nels(n_schools=120, seed=5)


@pytest.fixture(scope="module")
def fit(data):
    return sm_hlm.HLM.from_formula("mscore ~ flp * ses + (ses | school)", data).fit(reml=False)


def test_classes(fit):
    assert isinstance(fit.model, LikelihoodModel)
    assert isinstance(fit._results, LikelihoodModelResults)
    assert isinstance(fit, sm_hlm.results.HLMResultsWrapper)


def test_formula_syntaxes_agree(data, fit):
    a = sm_hlm.HLM.from_formula("mscore ~ flp * ses", data, groups="school",
                                re_formula="~ses").fit(reml=False)
    b = hlm("mscore ~ flp + ses + flp:ses + (1 + ses | school)", data).fit(reml=False)
    for other in (a, b):
        np.testing.assert_allclose(other.params, fit.params, rtol=1e-10)
        assert other.llf == pytest.approx(fit.llf, abs=1e-9)


def test_formula_and_arrays_agree(data, fit):
    X = sm.add_constant(pd.DataFrame({"flp": data.flp, "ses": data.ses,
                                      "flp:ses": data.flp * data.ses}))
    X = X.rename(columns={"const": "Intercept"})
    Z = pd.DataFrame({"Intercept": 1.0, "ses": data.ses})
    res = sm_hlm.HLM(data.mscore, X, data.school, Z).fit(reml=False)
    np.testing.assert_allclose(res.fe_params, fit.fe_params, rtol=1e-10)
    np.testing.assert_allclose(res.cov_re, fit.cov_re, rtol=1e-8)
    assert res.llf == pytest.approx(fit.llf, abs=1e-9)
    # numpy in, numpy out
    res_np = sm_hlm.HLM(data.mscore.to_numpy(), X.to_numpy(), data.school.to_numpy(),
                        Z.to_numpy()).fit(reml=False)
    assert isinstance(res_np.params, np.ndarray)
    np.testing.assert_allclose(res_np.params, np.asarray(fit.params), rtol=1e-10)


def test_independent_terms_vs_double_bar(data):
    a = hlm("mscore ~ ses + (1 | school) + (0 + ses | school)", data).fit(reml=False)
    b = hlm("mscore ~ ses + (ses || school)", data).fit(reml=False)
    assert a.cov_re.loc["Intercept", "ses"] == 0.0
    assert a.llf == pytest.approx(b.llf, abs=1e-9)
    assert len(a.model.re_design.terms) == 2
    assert list(a.vcomp.index) == ["Var(Intercept | school)", "Var(ses | school)"]


def test_reml_default_and_criterion(data):
    m = hlm("mscore ~ ses + (1 | school)", data)
    reml = m.fit()
    ml = m.fit(reml=False)
    assert reml.reml and reml.method == "REML" and not ml.reml
    # REML variance estimates exceed ML ones (unbiased for the residual variance)
    assert reml.scale > ml.scale
    assert reml.cov_re.iloc[0, 0] > ml.cov_re.iloc[0, 0]


def test_results_attributes(fit, data):
    names = ["Intercept", "flp", "ses", "flp:ses"]
    assert list(fit.fe_params.index) == names
    assert list(fit.params.index) == names + ["Var(Intercept | school)",
                                              "Cov(Intercept, ses | school)", "Var(ses | school)"]
    assert list(fit.bse.index) == list(fit.params.index)
    np.testing.assert_allclose(fit.bse_fe, fit.bse.iloc[:4])
    np.testing.assert_allclose(fit.tvalues.iloc[:4], fit.fe_params / fit.bse_fe)
    assert fit.pvalues.iloc[0] < 1e-10
    ci = fit.conf_int()
    assert (ci[0] < fit.params).all() and (ci[1] > fit.params).all()
    cov = fit.cov_params()
    np.testing.assert_allclose(cov.loc[names, names], fit.cov_fe)
    assert fit.nobs == len(data)
    assert fit.n_groups == data.school.nunique()
    assert fit.df_resid == len(data) - (4 + 3 + 1)
    assert fit.aic == pytest.approx(-2 * fit.llf + 2 * 8)
    assert fit.bic == pytest.approx(-2 * fit.llf + np.log(len(data)) * 8)
    assert fit.deviance == pytest.approx(-2 * fit.llf)
    assert fit.converged
    rec = fit.optimizer
    assert rec.n_evals >= 1 and rec.start.shape == rec.end.shape == (3,)
    assert np.isfinite(rec.fun_end) and rec.fun_end <= rec.fun_start


def test_random_effects_and_fitted(fit, data):
    re = fit.random_effects
    assert set(re) == set(data.school.unique())
    g = data.school.iloc[0]
    assert list(re[g].index) == ["Intercept", "ses"]
    assert list(fit.random_effects_cov[g].index) == ["Intercept", "ses"]
    fe = fit.fe_params
    X = np.column_stack([np.ones(len(data)), data.flp, data.ses, data.flp * data.ses])
    ranef = fit.ranef().loc[data.school]
    expected = X @ fe.to_numpy() + ranef["Intercept"].to_numpy() + ranef["ses"].to_numpy() * data.ses
    np.testing.assert_allclose(fit.fittedvalues, expected, rtol=1e-12)
    np.testing.assert_allclose(fit.resid, data.mscore - expected, atol=1e-10)
    assert fit.fittedvalues.index.equals(data.index)
    # group coefficients = fixed + BLUP (lme4 coef / BETA.LME)
    gc = fit.group_coefficients
    np.testing.assert_allclose(gc["ses"], fe["ses"] + fit.ranef()["ses"])
    np.testing.assert_allclose(gc["flp"], fe["flp"])


def test_rows_in_any_order_give_same_fit(data, fit):
    shuffled = data.sample(frac=1.0, random_state=3)
    res = hlm("mscore ~ flp * ses + (ses | school)", shuffled).fit(reml=False)
    assert res.llf == pytest.approx(fit.llf, abs=1e-8)
    # another summation order moves theta within the likelihood's flat region (~1e-6)
    np.testing.assert_allclose(res.fittedvalues.loc[data.index], fit.fittedvalues, rtol=1e-5)
    assert res.fittedvalues.index.equals(shuffled.index)


def test_predict(fit, data):
    np.testing.assert_allclose(fit.predict(), fit.fittedvalues)
    new = data.iloc[:10].copy()
    np.testing.assert_allclose(fit.predict(new), fit.fittedvalues.iloc[:10], rtol=1e-12)
    pop = fit.predict(new, random=False)
    X = np.column_stack([np.ones(10), new.flp, new.ses, new.flp * new.ses])
    np.testing.assert_allclose(pop, X @ fit.fe_params.to_numpy())
    unknown = new.assign(school=-1)
    np.testing.assert_allclose(fit.predict(unknown), pop)
    # arrays
    Z = np.column_stack([np.ones(10), new.ses])
    np.testing.assert_allclose(fit.predict(X, exog_re=Z, groups=new.school.to_numpy()),
                               fit.fittedvalues.iloc[:10], rtol=1e-12)


def test_predict_rejects_missing_values(fit, data):
    new = data.iloc[:5].copy()
    new.loc[new.index[2], "ses"] = np.nan
    with pytest.raises(sm_hlm.MissingDataError, match="ses"):
        fit.predict(new)


def test_t_and_wald_tests(fit):
    t = fit.t_test("ses = 0")
    assert t.tvalue.item() == pytest.approx(fit.tvalues["ses"])
    w = fit.wald_test("flp = 0, flp:ses = 0", scalar=True)
    b = fit.fe_params[["flp", "flp:ses"]].to_numpy()
    V = fit.cov_fe.loc[["flp", "flp:ses"], ["flp", "flp:ses"]].to_numpy()
    assert w.statistic == pytest.approx(b @ np.linalg.solve(V, b))


def test_summary_outputs(fit):
    s = fit.summary()
    text = s.as_text()
    for piece in ["maximum likelihood", "AIC", "BIC", "Log-Likelihood", "Deviance", "df.resid",
                  "Scaled residuals", "Random effects", "Std.Dev.", "Corr", "Residual",
                  "Fixed effects", "Std.Err.", "P>|z|", "Correlation of fixed effects",
                  "No. Groups (school)", "No. Observations"]:
        assert piece in text, piece
    assert "<table" in s.as_html()
    assert "\\begin{tabular}" in s.as_latex()
    assert f"{fit.aic:.1f}" in text


def test_marginal_cov_and_dense_loglik(fit, data):
    g = data.school.iloc[0]
    rows = data.index[data.school == g]
    V = fit.marginal_cov(g)
    Z = np.column_stack([np.ones(len(rows)), data.loc[rows, "ses"]])
    np.testing.assert_allclose(V.to_numpy(), Z @ fit.cov_re.to_numpy() @ Z.T
                               + fit.scale * np.eye(len(rows)))
    assert list(V.index) == list(rows)
    assert fit.loglike_dense() == pytest.approx(fit.llf, rel=1e-10)


def test_group_ols_matches_lstsq(data):
    m = hlm("mscore ~ ses + (ses | school)", data)
    B = m.group_ols()
    for g in list(B.index[:15]):
        sub = data[data.school == g]
        X = np.column_stack([np.ones(len(sub)), sub.ses])
        if len(sub) >= 2 and np.ptp(sub.ses) > 0:
            np.testing.assert_allclose(B.loc[g].to_numpy(), np.linalg.lstsq(X, sub.mscore, rcond=None)[0],
                                       rtol=1e-8)
        else:
            assert np.isnan(B.loc[g, "ses"])
            assert B.loc[g, "Intercept"] == pytest.approx(sub.mscore.mean())


def test_results_at_lme4_theta_reproduces_fit(fit):
    again = fit.model.results_at(fit.theta, reml=False)
    np.testing.assert_allclose(again.params, fit.params, rtol=1e-12)
    assert again.llf == pytest.approx(fit.llf, abs=1e-9)


def test_loglike_at_params(fit):
    assert fit.model.loglike(np.asarray(fit.params), scale=fit.scale) == pytest.approx(fit.llf, abs=1e-8)


def test_no_random_effects_is_ols(data):
    m = sm_hlm.HLM.from_formula("mscore ~ ses", data, groups="school", re_formula="0")
    res = m.fit(reml=False)
    ols = sm.OLS.from_formula("mscore ~ ses", data).fit()
    np.testing.assert_allclose(res.fe_params, ols.params, rtol=1e-10)
    assert res.llf == pytest.approx(ols.llf, rel=1e-12)


def test_variance_component_standard_errors_match_dense_information():
    """bse_re: inverse observed information, checked with the notes' dense likelihood."""
    from sm_hlm.groupwise import marginal_loglike_dense
    from sm_hlm.engine.numdiff import hessian_richardson
    from sm_hlm.simulate import simulate_mixed

    d = simulate_mixed(n_groups=40, mean_group_size=8, fe_params={"Intercept": 1.0, "x": 0.5},
                       re_names=["Intercept", "x"], cov_re=[[1.0, 0.3], [0.3, 0.5]], seed=21)
    res = hlm("y ~ x + (x | group)", d).fit(reml=False)
    rd = res.model.re_design
    beta = res.fe_params.to_numpy()

    def minus2ll(v):
        return -2 * marginal_loglike_dense(res.model, beta, rd.cov_from_vcomp(v[:3]), v[3])

    x = np.append(res.vcomp.to_numpy(), res.scale)
    cov = np.linalg.inv(0.5 * hessian_richardson(minus2ll, x, d=0.01))
    np.testing.assert_allclose(res.bse_re.to_numpy(), np.sqrt(np.diag(cov))[:3], rtol=1e-4)
    np.testing.assert_allclose(res.bse.iloc[2:].to_numpy(), res.bse_re.to_numpy())


def test_unnamed_random_effects_columns():
    from sm_hlm.simulate import simulate_mixed

    d = simulate_mixed(n_groups=30, mean_group_size=6, fe_params={"Intercept": 1, "x": 1},
                       re_names=["Intercept", "x"], seed=1)
    X = np.column_stack([np.ones(len(d)), d.x])
    m = sm_hlm.HLM(d.y.to_numpy(), X, d.group.to_numpy(), X)
    assert m.exog_re_names == ["Intercept", "z1"]
    assert sm_hlm.HLM(d.y.to_numpy(), X, d.group.to_numpy(), d.x.to_numpy()).exog_re_names == ["z0"]
