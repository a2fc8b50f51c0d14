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
