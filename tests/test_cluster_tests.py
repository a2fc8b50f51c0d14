"""Cluster-robust small-sample tests (clubSandwich) and the Hausman test.

References: validation/r/econ_refs.R -> validation/r/econ_refs.json
(clubSandwich coef_test / Wald_test, lm with group dummies, plm, lmer).
sm_hlm is evaluated at lme4's theta (``results_at``) so that the comparison
is of the test computations, to 1e-6 relative.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sm_hlm import AR1, HLM
from sm_hlm.simulate import simulate_mixed, simulate_panel

ROOT = Path(__file__).resolve().parents[1]
REFS = json.loads((ROOT / "validation" / "r" / "econ_refs.json").read_text())
NELS_PATH = ROOT.parent / "shared" / "data" / "nels.csv"
CASES = [k for k in REFS if k != "versions"]
RTOL = 1e-6


def _data(key: str) -> pd.DataFrame:
    if key.startswith("nels"):
        if not NELS_PATH.exists():
            pytest.skip(f"NELS data not found at {NELS_PATH}")
        d = pd.read_csv(NELS_PATH)
        d["school"] = d["school"].astype(str)
        return d
    return pd.read_csv(ROOT / "validation" / "r" / "data" / "slope.csv")


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for key in CASES:
        c = REFS[key]
        model = HLM.from_formula(c["formula"], _data(key))
        out[key] = model.results_at(np.array(c["theta"]), reml=c["REML"])
    return out


@pytest.mark.parametrize("key", CASES)
def test_coef_test_matches_clubsandwich(key: str, fits: dict) -> None:
    c = REFS[key]
    res = fits[key]
    tab = res.coef_test_robust()
    ct = c["coef_test"]
    np.testing.assert_allclose(tab["Estimate"], ct["beta"], rtol=RTOL)
    np.testing.assert_allclose(tab["Std. Error"], ct["SE"], rtol=RTOL)
    np.testing.assert_allclose(tab["t value"], ct["tstat"], rtol=RTOL)
    np.testing.assert_allclose(tab["df"], ct["df_Satt"], rtol=RTOL)
    p_r = np.array(ct["p_Satt"], float)
    big = p_r > 1e-300
    np.testing.assert_allclose(tab["Pr(>|t|)"].to_numpy()[big], p_r[big], rtol=1e-5)
    tab0 = res.coef_test_robust("CR0")
    np.testing.assert_allclose(tab0["Std. Error"], c["coef_test_CR0"]["SE"], rtol=RTOL)
    np.testing.assert_allclose(tab0["df"], c["coef_test_CR0"]["df_Satt"], rtol=RTOL)
    # CR1 is CR0 times a constant: the same df
    np.testing.assert_allclose(res.coef_test_robust("CR1")["df"], tab0["df"], rtol=1e-12)


@pytest.mark.parametrize("key", CASES)
def test_wald_htz_matches_clubsandwich(key: str, fits: dict) -> None:
    res = fits[key]
    for w in REFS[key]["wald"]:
        C = np.array(w["C"], float)
        htz = res.wald_test_robust(C).iloc[0]
        ref = w["HTZ"]
        for col in ("Fstat", "delta", "df_denom"):
            np.testing.assert_allclose(htz[col], ref[col], rtol=RTOL)
        assert htz["df_num"] == ref["df_num"]
        np.testing.assert_allclose(htz["p_val"], ref["p_val"], rtol=1e-5)
        chi = res.wald_test_robust(C, test="chi-sq").iloc[0]
        np.testing.assert_allclose(chi["Fstat"], w["chi-sq"]["Fstat"], rtol=RTOL)
        np.testing.assert_allclose(chi["p_val"], w["chi-sq"]["p_val"], rtol=1e-5)


def test_wald_robust_one_row_is_the_squared_t(fits: dict) -> None:
    """A one-row HTZ test is the Satterthwaite t test: F = t^2 and df = df_Satt."""
    res = fits["slope_REML"]
    tab = res.coef_test_robust()
    htz = res.wald_test_robust(np.array([[0, 1.0, 0, 0]])).iloc[0]
    np.testing.assert_allclose(htz["Fstat"], tab["t value"].iloc[1] ** 2, rtol=1e-10)
    np.testing.assert_allclose(htz["df_denom"], tab["df"].iloc[1], rtol=1e-10)
    s = res.wald_test_robust("x = 0, x:z = 0")
    a = res.wald_test_robust(np.array([[0, 1.0, 0, 0], [0, 0, 0, 1.0]]))
    pd.testing.assert_frame_equal(s, a)


def test_robust_tests_bad_input(fits: dict) -> None:
    res = fits["slope_REML"]
    with pytest.raises(ValueError, match="cov_type"):
        res.coef_test_robust("HC3")
    with pytest.raises(ValueError, match="test must be"):
        res.wald_test_robust(np.eye(4)[:2], test="HTA")
    with pytest.raises(ValueError, match="rank"):
        res.wald_test_robust(np.array([[0, 1.0, 0, 0], [0, 2.0, 0, 0]]))
    with pytest.raises(ValueError, match="4 columns"):
        res.wald_test_robust(np.ones((2, 3)))


# ================================================================== Hausman
@pytest.mark.parametrize("key", CASES)
def test_hausman_classic_matches_r(key: str, fits: dict) -> None:
    h_r = REFS[key]["hausman"]
    h = fits[key].hausman()
    assert list(h.table.index) == h_r["within_names"]
    np.testing.assert_allclose(h.table["FE (within)"], h_r["b_fe"], rtol=1e-10)
    np.testing.assert_allclose(h.table["FE (within)"], h_r["plm_within_coef"], rtol=1e-10)
    np.testing.assert_allclose(h.details["cov_fe"], h_r["V_fe"], rtol=1e-10)
    np.testing.assert_allclose(h.details["cov_fe"], h_r["plm_within_vcov"], rtol=1e-10)
    np.testing.assert_allclose(h.details["sigma2_fe"], h_r["sigma2_fe"], rtol=1e-10)
    assert h.details["df_resid_fe"] == h_r["df_resid_fe"]
    np.testing.assert_allclose(h.table["RE"], h_r["b_re"], rtol=RTOL)
    np.testing.assert_allclose(h.details["cov_re"], h_r["V_re"], rtol=RTOL)
    np.testing.assert_allclose(h.statistic, h_r["chi2"], rtol=RTOL)
    assert h.df == h_r["df"]
    if h_r["chi2"] >= 0:
        np.testing.assert_allclose(h.pvalue, h_r["p_value"], rtol=1e-5)
        assert h.note is None or "not positive definite" in h.note
    else:
        # random slopes: V_FE - V_RE is indefinite, no p-value, and the note says why
        assert np.isnan(h.pvalue)
        assert "mundlak" in h.note and "not positive definite" in h.note
    assert "Prob > chi2" in h.summary()


@pytest.mark.parametrize("key", CASES)
def test_hausman_mundlak_matches_r(key: str, fits: dict) -> None:
    """The robust variant: the augmented fit's CR2/CR1 Wald tests of the means."""
    mr = REFS[key]["mundlak"]
    res = fits[key]
    h = res.hausman(method="mundlak")
    aug = h.details["results"]
    # at lme4's theta for the augmented model (columns in sm_hlm's order)
    at = aug.model.results_at(np.array(mr["theta"]), reml=REFS[key]["REML"])
    lme4_names = ["Intercept" if n == "(Intercept)" else n for n in mr["fixef_names"]]
    k = h.df
    rename = {f"mw{i + 1}": n for i, n in enumerate(h.table.index)}
    order = [list(at.model.exog_names).index(rename.get(n, n)) for n in lme4_names]
    np.testing.assert_allclose(at.fit_result.fe_params[order], mr["fixef"], rtol=RTOL)
    p = len(at.model.exog_names) - k
    L = np.zeros((k, p + k))
    L[:, p:] = np.eye(k)
    for kind in ("CR2", "CR1"):
        chi = at.wald_test_robust(L, cov_type=kind, test="chi-sq").iloc[0]
        np.testing.assert_allclose(chi["Fstat"], mr[kind]["chi-sq"]["Fstat"], rtol=RTOL)
    htz = at.wald_test_robust(L).iloc[0]
    np.testing.assert_allclose(htz["Fstat"], mr["CR2"]["HTZ"]["Fstat"], rtol=RTOL)
    np.testing.assert_allclose(htz["df_denom"], mr["CR2"]["HTZ"]["df_denom"], rtol=RTOL)
    # the reported statistic is that Wald test on sm_hlm's own augmented fit
    own = aug.wald_test_robust(L, test="chi-sq").iloc[0]
    np.testing.assert_allclose(h.statistic, own["Fstat"] * k, rtol=1e-12)
    pd.testing.assert_frame_equal(h.details["htz"], aug.wald_test_robust(L))
    assert list(h.table.index) == [f"mean({n})" for n in REFS[key]["hausman"]["within_names"]]


