"""Precision weights (lme4's weights=) and survey weights (pseudo-ML), issue 9.

References: validation/r/weights_lme4.R (lme4 with weights=, and plain lme4 on
replicated data sets) and the replication identities of unscaled integer
survey weights.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import sm_hlm
from sm_hlm import HLM

from .conftest import load_csv, load_json

REF = load_json("weights_lme4.json")
PREC = REF["precision"]


def _fit(formula, data, reml, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        return HLM.from_formula(formula, data, **kw).fit(reml=reml)


@pytest.fixture(scope="module")
def prec_fits() -> dict:
    d = load_csv("weights_prec.csv")
    return {k: _fit(r["formula"], d, r["REML"], weights="w") for k, r in PREC.items()}


# ------------------------------------------------------------ precision weights
@pytest.mark.parametrize("key", sorted(PREC))
def test_precision_loglik_and_fixef(prec_fits, key):
    r, res = PREC[key], prec_fits[key]
    assert res.converged
    assert res.llf >= r["logLik"] - 1e-6
    assert abs(res.llf - r["logLik"]) <= 1e-6
    assert res.deviance == pytest.approx(r["deviance"], abs=2e-6)
    ref = np.array(list(r["fixef"].values()))
    np.testing.assert_array_less(np.abs(res.fe_params.to_numpy() - ref),
                                 1e-5 * np.maximum(np.abs(ref), 1.0))
    assert res.nobs == r["nobs"]


@pytest.mark.parametrize("key", sorted(PREC))
def test_precision_variance_parts(prec_fits, key):
    r, res = PREC[key], prec_fits[key]
    np.testing.assert_allclose(res.theta, r["theta"], rtol=1e-3, atol=1e-5)
    assert np.sqrt(res.scale) == pytest.approx(r["sigma"], rel=1e-5)
    np.testing.assert_allclose(res.cov_fe.to_numpy(), np.array(r["vcov"]), rtol=1e-3)


@pytest.mark.parametrize("key", sorted(PREC))
def test_precision_blups_fitted_pearson(prec_fits, key):
    r, res = PREC[key], prec_fits[key]
    re = res.ranef()
    ref = pd.DataFrame(r["ranef"]).set_index("group")
    ref.columns = ["Intercept" if c == "(Intercept)" else c for c in ref.columns]
    np.testing.assert_allclose(re.loc[ref.index, ref.columns].to_numpy(), ref.to_numpy(),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.fittedvalues), r["fitted"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.resid), r["resid"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.resid_pearson), r["pearson"], rtol=1e-4,
                               atol=1e-5)


def test_precision_unit_weights_are_unweighted():
    d = load_csv("weights_prec.csv")
    a = _fit("y ~ x + z + (x | group)", d, True, weights=np.ones(len(d)))
    b = _fit("y ~ x + z + (x | group)", d, True)
    assert a.llf == pytest.approx(b.llf, abs=1e-8)
    np.testing.assert_allclose(a.fe_params, b.fe_params, rtol=1e-7)


def test_precision_weights_arrays_constructor():
    d = load_csv("weights_prec.csv")
    f = HLM.from_formula("y ~ x + z + (x | group)", d, weights="w")
    m = HLM(f.endog, f.exog, d["group"], f.exog_re, weights=d["w"].to_numpy())
    a = m.fit(reml=False)
    assert a.llf == pytest.approx(PREC["slope_ml"]["logLik"], abs=1e-6)


def test_precision_weight_scale_changes_only_constant():
    """w -> c w: sigma^2 -> c sigma^2, fixed effects unchanged (lme4's convention)."""
    d = load_csv("weights_prec.csv")
    a = _fit("y ~ x + z + (1 | group)", d, False, weights="w")
    b = _fit("y ~ x + z + (1 | group)", d, False, weights=3.0 * d["w"])
    np.testing.assert_allclose(a.fe_params, b.fe_params, rtol=1e-6)
    assert b.scale == pytest.approx(3.0 * a.scale, rel=1e-6)


# ------------------------------------------------------------ bad weights
@pytest.mark.parametrize("bad, msg", [(0.0, "1 zero weight"), (-1.0, "1 negative weight"),
                                      (np.inf, "1 infinite weight")])
def test_bad_precision_weights(bad, msg):
    d = load_csv("weights_prec.csv")
    d.loc[5, "w"] = bad
    with pytest.raises(ValueError, match=msg):
        HLM.from_formula("y ~ x + (1 | group)", d, weights="w")
    with pytest.raises(ValueError, match=msg.replace("1 ", "")):
        HLM(d["y"], np.ones((len(d), 1)), d["group"], weights=d["w"].to_numpy())


def test_nan_weight_dropped_or_raised():
    d = load_csv("weights_prec.csv")
    d.loc[[3, 7], "w"] = np.nan
    with pytest.warns(sm_hlm.DroppedRowsWarning, match="dropped 2 of"):
        m = HLM.from_formula("y ~ x + (1 | group)", d, weights="w")
    assert m.n_dropped == 2 and len(m.endog) == len(d) - 2
    with pytest.raises(sm_hlm.MissingDataError, match="w"):
        HLM.from_formula("y ~ x + (1 | group)", d, weights="w", missing="raise")
    with pytest.raises(sm_hlm.MissingDataError, match=r"'weights' \(2 rows\)"):
        HLM(d["y"], np.ones((len(d), 1)), d["group"], weights=d["w"].to_numpy())


def test_weights_unknown_column_and_length():
    d = load_csv("weights_prec.csv")
    with pytest.raises(KeyError, match="nope"):
        HLM.from_formula("y ~ x + (1 | group)", d, weights="nope")
    with pytest.raises(ValueError, match="rows"):
        HLM.from_formula("y ~ x + (1 | group)", d, weights=np.ones(3))
    with pytest.raises(ValueError, match="not both"):
        HLM.from_formula("y ~ x + (1 | group)", d, weights="w", survey_weights=["w", "w"])


# ------------------------------------------------------------ survey weights
REP = REF["replicated"]
FORM = "y ~ x + (x | group)"


def _survey(d, w1, w2, scaling="none", **kw):
    return _fit(FORM, d, False, survey_weights=[w1, w2], weight_scaling=scaling, **kw)


@pytest.fixture(scope="module")
def surv() -> pd.DataFrame:
    return load_csv("weights_surv.csv")


def _replicate(d, w1, w2):
    rows = d.loc[d.index.repeat(np.asarray(w1, int))]
    extra = rows[np.asarray(w2, int)[d.index.get_indexer(rows.index)] == 2].copy()
    extra["group"] = extra["group"] + 10000
    return pd.concat([rows, extra], ignore_index=True)


@pytest.mark.parametrize("case", ["level1", "level2", "both"])
def test_replication_equals_lme4_and_unweighted(surv, case):
    one = np.ones(len(surv))
    w1 = surv["w1"].to_numpy() if case != "level2" else one
    w2 = surv["w2"].to_numpy() if case != "level1" else one
    res = _survey(surv, w1, w2)
    ref = REP[case]
    assert res.converged
    assert abs(res.llf - ref["logLik"]) <= 1e-6
    fe = np.array(list(ref["fixef"].values()))
    np.testing.assert_array_less(np.abs(res.fe_params.to_numpy() - fe),
                                 1e-5 * np.maximum(np.abs(fe), 1.0))
    np.testing.assert_allclose(res.theta, ref["theta"], rtol=1e-3, atol=1e-5)
    assert np.sqrt(res.scale) == pytest.approx(ref["sigma"], rel=1e-5)
    # the model-based covariance is that of the replicated data
    np.testing.assert_allclose(res.fit_result.cov_fe, np.array(ref["vcov"]), rtol=1e-3)
    # and sm_hlm's own unweighted fit of the replicated data
    rep = _replicate(surv, w1, w2)
    assert len(rep) == ref["nrow"]
    plain = _fit(FORM, rep, False)
    assert res.llf == pytest.approx(plain.llf, abs=1e-6)
    np.testing.assert_allclose(res.fe_params, plain.fe_params, rtol=1e-6)
    np.testing.assert_allclose(res.ranef().loc[surv["group"].unique()],
                               plain.ranef().loc[surv["group"].unique()], rtol=1e-4, atol=1e-6)


def test_survey_gradient_matches_numerical(surv):
    m = HLM.from_formula(FORM, surv, survey_weights=["w1", "w2"], weight_scaling="none")
    dev = m.deviance_function(reml=False)
    th = np.array([0.8, 0.1, 0.5])
    g = dev.gradient(th)
    h = 1e-6
    num = [(dev(th + h * e) - dev(th - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-6)


def test_survey_scalings(surv):
    from sm_hlm.weights import scale_level
    codes = pd.factorize(surv["group"], sort=True)[0]
    m = codes.max() + 1
    w = surv["w1"].to_numpy() * (1 + surv["x"].abs().to_numpy())
    n_j = np.bincount(codes)
    size = scale_level(w, codes, m, "size")
    np.testing.assert_allclose(np.bincount(codes, weights=size), n_j)
    eff = scale_level(w, codes, m, "effective")
    s1, s2 = np.bincount(codes, weights=w), np.bincount(codes, weights=w * w)
    np.testing.assert_allclose(np.bincount(codes, weights=eff), s1 ** 2 / s2)
    surv = surv.assign(wx=w)
    mod = HLM.from_formula(FORM, surv, survey_weights=["wx", "w2"], weight_scaling="gk")
    np.testing.assert_array_equal(mod.survey.row, 1.0)
    w2 = surv.groupby("group")["w2"].first().to_numpy()
    np.testing.assert_allclose(mod.survey.group, w2 * s1 / n_j)
    # size scaling: multiplying a group's level-1 weights by a constant changes nothing
    a = _survey(surv, w, surv["w2"], scaling="size")
    b = _survey(surv, w * np.where(codes % 2 == 0, 3.0, 1.0), surv["w2"], scaling="size")
    assert a.llf == pytest.approx(b.llf, abs=1e-8)


def test_survey_refusals(surv):
    m = HLM.from_formula(FORM, surv, survey_weights=["w1", "w2"])
    with pytest.raises(ValueError, match="REML is not defined with survey weights"):
        m.fit()
    with pytest.raises(ValueError, match="REML is not defined with survey weights"):
        m.results_at(np.array([1.0, 0.0, 0.5]))
    bad = surv.copy()
    g0 = bad["group"].iloc[0]
    bad.loc[bad.index[0], "w2"] = 7.0
    with pytest.raises(ValueError, match=f"varies within group {g0} "):
        HLM.from_formula(FORM, bad, survey_weights=["w1", "w2"])
    with pytest.raises(ValueError, match="weight_scaling"):
        HLM.from_formula(FORM, surv, survey_weights=["w1", "w2"], weight_scaling="bogus")
    with pytest.raises(ValueError, match="two levels"):
        HLM.from_formula(FORM, surv, survey_weights=["w1"])
    with pytest.raises(TypeError, match="list"):
        HLM.from_formula(FORM, surv, survey_weights="w1")
    bad = surv.copy()
    bad.loc[4, "w1"] = -2.0
    with pytest.raises(ValueError, match="'w1'.*1 negative"):
        HLM.from_formula(FORM, bad, survey_weights=["w1", "w2"])


def test_survey_sandwich_default_and_summary(surv):
    res = _survey(surv, "w1", "w2", scaling="size")
    assert res.cov_type == "sandwich"
    np.testing.assert_allclose(res.bse_fe, np.sqrt(np.diag(res.cov_fe_sandwich)))
    np.testing.assert_allclose(res.bse[:2], res.bse_fe)
    model_based = HLM.from_formula(FORM, surv, survey_weights=["w1", "w2"]).fit(
        reml=False, cov_type="model")
    np.testing.assert_allclose(model_based.bse_fe, np.sqrt(np.diag(res.fit_result.cov_fe)))
    text = res.summary().as_text()
    assert "pseudo-likelihood" in text and "size" in text and "sandwich" in text
    plain = _fit(FORM, surv, False)
    with pytest.raises(ValueError, match="Wald"):
        sm_hlm.compare(plain, res)
    with pytest.raises(NotImplementedError, match="survey weights"):
        res.satterthwaite()


def test_sandwich_equals_cr1_unweighted(surv):
    """Binder's estimator of an unweighted fit is clubSandwich's CR1 (m / (m - 1) CR0)."""
    res = HLM.from_formula(FORM, surv).fit(reml=False, cov_type="sandwich")
    cr0 = res.cov_robust("CR0").to_numpy()
    m = res.n_groups
    np.testing.assert_allclose(res.cov_fe_sandwich.to_numpy(), m / (m - 1) * cr0, rtol=1e-8)


def test_sandwich_level2_weights_positive_definite(surv):
    """With level-2 weights the sandwich is finite and positive definite."""
    res = _survey(surv, np.ones(len(surv)), surv["w2"])
    from sm_hlm.weights import sandwich_cov_fe
    cov = sandwich_cov_fe(res._results)
    assert np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0)


def test_survey_level2_scale_invariance(surv):
    """Multiplying every level-2 weight by 1000 multiplies the deviance by 1000 (plus a
    constant): same estimates, and the fit still converges."""
    a = _survey(surv, "w1", "w2", scaling="size")
    big = surv.assign(w2=1000.0 * surv["w2"])
    b = _survey(big, "w1", "w2", scaling="size")
    assert a.converged and b.converged
    np.testing.assert_allclose(b.fe_params, a.fe_params, rtol=1e-6)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-4, atol=1e-6)
    assert b.scale == pytest.approx(a.scale, rel=1e-6)
    np.testing.assert_allclose(b.bse_fe, a.bse_fe, rtol=1e-5)


@pytest.mark.parametrize("kind", ["unweighted", "precision", "survey"])
def test_vcomp_scores_vanish_at_the_ml_estimates(surv, kind):
    """The per-group scores in (vcomp, sigma^2) sum to zero at the (pseudo-)ML optimum,
    and the analytic scores match a numerical derivative of the log-likelihood."""
    from sm_hlm.weights import vcomp_scores
    kw = {"unweighted": {}, "precision": {"weights": "w1"},
          "survey": {"survey_weights": ["w1", "w2"]}}[kind]
    res = HLM.from_formula(FORM, surv, **kw).fit(reml=False)._results
    S = vcomp_scores(res)
    total = S.sum(axis=0)
    scale = np.sqrt((S ** 2).sum(axis=0))
    np.testing.assert_array_less(np.abs(total), 1e-4 * scale)
    # against -1/2 d(deviance)/d(vcomp, sigma^2) at a point off the optimum
    from sm_hlm.results import vcomp_objective
    rd = res.model.re_design
    dev = res.model.deviance_function(reml=False)
    f = vcomp_objective(rd, res.fit_result.fe_params, lambda rest: (dev, 0.0))
    rr, cc = rd.vcomp_index()
    x = np.append(res.fit_result.cov_re[rr, cc], res.scale) * 1.1
    cov = rd.cov_from_vcomp(x[:-1])
    res2 = res.model.results_at(rd.theta_from_cov(cov, x[-1]), reml=False,
                                compute_vcomp_cov=False)._results
    # results_at profiles beta and sigma^2: evaluate the scores at (beta, x) directly
    import dataclasses
    fit2 = dataclasses.replace(res2.fit_result, fe_params=res.fit_result.fe_params,
                               cov_re=cov, scale=x[-1],
                               theta=rd.theta_from_cov(cov, x[-1]))
    res2.fit_result = fit2
    analytic = vcomp_scores(res2).sum(axis=0)
    h = 1e-5 * np.abs(x)
    num = np.array([-(f(x + hi * e) - f(x - hi * e)) / (4 * hi)
                    for hi, e in zip(h, np.eye(len(x)))])
    np.testing.assert_allclose(analytic, num, rtol=1e-5, atol=1e-6)


def test_survey_bse_re_is_sandwich(surv):
    res = _survey(surv, "w1", "w2", scaling="size")
    from sm_hlm.weights import sandwich_cov_vcomp
    full = sandwich_cov_vcomp(res._results)
    k = res.k_vcomp
    np.testing.assert_allclose(res.bse_re, np.sqrt(np.diag(full[:k, :k])))
    assert np.all(np.linalg.eigvalsh(full) > 0)


def test_weighted_results_pickle_and_refit(surv):
    import pickle
    res = _survey(surv, "w1", "w2", scaling="effective")
    back = pickle.loads(pickle.dumps(res))
    np.testing.assert_allclose(back.bse, res.bse)
    assert back.model.weight_scaling == "effective"
    # refit keeps the weights (same response: same estimates)
    again = res.refit(surv["y"].to_numpy())
    assert again.llf == pytest.approx(res.llf, abs=1e-6)
    p = _fit("y ~ x + z + (1 | group)", load_csv("weights_prec.csv"), False, weights="w")
    assert p.refit(p.model.endog).llf == pytest.approx(p.llf, abs=1e-6)


@pytest.mark.parametrize("reml", [False, True])
def test_precision_gradient_and_recomputed_loglik(reml):
    d = load_csv("weights_prec.csv")
    m = HLM.from_formula("y ~ x + z + (x | group)", d, weights="w")
    dev = m.deviance_function(reml=reml)
    th = np.array([0.9, 0.2, 0.4])
    h = 1e-6
    num = [(dev(th + h * e) - dev(th - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(dev.gradient(th), num, rtol=1e-5, atol=1e-6)
    res = m.fit(reml=reml)
    check = m.deviance_at_estimates(res.theta, res.fit_result.fe_params, res.scale, reml=reml)
    assert -0.5 * check == pytest.approx(res.llf, abs=1e-8)


def test_survey_scores_against_dense_groups(surv):
    """Per-group scores (fixed effects and variance components) from the stable QR form
    against dense V_j = Z_j Psi Z_j' + sigma^2 I built group by group (rows scaled)."""
    from sm_hlm.weights import vcomp_scores
    res = _survey(surv, "w1", "w2", scaling="size")._results
    mod, fit = res.model, res.fit_result
    w1, w2 = mod.survey.row, mod.survey.group
    r_all = mod.endog - mod.exog @ fit.fe_params
    S = vcomp_scores(res)
    rr, cc = mod.re_design.vcomp_index()
    fe_scores = []
    for j in range(mod.n_groups):             # the dense oracle, group by group
        idx = np.flatnonzero(mod.group_codes == j)
        s = np.sqrt(w1[idx])
        Z, X, r = mod.exog_re[idx] * s[:, None], mod.exog[idx] * s[:, None], r_all[idx] * s
        V = Z @ fit.cov_re @ Z.T + fit.scale * np.eye(len(idx))
        Vi = np.linalg.inv(V)
        fe_scores.append(w2[j] * X.T @ Vi @ r)
        expect = []
        for a, b in zip(rr, cc):
            E = np.zeros_like(fit.cov_re)
            E[a, b] = E[b, a] = 1.0
            dV = Z @ E @ Z.T
            expect.append(-0.5 * (np.trace(Vi @ dV) - r @ Vi @ dV @ Vi @ r))
        n_w = w1[idx].sum()
        expect.append(-0.5 * (np.trace(Vi) + (n_w - len(idx)) / fit.scale - r @ Vi @ Vi @ r))
        np.testing.assert_allclose(S[j], w2[j] * np.array(expect), rtol=1e-8, atol=1e-10)
    U = np.array(fe_scores)
    m = mod.n_groups
    expect_cov = fit.cov_fe @ ((m / (m - 1)) * U.T @ U) @ fit.cov_fe
    np.testing.assert_allclose(res.cov_fe_sandwich.to_numpy(), expect_cov, rtol=1e-8)


def test_cov_type_checked(surv):
    m = HLM.from_formula(FORM, surv)
    with pytest.raises(ValueError, match="cov_type"):
        m.fit(reml=False, cov_type="robust")
    from sm_hlm.residual import AR1
    d = surv.assign(t=surv.groupby("group").cumcount())
    mr = HLM.from_formula("y ~ x + (1 | group)", d, residual=AR1(time="t"))
    with pytest.raises(NotImplementedError, match="sandwich"):
        mr.fit(reml=False, cov_type="sandwich")
    with pytest.raises(NotImplementedError, match="residual structure"):
        HLM.from_formula("y ~ x + (1 | group)", d, residual=AR1(time="t"), weights="w1")
