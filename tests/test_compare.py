"""Tests of sm_hlm.compare (LR tests, lme4's anova) and sm_hlm.summary_table."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

import sm_hlm
from sm_hlm import HLM, RefitMLWarning, compare, summary_table
from sm_hlm.compare import boundary_test
from sm_hlm.simulate import simulate_nels

ROOT = Path(__file__).resolve().parent.parent
NELS_CSV = ROOT.parent / "shared" / "data" / "nels.csv"
REF_JSON = ROOT / "validation" / "r" / "compare_lme4.json"
requires_nels = pytest.mark.skipif(not NELS_CSV.exists(),
                                   reason=f"NELS data file not found at {NELS_CSV}")

F0 = "mscore ~ 1 + (1 | school)"
F1 = "mscore ~ ses + (ses | school)"
F2 = "mscore ~ flp + ses + flp*ses + (ses | school)"
F1RI = "mscore ~ ses + (1 | school)"
COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]


def fit(formula: str, data: pd.DataFrame, reml: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HLM.from_formula(formula, data).fit(reml=reml)


def quiet_compare(*fits, **kw) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefitMLWarning)
        return compare(*fits, **kw)


# ------------------------------------------------------------ simulated data
@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate_nels(n_schools=200, seed=3)


@pytest.fixture(scope="module")
def sim_fits(sim):
    return {f"{name}_{'REML' if reml else 'ML'}": fit(f, sim, reml)
            for name, f in [("f0", F0), ("f1", F1), ("f2", F2), ("f1ri", F1RI)]
            for reml in (False, True)}


def test_table_layout_and_formulas(sim_fits):
    f = sim_fits
    tab = compare(f["f0_ML"], f["f1_ML"], f["f2_ML"])
    assert list(tab.index) == ["fit0", "fit1", "fit2"]
    assert tab.index.name == "model"
    assert list(tab.columns) == COLUMNS + ["Pr(>Chisq) mix"]
    assert list(tab["npar"]) == [3, 6, 8]
    llf = np.array([f[k].llf for k in ("f0_ML", "f1_ML", "f2_ML")])
    np.testing.assert_allclose(tab["logLik"], llf)
    np.testing.assert_allclose(tab["deviance"], -2 * llf)
    np.testing.assert_allclose(tab["AIC"], [f[k].aic for k in ("f0_ML", "f1_ML", "f2_ML")])
    np.testing.assert_allclose(tab["BIC"], [f[k].bic for k in ("f0_ML", "f1_ML", "f2_ML")])
    chisq = 2 * np.diff(llf)
    np.testing.assert_allclose(tab["Chisq"].iloc[1:], chisq)
    assert tab["Df"].iloc[1:].tolist() == [3, 2] and pd.isna(tab["Df"].iloc[0])
    np.testing.assert_allclose(tab["Pr(>Chisq)"].iloc[1:], stats.chi2.sf(chisq, [3, 2]))
    assert tab.attrs["method"] == "ML" and tab.attrs["refitted"] == [] and tab.attrs["note"] == ""
    assert tab.attrs["formulas"]["fit2"] == F2


def test_sorted_by_npar_and_names(sim_fits):
    f = sim_fits
    tab = compare(f["f2_ML"], f["f0_ML"], f["f1_ML"], names=["big", "null", "mid"])
    assert list(tab.index) == ["null", "mid", "big"]
    with pytest.raises(ValueError, match="names"):
        compare(f["f2_ML"], f["f0_ML"], names=["a"])
    with pytest.raises(ValueError, match="distinct"):
        compare(f["f2_ML"], f["f0_ML"], names=["a", "a"])
    with pytest.raises(ValueError, match="at least two"):
        compare(f["f2_ML"])


def test_equal_npar_gives_nan_p(sim, sim_fits):
    other = fit("mscore ~ flp + (ses | school)", sim, False)      # npar 6, like f1
    tab = compare(sim_fits["f1_ML"], other)
    assert tab["Df"].iloc[1] == 0 and np.isnan(tab["Pr(>Chisq)"].iloc[1])
    assert tab["Chisq"].iloc[1] >= 0


def test_reml_fits_refitted_when_fixed_effects_differ(sim_fits):
    f = sim_fits
    with pytest.warns(RefitMLWarning, match=r"refitting model\(s\) with ML \(instead of REML\)"):
        tab = compare(f["f0_REML"], f["f1_REML"], f["f2_REML"])
    ml = compare(f["f0_ML"], f["f1_ML"], f["f2_ML"])
    assert tab.attrs["method"] == "ML" and tab.attrs["refitted"] == ["fit0", "fit1", "fit2"]
    assert tab.attrs["note"] == "refitting model(s) with ML (instead of REML)"
    np.testing.assert_allclose(tab["logLik"], ml["logLik"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(tab["Chisq"].iloc[1:], ml["Chisq"].iloc[1:], rtol=1e-7)


def test_reml_kept_when_fixed_effects_identical(sim_fits):
    f = sim_fits
    with warnings.catch_warnings():
        warnings.simplefilter("error", RefitMLWarning)
        tab = compare(f["f1ri_REML"], f["f1_REML"])
    assert tab.attrs["method"] == "REML" and tab.attrs["refitted"] == []
    np.testing.assert_allclose(tab["logLik"], [f["f1ri_REML"].llf, f["f1_REML"].llf])
    with pytest.warns(RefitMLWarning):
        forced = compare(f["f1ri_REML"], f["f1_REML"], refit=True)
    assert forced.attrs["method"] == "ML"
    np.testing.assert_allclose(forced["logLik"], [f["f1ri_ML"].llf, f["f1_ML"].llf], atol=1e-6)


def test_mixed_reml_ml_refits(sim_fits):
    f = sim_fits
    with pytest.warns(RefitMLWarning):
        tab = compare(f["f1ri_ML"], f["f1_REML"])
    assert tab.attrs["refitted"] == ["fit1"]


def test_refit_false_errors(sim_fits):
    f = sim_fits
    with pytest.raises(ValueError, match="different fixed effects"):
        compare(f["f0_REML"], f["f2_REML"], refit=False)
    with pytest.raises(ValueError, match="some fits are REML and some ML"):
        compare(f["f1ri_ML"], f["f1_REML"], refit=False)


def test_different_data_rejected(sim, sim_fits):
    small = fit(F1, sim.iloc[:-40], False)
    with pytest.raises(ValueError, match=r"fit0 \(nobs=\d+\), fit1 \(nobs=\d+\)"):
        compare(sim_fits["f1_ML"], small)
    shifted = fit(F1, sim.assign(mscore=sim["mscore"] + 1.0), False)
    with pytest.raises(ValueError, match="models fit0 and fit1 have different response values"):
        compare(sim_fits["f1_ML"], shifted)
    with pytest.raises(ValueError, match="a and b"):
        compare(sim_fits["f1_ML"], shifted, names=["a", "b"])


def test_rejects_other_objects(sim_fits):
    with pytest.raises(TypeError, match="cannot compare"):
        compare(sim_fits["f1_ML"], 3.0)


# -------------------------------------------------------------- boundary tests
def test_boundary_random_slope(sim_fits):
    f = sim_fits
    tab = compare(f["f1ri_ML"], f["f1_ML"])
    assert tab.attrs["boundary"] == {"fit1": 2}
    chisq = tab["Chisq"].iloc[1]
    expected = 0.5 * stats.chi2.sf(chisq, 1) + 0.5 * stats.chi2.sf(chisq, 2)
    assert tab["Pr(>Chisq) mix"].iloc[1] == pytest.approx(expected, rel=1e-12)
    assert tab["Pr(>Chisq) mix"].iloc[1] < tab["Pr(>Chisq)"].iloc[1]
    assert np.isnan(tab["Pr(>Chisq) mix"].iloc[0])


def test_boundary_random_intercept_vs_none(sim):
    ri = fit("mscore ~ ses + (1 | school)", sim, False)
    ols = smf.ols("mscore ~ ses", sim).fit()
    none = HLM.from_formula("mscore ~ ses", sim, groups="school", re_formula="0").fit(reml=False)
    np.testing.assert_allclose(none.llf, ols.llf, rtol=1e-10)
    for small in (ols, none):
        tab = compare(ri, small)
        assert list(tab.index) == ["fit1", "fit0"]
        assert tab["npar"].tolist() == [3, 4]
        chisq = tab["Chisq"].iloc[1]
        assert tab["Pr(>Chisq) mix"].iloc[1] == pytest.approx(0.5 * stats.chi2.sf(chisq, 1))


def test_boundary_independent_slope(sim):
    ri = fit("mscore ~ ses + (1 | school)", sim, False)
    indep = fit("mscore ~ ses + (1 | school) + (0 + ses | school)", sim, False)
    corr = fit("mscore ~ ses + (ses | school)", sim, False)
    assert boundary_test(ri, indep) == 1
    assert boundary_test(ri, corr) == 2
    assert boundary_test(indep, corr) is None            # adds a covariance only
    tab = compare(ri, indep, corr)
    assert tab.attrs["boundary"] == {"fit1": 1}
    assert np.isnan(tab["Pr(>Chisq) mix"].iloc[2])


def test_no_boundary_when_fixed_effects_differ(sim_fits):
    f = sim_fits
    assert boundary_test(f["f1_ML"], f["f2_ML"]) is None
    tab = compare(f["f0_ML"], f["f1_ML"], f["f2_ML"])
    assert tab["Pr(>Chisq) mix"].isna().all() and tab.attrs["boundary"] == {}
    assert "Pr(>Chisq) mix" not in compare(f["f0_ML"], f["f1_ML"], mixture=False).columns


def test_boundary_two_effects_not_covered(sim):
    ri = fit("mscore ~ ses + flp + (1 | school)", sim, False)
    big = fit("mscore ~ ses + flp + (ses + flp | school)", sim, False)
    assert boundary_test(ri, big) is None


# ------------------------------------------------------------- summary_table
def test_summary_table(sim_fits, sim):
    f = sim_fits
    ols = smf.ols("mscore ~ 1", sim).fit()
    st = summary_table(f["f0_ML"], f["f1_ML"], f["f2_REML"], ols,
                       names=["fit.0", "fit.1", "fit.2", "lm"])
    assert list(st.params.columns) == ["fit.0", "fit.1", "fit.2", "lm"]
    assert list(st.params.index) == ["Intercept", "ses", "flp", "flp:ses"]
    np.testing.assert_allclose(st.params["fit.2"], f["f2_REML"].fe_params.reindex(st.params.index))
    assert np.isnan(st.params.loc["ses", "fit.0"])
    np.testing.assert_allclose(st.bse.loc["Intercept", "lm"], ols.bse["Intercept"])
    assert st.vcomp.loc["SD(Intercept | school)", "fit.0"] == pytest.approx(
        np.sqrt(f["f0_ML"].cov_re.iloc[0, 0]))
    c = f["f1_ML"].cov_re.to_numpy()
    assert st.vcomp.loc["Corr(Intercept, ses | school)", "fit.1"] == pytest.approx(
        c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]))
    assert st.vcomp.loc["SD(Residual)", "lm"] == pytest.approx(np.sqrt(ols.scale))
    assert st.stats.loc["Method"].tolist() == ["ML", "ML", "REML", "OLS"]
    assert st.stats.loc["Groups (school)", "lm"] == ""
    assert st.stats.loc["AIC", "fit.1"] == f"{f['f1_ML'].aic:.1f}"
    assert st.stats.loc["AIC", "lm"] == f"{-2 * ols.llf + 2 * 2:.1f}"    # R's AIC(lm)
    txt = st.as_text()
    est = f["f1_ML"].fe_params["ses"]
    assert f"{est:.3f}***" in txt and f"({f['f1_ML'].bse_fe['ses']:.3f})" in txt
    assert "* p<0.05, ** p<0.01, *** p<0.001" in txt
    assert "SD(ses | school)" in txt and "N" in st.frame.index
    html, tex = st.as_html(), st.as_latex()
    assert "<table" in html and "fit.2" in html
    assert "\\begin{tabular}" in tex and "fit.2" in tex


def test_summary_table_options(sim_fits):
    f = sim_fits
    st = summary_table(f["f1_ML"], f["f2_ML"], stars=False, vcomp="var", float_format="%.2f")
    assert "*" not in st.as_text()
    assert "Var(ses | school)" in st.vcomp.index and "Var(Residual)" in st.vcomp.index
    assert st.vcomp.loc["Var(Residual)", "fit1"] == pytest.approx(f["f2_ML"].scale)
    assert st.frame.loc["Intercept", "fit0"] == f"{f['f1_ML'].fe_params['Intercept']:.2f}"
    with pytest.raises(ValueError, match="vcomp"):
        summary_table(f["f1_ML"], vcomp="cov")


def test_summary_table_keeps_random_effect_named_like_residual(sim):
    # a random slope whose name contains "Residual" was dropped unless the first fit had it
    d = sim.assign(Residual_ses=sim["ses"])
    ri = fit("mscore ~ ses + (1 | school)", d, False)
    slope = fit("mscore ~ ses + (1 + Residual_ses | school)", d, False)
    for fits in ((ri, slope), (slope, ri)):
        vc = summary_table(*fits).vcomp
        assert list(vc.index) == ["SD(Intercept | school)", "SD(Residual_ses | school)",
                                  "Corr(Intercept, Residual_ses | school)", "SD(Residual)"]
        col = "fit1" if fits[1] is slope else "fit0"
        assert vc.loc["SD(Residual_ses | school)", col] == pytest.approx(
            np.sqrt(slope.cov_re.iloc[1, 1]))


def test_exports():
    assert sm_hlm.compare is compare and sm_hlm.summary_table is summary_table
    assert {"compare", "summary_table"} <= set(sm_hlm.__all__)


# ------------------------------------------------- lme4's anova on NELS (JSON)
@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(REF_JSON.read_text())


@pytest.fixture(scope="module")
def nels_fits():
    if not NELS_CSV.exists():
        pytest.skip(f"NELS data file not found at {NELS_CSV}")
    d = pd.read_csv(NELS_CSV)
    fits = {}
    for name, f in [("fit.0", F0), ("fit.1", F1), ("fit.2", F2), ("fit.1ri", F1RI)]:
        for reml in (False, True):
            fits[f"{name}_{'REML' if reml else 'ML'}"] = fit(f, d, reml)
    fits["lm.0"] = smf.ols("mscore ~ 1", d).fit()
    return fits


def assert_matches_lme4(tab: pd.DataFrame, entry: dict) -> None:
    assert list(tab.index) == entry["models"]
    t = entry["table"]
    assert tab["npar"].tolist() == t["npar"]
    for col in ("AIC", "BIC", "logLik", "deviance"):
        np.testing.assert_allclose(tab[col], t[col], rtol=1e-6, err_msg=col)
    for col in ("Chisq", "Pr(>Chisq)"):
        ours = tab[col].iloc[1:].to_numpy(float)
        theirs = np.array(t[col][1:], dtype=float)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-300, err_msg=col)
    assert [None if pd.isna(v) else int(v) for v in tab["Df"]] == t["Df"]
    if "mix_p" in entry:
        mix = np.array([np.nan if v is None else v for v in entry["mix_p"]], float)
        np.testing.assert_allclose(tab["Pr(>Chisq) mix"].to_numpy(float), mix, rtol=1e-6,
                                   atol=1e-300)


CASES = {
    # key: (fits in the order given to anova, refit)
    "nels_ML": (["fit.0_ML", "fit.1_ML", "fit.2_ML"], None),
    "nels_12_ML": (["fit.1_ML", "fit.2_ML"], None),
    "nels_REML": (["fit.0_REML", "fit.1_REML", "fit.2_REML"], None),
    "slope_ML": (["fit.1ri_ML", "fit.1_ML"], None),
    "slope_REML_norefit": (["fit.1ri_REML", "fit.1_REML"], False),
    "slope_REML_refit": (["fit.1ri_REML", "fit.1_REML"], True),
    "lm_ML": (["fit.0_ML", "lm.0"], None),
}


@requires_nels
@pytest.mark.parametrize("key", list(CASES))
def test_anova_matches_lme4(nels_fits, ref, key):
    keys, refit = CASES[key]
    entry = ref["anova"][key]
    names = [k.rsplit("_", 1)[0] for k in keys]
    tab = quiet_compare(*[nels_fits[k] for k in keys], names=names, refit=refit)
    assert_matches_lme4(tab, entry)
    refitted = any("refitting" in m for m in entry["messages"])
    assert bool(tab.attrs["refitted"]) == refitted


@requires_nels
def test_nels_reml_refit_message(nels_fits):
    with pytest.warns(RefitMLWarning, match="refitting model"):
        compare(nels_fits["fit.0_REML"], nels_fits["fit.1_REML"], nels_fits["fit.2_REML"])
    # identical fixed effects: REML kept by default (lme4: anova(..., refit = FALSE))
    tab = compare(nels_fits["fit.1ri_REML"], nels_fits["fit.1_REML"])
    assert tab.attrs["method"] == "REML"
