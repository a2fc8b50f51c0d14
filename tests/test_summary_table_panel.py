"""summary_table with statsmodels WLS and linearmodels panel fits (RE vs FE vs OLS)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from sm_hlm import HLM, summary_table
from sm_hlm.simulate import simulate_nels

lm_panel = pytest.importorskip("linearmodels.panel")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    d = simulate_nels(n_schools=60, seed=11)
    d["sid"] = np.arange(len(d))
    return d


@pytest.fixture(scope="module")
def fits(data):
    panel = data.set_index(["school", "sid"])
    return {
        "hlm": HLM.from_formula("mscore ~ ses + (1 | school)", data).fit(),
        "fe": lm_panel.PanelOLS.from_formula("mscore ~ 1 + ses + EntityEffects", panel).fit(),
        "re": lm_panel.RandomEffects.from_formula("mscore ~ 1 + ses", panel).fit(),
        "pooled": lm_panel.PooledOLS.from_formula("mscore ~ 1 + ses", panel).fit(),
        "ols": smf.ols("mscore ~ ses", data).fit(),
    }


def test_re_fe_ols_side_by_side(fits, data):
    f = fits
    st = summary_table(f["hlm"], f["re"], f["fe"], f["pooled"], f["ols"],
                       names=["HLM", "RE", "FE", "Pooled", "OLS"])
    assert list(st.params.index) == ["Intercept", "ses"]
    for name, key in [("RE", "re"), ("FE", "fe"), ("Pooled", "pooled")]:
        np.testing.assert_allclose(st.params[name], f[key].params.reindex(st.params.index))
        np.testing.assert_allclose(st.bse[name], f[key].std_errors.reindex(st.params.index))
        np.testing.assert_allclose(st.pvalues[name], f[key].pvalues.reindex(st.params.index))
    # the within estimator is OLS with school dummies (an independent check of the column)
    dummies = smf.ols("mscore ~ ses + C(school)", data).fit()
    assert st.params.loc["ses", "FE"] == pytest.approx(dummies.params["ses"], rel=1e-10)
    assert st.vcomp.loc["SD(Residual)", "FE"] == pytest.approx(np.sqrt(dummies.scale), rel=1e-10)
    # pooled OLS is OLS: same numbers, same likelihood and AIC
    np.testing.assert_allclose(st.params["Pooled"], st.params["OLS"], rtol=1e-10)
    assert st.stats.loc["AIC", "Pooled"] == st.stats.loc["AIC", "OLS"]
    # RE: Swamy-Arora variance decomposition as the random-intercept SD
    vd = f["re"].variance_decomposition
    assert st.vcomp.loc["SD(Intercept | school)", "RE"] == pytest.approx(np.sqrt(vd["Effects"]))
    assert st.vcomp.loc["SD(Residual)", "RE"] == pytest.approx(np.sqrt(vd["Residual"]))
    assert np.isnan(st.vcomp.loc["SD(Intercept | school)", "FE"])
    assert st.stats.loc["Method"].tolist() == ["REML", "RE (GLS)", "FE (entity)", "Pooled OLS",
                                               "OLS"]
    groups = st.stats.loc["Groups (school)"].tolist()
    assert groups == ["60", "60", "60", "", ""]
    assert st.stats.loc["logLik", "FE"] == "" and st.stats.loc["AIC", "RE"] == ""
    txt = st.as_text()
    assert "not comparable" in txt and "linearmodels" in txt
    assert max(map(len, txt.splitlines())) <= 100
    assert "RE (GLS)" in st.as_html() and "FE (entity)" in st.as_latex()


def test_wls_column(data):
    w = 1.0 + (data["ses"] > 0)
    wls = smf.wls("mscore ~ ses", data, weights=w).fit()
    st = summary_table(wls, names=["wls"])
    np.testing.assert_allclose(st.params["wls"], wls.params)
    np.testing.assert_allclose(st.bse["wls"], wls.bse)
    assert st.stats.loc["Method", "wls"] == "WLS"
    assert st.stats.loc["AIC", "wls"] == f"{-2 * wls.llf + 2 * 3:.1f}"


def test_unsupported_fit_named(data):
    glm = smf.logit("y ~ ses", data.assign(y=(data["mscore"] > 50).astype(float))).fit(disp=0)
    with pytest.raises(TypeError, match="linearmodels panel results"):
        summary_table(glm, names=["logit"])