def test_hausman_bad_input_and_collinear_columns() -> None:
    df = simulate_mixed(n_groups=30, mean_group_size=8, fe_params={"Intercept": 1.0, "x": 0.5},
                        seed=9)
    df["w"] = np.random.default_rng(1).normal(size=30)[df["group"] - 1]
    res = HLM.from_formula("y ~ x + w + (1 | group)", df).fit()
    with pytest.raises(ValueError, match="method must be"):
        res.hausman(method="robust")
    with pytest.raises(ValueError, match="cov_type applies"):
        res.hausman(cov_type="CR2")
    with pytest.raises(ValueError, match="cov_type must be"):
        res.hausman(method="mundlak", cov_type="HC1")
    h1 = res.hausman(method="mundlak", cov_type="CR1")
    assert h1.details["cov_type"] == "CR1" and "CR1" in h1.description
    with pytest.raises(TypeError):
        res.hausman("classic")
    h = res.hausman()
    assert list(h.table.index) == ["x"] and "w" in h.description
    only_level2 = HLM.from_formula("y ~ w + (1 | group)", df).fit()
    with pytest.raises(ValueError, match="no fixed-effect column varies within"):
        only_level2.hausman()
    # x2 = x + w^2: its within part equals x's, so it is dropped with a note
    df["x2"] = df["x"] + df["w"] ** 2
    h2 = HLM.from_formula("y ~ x + w + x2 + (1 | group)", df).fit().hausman()
    assert list(h2.table.index) == ["x"] and "x2" in h2.note


