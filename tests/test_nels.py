"""NELS: sm_hlm against lme4 (validation/r/nels_lme4.json) and the notes' printed numbers."""
from __future__ import annotations

import numpy as np
import pytest

import sm_hlm
from validation import nels as nels_validation
from validation.reference import FORMULAS

from .conftest import load_json

REF = load_json("nels_lme4.json")
KEYS = sorted(REF)


@pytest.fixture(scope="module")
def fits(nels):
    out = {}
    for key in KEYS:
        name, method = key.split("_")
        out[key] = sm_hlm.HLM.from_formula(FORMULAS[name], nels).fit(reml=method == "REML")
    return out


@pytest.mark.parametrize("key", KEYS)
def test_against_lme4(fits, key):
    r, res = REF[key], fits[key]
    assert res.llf >= r["logLik"] - 1e-6
    assert abs(res.llf - r["logLik"]) < 1e-6
    ref = np.array([r["fixef"][n] for n in r["fixef_names"]])
    np.testing.assert_array_less(np.abs(res.fe_params.to_numpy() - ref),
                                 1e-5 * np.maximum(np.abs(ref), 1))
    np.testing.assert_allclose(np.sqrt(res.scale), r["sigma"], rtol=1e-4)
    assert res.aic == pytest.approx(r["AIC"], abs=1e-5)
    assert res.df_resid == r["df_resid"]


@pytest.mark.parametrize("key", ["fit.1_ML", "fit.2_ML"])
def test_at_lme4_theta_every_printed_vcov_digit(fits, key):
    """Evaluated at lme4's theta, sm_hlm's vcov equals lme4's to 1e-9 relative."""
    r, res = REF[key], fits[key]
    theta = np.array(list(r["theta"].values()))
    at = res.model.results_at(theta, reml=False, compute_vcomp_cov=False)
    np.testing.assert_allclose(at.cov_fe.to_numpy(), np.array(r["vcov"]), rtol=1e-7)
    assert at.llf == pytest.approx(r["logLik"], abs=1e-9)


def test_validation_script_passes(nels, capsys):
    path = nels_validation.DEFAULT_DATA
    assert nels_validation.run(path, quiet=True) == 0
    out = capsys.readouterr().out
    assert "all numbers match" in out and "MISMATCH" not in out


def test_matches_uses_printed_precision():
    m = nels_validation.matches
    assert m(93919.34, "93919.3") and not m(93919.36, "93919.3")
    assert m(35.40469, "35.41", t_value=True) and not m(35.40469, "35.41")
    assert not m(float("nan"), "1.0")
