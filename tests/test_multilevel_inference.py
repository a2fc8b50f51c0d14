"""Inference on fits with several grouping factors (issue 8, item 3) against R.

References: ``validation/r/multilevel_inference_refs.R`` (JSON committed):
lmerTest's Satterthwaite df, clubSandwich's vcovCR / coef_test (clusters: the
outermost factor) and lme4's anova, on the nested and
crossed cases of ``validation/r/multilevel_lme4.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM
from sm_hlm.engine.terms import theta_from_lme4

ROOT = Path(__file__).resolve().parent.parent
REFS = json.loads((ROOT / "validation" / "r" / "multilevel_inference_refs.json").read_text())
DATA = ROOT / "validation" / "r" / "data"
CASES = sorted(k for k, v in REFS.items() if isinstance(v, dict) and "satterthwaite" in v)
CR_CASES = [k for k in CASES if "cr" in REFS[k]]


def lme4_name(name: str) -> str:
    if name == "Intercept":
        return "(Intercept)"
    return name.replace("[T.", "").replace("]", "")


def model_of(ref: dict):
    df = pd.read_csv(DATA / ref["data"])
    f = ref["formula"]
    if f.startswith("yield ~"):
        f = "Q('yield') ~" + f[len("yield ~"):]
    return HLM.from_formula(f, df)


def aligned(tab: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows of our table in R's order of the fixed effects (x:sector may be sector:x)."""
    ours = {}
    for n in tab.index:
        ln = lme4_name(n)
        ours[ln] = n
        ours[":".join(sorted(ln.split(":")))] = n
    return tab.loc[[ours.get(r, ours.get(":".join(sorted(r.split(":"))))) for r in names]]


@pytest.fixture(scope="module", params=CASES)
def fits(request):
    ref = REFS[request.param]
    m = model_of(ref)
    own = m.fit(reml=ref["REML"])
    at = m.results_at(theta_from_lme4(ref["theta"], m.layout), reml=ref["REML"])
    return request.param, ref, own, at


