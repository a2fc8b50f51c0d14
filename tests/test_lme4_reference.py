"""sm_hlm against lme4 fits of the package's own simulated data (validation/r/core_lme4.R)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import sm_hlm
from sm_hlm.simulate import simulate_mixed

from .conftest import load_csv, load_json

REF = load_json("core_lme4.json")
CASES = sorted(REF)


def _lme4_name(n: str) -> str:
    return "(Intercept)" if n == "Intercept" else n


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for key in CASES:
        r = REF[key]
        data = load_csv(r["data"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
            out[key] = sm_hlm.HLM.from_formula(r["formula"], data).fit(reml=r["REML"])
    return out


@pytest.mark.parametrize("key", CASES)
def test_loglik(fits, key):
    r, res = REF[key], fits[key]
    # ours is never lower than lme4's by more than 1e-6, and agrees to 1e-6
    assert res.llf >= r["logLik"] - 1e-6
    assert abs(res.llf - r["logLik"]) <= 1e-6
    assert res.deviance == pytest.approx(r["deviance"], abs=2e-6)


@pytest.mark.parametrize("key", CASES)
def test_fixed_effects(fits, key):
    r, res = REF[key], fits[key]
    ref = np.array([r["fixef"][n] for n in r["fixef_names"]])
    assert [_lme4_name(n) for n in res.fe_params.index] == r["fixef_names"]
    ours = res.fe_params.to_numpy()
    tol = 1e-5 * np.maximum(np.abs(ref), 1.0)
    np.testing.assert_array_less(np.abs(ours - ref), tol)


@pytest.mark.parametrize("key", CASES)
def test_fixed_effect_covariance(fits, key):
    r, res = REF[key], fits[key]
    # vcov depends on theta, which the flat likelihood pins down to ~1e-4 relative
    np.testing.assert_allclose(res.cov_fe.to_numpy(), np.array(r["vcov"]), rtol=1e-3, atol=1e-10)
    np.testing.assert_allclose(res.bse_fe.to_numpy(), r["se"], rtol=1e-3)


@pytest.mark.parametrize("key", CASES)
def test_variance_parameters(fits, key):
    r, res = REF[key], fits[key]
    np.testing.assert_allclose(np.sqrt(res.scale), r["sigma"], rtol=1e-3)
    cov = res.cov_re
    for term in r["varcorr"]:
        names = [n if n != "(Intercept)" else "Intercept" for n in term["names"]]
        ours = cov.loc[names, names].to_numpy()
        ref = np.array(term["cov"], dtype=float).reshape(len(names), len(names))
        scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
        # relative to the variances' scale (a covariance can be near zero)
        assert np.max(np.abs(ours - ref) / np.maximum(scale, 1e-8)) <= 1e-3 or \
            np.max(np.abs(ours - ref)) <= 1e-6


@pytest.mark.parametrize("key", CASES)
def test_counts_and_criteria(fits, key):
    r, res = REF[key], fits[key]
    assert res.nobs == r["nobs"]
    assert res.n_groups == list(r["ngrps"].values())[0]
    assert res.df_resid == r["df_resid"]
    assert res.aic == pytest.approx(r["AIC"], abs=2e-6)
    assert res.bic == pytest.approx(r["BIC"], abs=2e-6)
    assert res.singular == bool(r["isSingular"])
    assert res.converged


@pytest.mark.parametrize("key", CASES)
def test_blups_and_fitted(fits, key):
    r, res = REF[key], fits[key]
    ref = pd.DataFrame(r["ranef"]).set_index("group")
    ref.columns = [c if c != "(Intercept)" else "Intercept" for c in ref.columns]
    ours = res.ranef()
    ours = ours.loc[ref.index, ref.columns]
    sd = np.sqrt(np.diag(res.cov_re.loc[ref.columns, ref.columns].to_numpy()))
    # BLUPs agree to 1e-3 of each effect's SD (they inherit theta's flatness)
    assert np.max(np.abs(ours.to_numpy() - ref.to_numpy()) / np.maximum(sd, 1e-3)) < 1e-3
    fitted = np.asarray(res.fittedvalues)
    y_sd = np.std(res.model.endog)
    assert np.max(np.abs(fitted - np.array(r["fitted"]))) < 1e-3 * y_sd


@pytest.mark.parametrize("key", CASES)
def test_conditional_covariance(fits, key):
    r, res = REF[key], fits[key]
    cv = r["condvar_full"]
    names = [n if n != "(Intercept)" else "Intercept" for n in cv["names"]]
    ref = np.array(cv["cov"], dtype=float)
    groups = cv["group"]
    ours = np.stack([res.random_effects_cov[g].loc[names, names].to_numpy() for g in groups])
    scale = np.max(np.abs(ref)) + 1e-12
    assert np.max(np.abs(ours - ref)) / scale < 2e-3


@pytest.mark.parametrize("key", CASES)
def test_scaled_residual_quantiles(fits, key):
    from sm_hlm.summary import residual_quantiles

    r, res = REF[key], fits[key]
    q = residual_quantiles(res)
    ref = pd.Series(r["resid_scaled_quantiles"])[q.index]
    np.testing.assert_allclose(q.to_numpy(), ref.to_numpy(), atol=2e-3)


def test_singular_case_names_the_term():
    r = REF["nearsing_ML"]
    with pytest.warns(sm_hlm.SingularFitWarning, match=r"\(Intercept \+ x \| group\): x"):
        res = sm_hlm.HLM.from_formula(r["formula"], load_csv(r["data"])).fit(reml=False)
    assert res.singular
    assert res.singular_terms == ["(Intercept + x | group): x"]
    assert "singular" in res.summary().as_text()


def test_simulator_reproduces_reference_data():
    """The committed CSVs are what sm_hlm.simulate makes with the recorded seeds."""
    d = simulate_mixed(n_groups=150, mean_group_size=12,
                       fe_params={"Intercept": 2.0, "x": 0.5, "z": -1.0},
                       re_names=["Intercept"], cov_re=[[0.8]], scale=1.5, seed=101)
    ref = load_csv("ri.csv")
    np.testing.assert_allclose(d[ref.columns].to_numpy(), ref.to_numpy(), rtol=1e-12, atol=1e-12)
