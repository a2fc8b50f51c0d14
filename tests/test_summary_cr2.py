"""summary(cov_type=...) shows clubSandwich's coef_test: CR SEs, Satterthwaite df, t p-values.

References: validation/r/econ_refs.R -> validation/r/econ_refs.json
(``clubSandwich::coef_test(fit, vcov = "CR2", test = "Satterthwaite")`` and CR0).
sm_hlm is evaluated at lme4's theta (``results_at``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sm_hlm import HLM
from sm_hlm.summary import fixed_effects_table

ROOT = Path(__file__).resolve().parents[1]
REFS = json.loads((ROOT / "validation" / "r" / "econ_refs.json").read_text())
CASES = [k for k in REFS if k.startswith("slope")]           # data committed with the refs
RTOL = 1e-6


@pytest.fixture(scope="module")
def fits() -> dict:
    d = pd.read_csv(ROOT / "validation" / "r" / "data" / "slope.csv")
    return {k: HLM.from_formula(REFS[k]["formula"], d).results_at(
        np.array(REFS[k]["theta"]), reml=REFS[k]["REML"]) for k in CASES}


@pytest.mark.parametrize("key", CASES)
def test_summary_cr2_matches_clubsandwich(key: str, fits: dict) -> None:
    res, ct = fits[key], REFS[key]["coef_test"]
    tab = fixed_effects_table(res, cov_type="CR2")
    assert list(tab.columns) == ["Coef.", "Std.Err.", "df", "t", "P>|t|", "[0.025", "0.975]"]
    np.testing.assert_allclose(tab["Std.Err."], ct["SE"], rtol=RTOL)
    np.testing.assert_allclose(tab["df"], ct["df_Satt"], rtol=RTOL)
    np.testing.assert_allclose(tab["t"], ct["tstat"], rtol=RTOL)
    p_r = np.array(ct["p_Satt"], float)
    big = p_r > 1e-300
    np.testing.assert_allclose(tab["P>|t|"].to_numpy()[big], p_r[big], rtol=1e-5)
    crit = stats.t.ppf(0.975, np.asarray(ct["df_Satt"], float))
    np.testing.assert_allclose(tab["0.975]"] - tab["Coef."], crit * np.asarray(ct["SE"]),
                               rtol=RTOL)
    tab0 = fixed_effects_table(res, cov_type="cr0")
    np.testing.assert_allclose(tab0["df"], REFS[key]["coef_test_CR0"]["df_Satt"], rtol=RTOL)
    text = res.summary(cov_type="CR2").as_text()
    assert "cluster-robust (CR2)" in text and "Bell-McCaffrey" in text
    assert "clubSandwich" in text and "P>|t|" in text
    assert f"{ct['df_Satt'][0]:.1f}" in text
    assert max(map(len, text.splitlines())) <= 100


def test_summary_cov_type_errors(fits: dict) -> None:
    res = fits[CASES[0]]
    with pytest.raises(ValueError, match="rows as independent"):
        res.summary(cov_type="HC3")
    with pytest.raises(ValueError, match="cov_type must be one of"):
        res.summary(cov_type="CR9")
    with pytest.raises(ValueError, match="cov_type and ddf"):
        res.summary(cov_type="CR2", ddf="kenward-roger")
