"""Inference on fits with several grouping factors (issue 8, item 3) against R.

References: ``validation/r/multilevel_inference_refs.R`` (JSON committed):
lmerTest's Satterthwaite df, clubSandwich's vcovCR / coef_test (clusters: the
outermost factor), lme4's profile intervals and anova, on the nested and
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