def test_hausman_residual_structure_not_implemented() -> None:
    panel = simulate_panel(n_subjects=40, n_waves=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = HLM.from_formula("y ~ wave + (1 | subject)", panel, residual=AR1(time="wave")).fit()
    with pytest.raises(NotImplementedError, match="residual structure"):
        res.hausman()
    # CR2 tests handle residual structures (tests/test_residual_inference.py)
    assert np.all(np.isfinite(res.coef_test_robust()["df"]))


# ------------------------------------------- statsmodels' cov_type names (issue 11, item 8)
def test_cr1s_and_statsmodels_cluster_name_match_clubsandwich():
    """CR1S (statsmodels' 'cluster': G/(G-1)(N-1)/(N-p)) and CR1 against clubSandwich's
    vcovCR at lme4's theta (validation/r/cr1s_refs.R)."""
    import json
    from pathlib import Path
    refs = json.loads((Path(__file__).resolve().parent.parent / "validation" / "r"
                       / "cr1s_refs.json").read_text())
    d = pd.read_csv(Path(__file__).resolve().parent.parent / "validation" / "r" / "data"
                    / "slope.csv")
    for key, ref in refs.items():
        model = HLM.from_formula("y ~ x * z + (x | group)", d)
        res = model.results_at(np.asarray(ref["theta"]), reml=ref["REML"])
        for kind, name in (("CR1S", "CR1S"), ("cluster", "CR1S"), ("CR1", "CR1")):
            got = res.cov_robust(kind).to_numpy()
            np.testing.assert_allclose(got, np.asarray(ref[name]), rtol=1e-8, err_msg=key)
        t = res.summary(cov_type="cluster").as_text()
        assert "cluster = CR1S" in t
        assert res.summary(cov_type="nonrobust").as_text() == res.summary().as_text()
        with pytest.raises(ValueError, match="rows as independent"):
            res.cov_robust("HC1")
        with pytest.raises(ValueError, match="'cluster'"):
            res.summary(cov_type="HC3")