def test_satterthwaite_matches_lmertest(fits):
    """As the single-factor tests: df 1e-3, estimate and SE 1e-4 relative, at our own fit."""
    name, ref, own, at = fits
    s = ref["satterthwaite"]
    tab = aligned(own.satterthwaite(), s["names"])
    np.testing.assert_allclose(tab["df"], s["df"], rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(tab["Estimate"], s["Estimate"], rtol=1e-4, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(tab["Std. Error"], s["SE"], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(tab["Pr(>|t|)"], s["p"], rtol=1e-2, atol=1e-12, err_msg=name)
    # at lme4's theta the only difference left is the finite-difference scheme
    tab_at = aligned(at.satterthwaite(), s["names"])
    np.testing.assert_allclose(tab_at["df"], s["df"], rtol=1e-5, err_msg=name)


def test_summary_satterthwaite(fits):
    name, ref, own, _ = fits
    text = own.summary(ddf="satterthwaite").as_text()
    assert "P>|t|" in text and "P>|z|" not in text
    df = own.satterthwaite()["df"]
    assert f"{df.iloc[0]:.1f}" in text and "P>|z|" in own.summary().as_text()
    with pytest.raises(ValueError, match="ddf"):
        own.summary(ddf="kenward-roger")


@pytest.mark.parametrize("key", CR_CASES)
@pytest.mark.parametrize("kind", ["CR0", "CR1", "CR2"])
def test_cov_robust_matches_clubsandwich(key, kind):
    """vcovCR and coef_test (Satterthwaite df) at lme4's theta, 1e-8 relative."""
    ref = REFS[key]
    m = model_of(ref)
    res = m.results_at(theta_from_lme4(ref["theta"], m.layout), reml=ref["REML"])
    c = ref["cr"][kind]
    names = ref["satterthwaite"]["names"]
    ct = res.coef_test_robust(kind)
    order = list(aligned(ct, names).index)
    V = res.cov_robust(kind).loc[order, order].to_numpy()
    Vr = np.asarray(c["vcov"])
    np.testing.assert_allclose(V, Vr, rtol=1e-8, atol=1e-8 * np.abs(Vr).max())
    ct = ct.loc[order]
    np.testing.assert_allclose(ct["Std. Error"], c["SE"], rtol=1e-8)
    np.testing.assert_allclose(ct["df"], c["df"], rtol=1e-8)
    np.testing.assert_allclose(ct["t value"], c["tstat"], rtol=1e-7)
    # the default clusters are the outermost factor, and naming it gives the same
    assert m.outermost_factor == c["cluster"]
    np.testing.assert_allclose(res.cov_robust(kind, cluster=c["cluster"]).loc[order, order],
                               V, rtol=1e-14)


def test_cov_robust_crossed_needs_cluster():
    ref = REFS["ml_crossed_REML"]
    res = model_of(ref).fit()
    with pytest.raises(ValueError, match="crossed.*cluster="):
        res.cov_robust("CR2")
    with pytest.raises(ValueError, match="'item' is not nested in the cluster 'subj'"):
        res.cov_robust("CR2", cluster="subj")
    with pytest.raises(KeyError, match="nosuch"):
        res.cov_robust("CR2", cluster="nosuch")
    with pytest.raises(ValueError, match="CR3"):
        res.cov_robust("CR3", cluster="subj")


def test_cov_robust_inner_factor_not_a_cluster():
    ref = REFS["pastes_REML"]
    res = model_of(ref).fit()
    with pytest.raises(ValueError, match="'batch' is not nested in the cluster 'batch:cask'"):
        res.cov_robust("CR2", cluster="batch:cask")


# ------------------------------------------------------ simulate, refit, bootstrap

@pytest.fixture(scope="module")
def pastes_fit():
    return model_of(REFS["machines_REML"]).fit()


def test_simulate_seeded_and_shaped(pastes_fit):
    res = pastes_fit
    a = res.simulate(3, seed=11)
    b = res.simulate(3, seed=11)
    c = res.simulate(3, seed=12)
    assert a.shape == (int(res.nobs), 3) and list(a.columns) == ["sim_1", "sim_2", "sim_3"]
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    with pytest.raises(ValueError, match="nsim"):
        res.simulate(0)


def test_simulate_moments(pastes_fit):
    """Simulated responses have mean X beta and the model's marginal variance."""
    res = pastes_fit
    sims = res.simulate(4000, seed=5).to_numpy()
    mu = res.model.exog @ res.fe_params.to_numpy()
    var = res.scale + sum(np.diag(c).sum() for c in [res.fit_result.cov_re[0][:1, :1],
                                                     res.fit_result.cov_re[1][:1, :1]])
    dev = sims - mu[:, None]
    # mean of each row within 5 MC standard errors; the pooled variance within 5%
    assert np.all(np.abs(dev.mean(axis=1)) < 5 * np.sqrt(var / sims.shape[1]))
    np.testing.assert_allclose(dev.var(), var, rtol=0.05)


def test_refit_equals_fresh_fit(pastes_fit):
    res = pastes_fit
    ref = REFS["machines_REML"]
    y = res.simulate(1, seed=3).iloc[:, 0].to_numpy()
    r1 = res.refit(y)
    df = pd.read_csv(DATA / ref["data"]).assign(score=y)
    r2 = HLM.from_formula(ref["formula"], df).fit()
    np.testing.assert_allclose(r1.llf, r2.llf, rtol=1e-10)
    np.testing.assert_allclose(r1.params, r2.params, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r1.bse_fe, r2.bse_fe, rtol=1e-4)
    # the original model is untouched
    np.testing.assert_allclose(res.model.endog, pd.read_csv(DATA / ref["data"])["score"])
    with pytest.raises(ValueError, match="3 values"):
        res.refit(y[:3])
    with pytest.raises(ValueError, match="missing or infinite"):
        res.refit(np.where(np.arange(len(y)) == 0, np.nan, y))


def test_bootstrap_reproducible_and_unbiased(pastes_fit):
    res = pastes_fit
    b1 = res.bootstrap(40, seed=7, progress=False)
    b2 = res.bootstrap(40, seed=7, progress=False)
    b3 = res.bootstrap(10, seed=7, progress=False)
    pd.testing.assert_frame_equal(b1.replicates, b2.replicates)
    pd.testing.assert_frame_equal(b3.replicates, b1.replicates.iloc[:10])
    assert b1.n_failed == 0
    # fixed effects are unbiased: the replicate mean within 4 MC SEs of the estimate
    fe = list(res.model.exog_names)
    rep = b1.replicates[fe]
    mc = rep.std() / np.sqrt(len(rep))
    assert np.all(np.abs(rep.mean() - res.fe_params) < 4 * mc)
    # the bootstrap SE of the fixed effects near the model-based one
    np.testing.assert_allclose(rep.std(), res.bse_fe, rtol=0.35)
    ci = b1.conf_int()
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    assert np.all(ci.iloc[:, 0] <= ci.iloc[:, 1])
    np.testing.assert_allclose(b1.estimates["sigma"], np.sqrt(res.scale), rtol=1e-12)
    with pytest.raises(ValueError, match="positive number"):
        res.bootstrap(0)


# ------------------------------------------------------------------ compare (lme4's anova)

@pytest.mark.parametrize("key", ["anova_pastes", "anova_ml_three"])
def test_compare_matches_lme4_anova(key):
    import sm_hlm
    from sm_hlm.multilevel import MultilevelHLM

    a = REFS[key]
    df = pd.read_csv(DATA / a["data"])
    r0 = HLM.from_formula(a["formula0"], df).fit(reml=False)
    r1 = HLM.from_formula(a["formula1"], df).fit(reml=False)
    assert isinstance(r1.model, MultilevelHLM)
    out = sm_hlm.compare(r1, r0, names=["big", "small"])
    assert list(out.index) == ["small", "big"]
    np.testing.assert_array_equal(out["npar"], a["npar"])
    np.testing.assert_allclose(out["logLik"], a["logLik"], rtol=1e-7)
    np.testing.assert_allclose(out["Chisq"].iloc[1], a["Chisq"], rtol=1e-5)
    assert int(out["Df"].iloc[1]) == a["Df"]
    np.testing.assert_allclose(out["Pr(>Chisq)"].iloc[1], a["p"], rtol=1e-4)
    # REML fits with the same fixed effects keep their REML likelihoods; refit=True refits
    q0 = HLM.from_formula(a["formula0"], df).fit()
    q1 = HLM.from_formula(a["formula1"], df).fit()
    assert sm_hlm.compare(q0, q1).attrs["method"] == "REML"
    from sm_hlm.compare import RefitMLWarning

    with pytest.warns(RefitMLWarning):
        ml = sm_hlm.compare(q0, q1, refit=True)
    np.testing.assert_allclose(ml["logLik"], a["logLik"], rtol=1e-7)


def test_compare_multilevel_boundary_mixture():
    """Adding one random slope on a factor of a multilevel model is a boundary test."""
    import sm_hlm

    ref = REFS["ml_three_ML"]
    df = pd.read_csv(DATA / ref["data"])
    r0 = HLM.from_formula("y ~ x * sector + tq + (x | school) + (1 | school:klass)",
                          df).fit(reml=False)
    r1 = HLM.from_formula(ref["formula"], df).fit(reml=False)
    out = sm_hlm.compare(r0, r1)
    assert int(out["Df"].iloc[1]) == 2
    chisq = out["Chisq"].iloc[1]
    from scipy import stats as st
    np.testing.assert_allclose(out["Pr(>Chisq) mix"].iloc[1],
                               0.5 * st.chi2.sf(chisq, 1) + 0.5 * st.chi2.sf(chisq, 2),
                               rtol=1e-12)


def test_cov_robust_cluster_as_labels():
    """Clusters as one label per row (or a data column) give the factor's result."""
    ref = REFS["ml_three_REML"]
    res = model_of(ref).fit()
    df = pd.read_csv(DATA / ref["data"])
    base = res.cov_robust("CR2")
    np.testing.assert_allclose(res.cov_robust("CR2", cluster=df["school"].astype(str).to_numpy()),
                               base, rtol=1e-13)
    np.testing.assert_allclose(res.coef_test_robust("CR1", cluster=df["school"].to_numpy())["df"],
                               res.coef_test_robust("CR1")["df"], rtol=1e-13)
    with pytest.raises(ValueError, match="shape"):
        res.cov_robust("CR2", cluster=np.zeros(3))
    with pytest.raises(ValueError, match="at least two clusters"):
        res.cov_robust("CR0", cluster=np.zeros(int(res.nobs)))


def test_cov_robust_cluster_data_column():
    """A data column coarser than the outermost factor, with a dropped row: the same as
    its labels on the fitted rows; missing cluster labels are an error naming the column."""
    ref = REFS["ml_three_REML"]
    df = pd.read_csv(DATA / ref["data"])
    df["district"] = df["school"] // 3
    df.loc[5, "y"] = np.nan
    with pytest.warns(Warning, match="dropped 1"):
        res = HLM.from_formula(ref["formula"], df).fit()
    keep = df["y"].notna().to_numpy()
    by_col = res.cov_robust("CR2", cluster="district")
    by_lab = res.cov_robust("CR2", cluster=df.loc[keep, "district"].to_numpy())
    np.testing.assert_allclose(by_col, by_lab, rtol=1e-13)
    # coarser clusters than the schools change the result
    assert not np.allclose(by_col, res.cov_robust("CR2"), rtol=1e-3)
    lab = df.loc[keep, "district"].to_numpy().astype(float)
    lab[3] = np.nan
    with pytest.raises(ValueError, match="cluster labels contain missing values"):
        res.cov_robust("CR2", cluster=lab)
    df.loc[7, "district"] = np.nan
    with pytest.warns(Warning, match="dropped 1"):
        res2 = HLM.from_formula(ref["formula"], df).fit()
    with pytest.raises(ValueError, match="'district' has missing values"):
        res2.cov_robust("CR2", cluster="district")
    with pytest.raises(ValueError, match="'school' is not nested in the cluster 'x'"):
        res.cov_robust("CR2", cluster="x")


def test_cov_robust_data_column_matches_clubsandwich():
    """clubSandwich's vcovCR / coef_test (CR2) clustered on a data column coarser than
    the outermost factor (district = school // 3), at lme4's theta."""
    c = REFS["cr_district"]
    df = pd.read_csv(DATA / c["data"])
    df["district"] = df["school"] // 3
    m = HLM.from_formula(c["formula"], df)
    res = m.results_at(theta_from_lme4(c["theta"], m.layout), reml=c["REML"])
    V = res.cov_robust("CR2", cluster="district")
    order = aligned(pd.DataFrame(index=V.index), c["names"]).index
    np.testing.assert_allclose(V.loc[order, order], np.asarray(c["vcov"]), rtol=1e-8,
                               atol=1e-8 * np.abs(c["vcov"]).max())
    ct = res.coef_test_robust("CR2", cluster="district").loc[order]
    np.testing.assert_allclose(ct["Std. Error"], c["SE"], rtol=1e-8)
    np.testing.assert_allclose(ct["t value"], c["tstat"], rtol=1e-7)
    np.testing.assert_allclose(ct["df"], c["df"], rtol=1e-8)
