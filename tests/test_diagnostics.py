"""sm_hlm.diagnostics: ICC, R^2, reliability, shrinkage.

References: validation/r/diagnostics_refs.json (validation/r/diagnostics_refs.R:
the documented formulas computed in R from lme4 ML fits, cross-checked there
against performance::icc / r2_nakagawa), and dense per-group computations on
simulated data.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

import sm_hlm
from sm_hlm import diagnostics as D
from sm_hlm.results import HLMResults
from sm_hlm.simulate import simulate_mixed

from .conftest import load_csv, load_json

REF = load_json("diagnostics_refs.json")
NELS_KEYS = ["fit.0_ML", "fit.1_ML", "fit.2_ML"]
SIM_KEYS = ["ri_ML", "slope_ML", "indep_diag_ML", "three_ML"]
NELS_FORMULAS = {
    "fit.0_ML": "mscore ~ 1 + (1 | school)",
    "fit.1_ML": "mscore ~ ses + (ses | school)",
    "fit.2_ML": "mscore ~ flp + ses + flp * ses + (ses | school)",
}


def _fit(formula: str, data: pd.DataFrame, reml: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        return sm_hlm.HLM.from_formula(formula, data).fit(reml=reml, compute_vcomp_cov=False)


@pytest.fixture(scope="module")
def ref_fits(request) -> dict:
    """Our ML fits of every reference case (NELS only when its CSV exists)."""
    out = {}
    for key in SIM_KEYS:
        out[key] = _fit(REF[key]["formula"], load_csv(REF[key]["data"]))
    try:
        nels = request.getfixturevalue("nels")
    except pytest.skip.Exception:
        return out
    for key in NELS_KEYS:
        out[key] = _fit(NELS_FORMULAS[key], nels)
    return out


def _at_lme4(res, ref: dict) -> HLMResults:
    """Results of the same model evaluated at lme4's estimates."""
    fit = dataclasses.replace(res.fit_result,
                              fe_params=np.array(list(ref["fixef"].values()), dtype=float),
                              cov_re=np.array(ref["cov_re"], dtype=float), scale=ref["sigma2"])
    return HLMResults(res.model, fit)


def _get(ref_fits: dict, key: str):
    if key not in ref_fits:
        pytest.skip("NELS data not available")
    return ref_fits[key]


ALL_KEYS = NELS_KEYS + SIM_KEYS


# ------------------------------------------------------------ against R
@pytest.mark.parametrize("key", ALL_KEYS)
def test_formulas_at_lme4_estimates(ref_fits, key):
    ref = REF[key]
    res = _at_lme4(_get(ref_fits, key), ref)
    assert list(res.model.group_labels) == ref["group"]
    vc = D.variance_components(res)
    for name in ["var_fixed", "var_random", "var_residual"]:
        assert vc[name] == pytest.approx(ref[name], rel=1e-10)
    ic, rr = D.icc(res), D.r2(res)
    for name in ["ICC_adjusted", "ICC_unadjusted"]:
        assert ic[name] == pytest.approx(ref[name], abs=1e-10)
    for name in ["R2_marginal", "R2_conditional"]:
        assert rr[name] == pytest.approx(ref[name], abs=1e-10)
    rel = D.reliability(res)
    R = np.array(ref["reliability"], dtype=float)
    assert list(rel.columns) == list(res.model.re_design.names)
    np.testing.assert_array_equal(np.isnan(rel.to_numpy()), np.isnan(R))
    np.testing.assert_allclose(rel.to_numpy(), R, atol=1e-10)
    np.testing.assert_allclose(D.mean_reliability(res).to_numpy(),
                               list(ref["mean_reliability"].values()), atol=1e-10)
    np.testing.assert_allclose(D.shrinkage(res).to_numpy(),
                               np.array(ref["shrinkage_diag"], dtype=float), atol=1e-10)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_end_to_end_against_lme4(ref_fits, key):
    """Our own fit: ICC and R^2 within 5e-6 of lme4's (the estimates differ by
    the optimisers' tolerances, about 1e-5 relative in Psi), the group-level
    quantities within 1e-4."""
    ref, res = REF[key], _get(ref_fits, key)
    ic, rr = res.icc(), res.r2()
    for name in ["ICC_adjusted", "ICC_unadjusted"]:
        assert ic[name] == pytest.approx(ref[name], abs=5e-6)
    for name in ["R2_marginal", "R2_conditional"]:
        assert rr[name] == pytest.approx(ref[name], abs=5e-6)
    R = np.array(ref["reliability"], dtype=float)
    np.testing.assert_allclose(res.reliability().to_numpy(), R, atol=1e-4)
    np.testing.assert_allclose(res.shrinkage().to_numpy(),
                               np.array(ref["shrinkage_diag"], dtype=float), atol=1e-4)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_reference_matches_performance(key):
    """The R hand formulas are what performance 0.10.2 computes, except for a
    grouping factor split into several terms, where insight keeps one term."""
    ref = REF[key]
    perf = ref.get("performance")
    if perf is None:
        pytest.skip("performance was not installed when the references were made")
    assert perf["var_fixed"] == pytest.approx(ref["var_fixed"], rel=1e-12)
    if key == "indep_diag_ML":
        assert perf["var_random"] == pytest.approx(ref["cov_re"][0][0], rel=1e-10)
        assert perf["var_random"] < ref["var_random"]
        return
    for name in ["var_random", "ICC_adjusted", "ICC_unadjusted", "R2_marginal",
                 "R2_conditional"]:
        assert perf[name] == pytest.approx(ref[name], rel=1e-10)


def test_random_intercept_classical_icc(ref_fits):
    res = ref_fits["ri_ML"]
    ic = res.icc()
    tau2, s2 = res.cov_re.iloc[0, 0], res.scale
    assert ic["ICC"] == pytest.approx(tau2 / (tau2 + s2), rel=1e-13)
    assert ic["ICC_adjusted"] == pytest.approx(ic["ICC"], rel=1e-13)
    assert "ICC" not in ref_fits["slope_ML"].icc().index


# ------------------------------------------------- dense per-group oracles
@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """Random slopes, a group-level predictor w, and awkward groups: one of a
    single row and one whose x does not vary."""
    df = simulate_mixed(n_groups=40, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                        re_names=["Intercept", "x"], cov_re=[[1.0, 0.3], [0.3, 0.6]], scale=1.0,
                        seed=11, min_group_size=2)
    rng = np.random.default_rng(5)
    w = rng.normal(size=df["group"].max() + 1)
    df["w"] = w[df["group"]]
    df["y"] = df["y"] + 0.7 * df["w"] - 0.4 * df["w"] * df["x"]
    df = df.drop(df.index[(df["group"] == 2)][1:])             # group 2: one row
    df.loc[df["group"] == 3, "x"] = 0.25                       # group 3: constant x
    return df.reset_index(drop=True)


@pytest.fixture(scope="module")
def small_fit(small):
    return _fit("y ~ x * w + (x | group)", small)


def _dense_groups(res):
    m = res.model
    for j, g in enumerate(m.group_labels):
        rows = np.flatnonzero(m.group_codes == j)
        yield j, g, rows


def test_variance_components_dense(small_fit):
    m = small_fit.model
    psi, s2 = small_fit.cov_re.to_numpy(), small_fit.scale
    eta = m.exog @ small_fit.fe_params.to_numpy()
    traces = sum(np.trace(m.exog_re[rows] @ psi @ m.exog_re[rows].T)
                 for _, _, rows in _dense_groups(small_fit))
    vc = D.variance_components(small_fit)
    assert vc["var_fixed"] == pytest.approx(np.sum((eta - eta.mean()) ** 2) / (len(eta) - 1))
    assert vc["var_random"] == pytest.approx(traces / len(eta))
    assert vc["var_residual"] == s2
    tot = vc.sum()
    assert small_fit.r2()["R2_marginal"] == pytest.approx(vc["var_fixed"] / tot)
    assert small_fit.r2()["R2_conditional"] == pytest.approx(
        (vc["var_fixed"] + vc["var_random"]) / tot)
    assert small_fit.icc()["ICC_adjusted"] == pytest.approx(
        vc["var_random"] / (vc["var_random"] + s2))


def test_reliability_dense(small_fit):
    m = small_fit.model
    psi, s2 = small_fit.cov_re.to_numpy(), small_fit.scale
    rel = small_fit.reliability()
    ols = m.group_ols()
    # NaN exactly where the group's OLS coefficient is not estimable
    np.testing.assert_array_equal(rel.isna().to_numpy(), ols.isna().to_numpy())
    assert rel.loc[2].isna().tolist() == [False, True]
    assert rel.loc[3].isna().tolist() == [False, True]
    for j, g, rows in _dense_groups(small_fit):
        Z = m.exog_re[rows]
        keep = ~ols.loc[g].isna().to_numpy()
        V = s2 * np.linalg.inv(Z[:, keep].T @ Z[:, keep])
        d = np.diag(psi)[keep]
        np.testing.assert_allclose(rel.loc[g].to_numpy()[keep], d / (d + np.diag(V)), rtol=1e-10)
    mean = D.mean_reliability(small_fit)
    np.testing.assert_allclose(mean.to_numpy(), np.nanmean(rel.to_numpy(), axis=0), rtol=1e-13)
    assert rel.attrs["mean_reliability"] == mean.to_dict()
    # attrs hold plain floats, so pandas operations that compare attrs work
    assert pd.concat([rel, small_fit.shrinkage()], axis=1).shape == (len(rel), 4)


def test_shrinkage_dense(small_fit):
    m = small_fit.model
    psi, s2 = small_fit.cov_re.to_numpy(), small_fit.scale
    W = D.shrinkage_matrices(small_fit)
    shr = small_fit.shrinkage()
    bc = small_fit.fit_result.blup_cov
    assert W.shape == (2, 2, m.n_groups)
    assert np.all(np.isfinite(W))
    for j, g, rows in _dense_groups(small_fit):
        Z = m.exog_re[rows]
        A = Z.T @ Z
        # W_j = C_j Z_j'Z_j / sigma^2, C_j the BLUP's conditional covariance
        np.testing.assert_allclose(W[:, :, j], bc[:, :, j] @ A / s2, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(W[:, :, j], psi @ np.linalg.solve(A @ psi + s2 * np.eye(2), A),
                                   rtol=1e-9, atol=1e-12)
        if np.linalg.matrix_rank(A) == 2:
            np.testing.assert_allclose(W[:, :, j],
                                       psi @ np.linalg.inv(psi + s2 * np.linalg.inv(A)),
                                       rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(shr.loc[g].to_numpy(), np.diag(W[:, :, j]), rtol=1e-13)


def test_blup_coefficients_are_shrunken_ols(small_fit):
    """gamma_j + b_j = W_j beta_OLS_j + (I - W_j) gamma_j wherever OLS exists."""
    res = small_fit
    beta = res.fe_params
    gamma = D.group_fixed_part(res)
    w = res.model.data.frame.groupby("group")["w"].first()
    # w is a group-level variable, so X_j beta is exactly Z_j gamma_j where
    # Z_j has full rank; groups 2 and 3 regress on the intercept only
    ok = gamma.notna().all(axis=1)
    assert ok.sum() == len(ok) - 2 and not ok[2] and not ok[3]
    np.testing.assert_allclose(gamma["Intercept"][ok], (beta["Intercept"] + beta["w"] * w)[ok],
                               rtol=1e-9)
    np.testing.assert_allclose(gamma["x"][ok], (beta["x"] + beta["x:w"] * w)[ok], rtol=1e-9)
    eta = res.model.exog @ beta.to_numpy()
    for g in (2, 3):
        rows = res.model.group_codes == res.model.group_labels.get_loc(g)
        assert gamma.loc[g, "Intercept"] == pytest.approx(eta[rows].mean())
    W = D.shrinkage_matrices(res)
    ols = res.model.group_ols()
    blup = D.group_blup_coefficients(res)
    full = ols.notna().all(axis=1).to_numpy()
    pred = (np.einsum("ijm,mj->mi", W, ols.to_numpy())
            + np.einsum("ijm,mj->mi", np.eye(2)[:, :, None] - W, gamma.to_numpy()))
    np.testing.assert_allclose(blup.to_numpy()[full], pred[full], rtol=1e-8, atol=1e-10)


def test_blup_coefficients_equal_coef_without_level2():
    # a model whose fixed design equals its random design: gamma_j = beta
    data = load_csv("slope.csv")
    fit = _fit("y ~ x + (x | group)", data)
    blup = D.group_blup_coefficients(fit)
    np.testing.assert_allclose(blup.to_numpy(), fit.group_coefficients[["Intercept", "x"]],
                               rtol=1e-10, atol=1e-12)
    assert len(blup) == fit.model.n_groups


def test_random_intercept_shrinkage_is_classical(ref_fits):
    res = ref_fits["ri_ML"]
    tau2, s2 = res.cov_re.iloc[0, 0], res.scale
    n = res.model.group_sizes.to_numpy()
    classical = n * tau2 / (n * tau2 + s2)
    np.testing.assert_allclose(res.shrinkage()["Intercept"].to_numpy(), classical, rtol=1e-12)
    np.testing.assert_allclose(res.reliability()["Intercept"].to_numpy(), classical, rtol=1e-12)


def test_singular_fit_is_finite():
    data = load_csv("nearsing.csv")
    res = _fit("y ~ x + (x | group)", data)
    assert res.singular
    W = D.shrinkage_matrices(res)
    assert np.all(np.isfinite(W))
    # with correlated effects the diagonal of W_j may leave [0, 1] (here the
    # correlation is -1); the eigenvalues of W_j always lie in [0, 1)
    ev = np.linalg.eigvals(np.moveaxis(W, 2, 0))
    assert np.all(np.abs(ev.imag) < 1e-10)
    assert np.all((ev.real > -1e-12) & (ev.real < 1))
    assert np.all(np.isfinite(res.icc())) and np.all(np.isfinite(res.r2()))


def test_delegating_methods(small_fit):
    pd.testing.assert_series_equal(small_fit.icc(), D.icc(small_fit))
    pd.testing.assert_series_equal(small_fit.r2(), D.r2(small_fit))
    pd.testing.assert_frame_equal(small_fit.reliability(), D.reliability(small_fit))
    pd.testing.assert_frame_equal(small_fit.shrinkage(), D.shrinkage(small_fit))
    assert list(small_fit.shrinkage().index) == list(small_fit.model.group_labels)


def test_structured_residuals_are_refused():
    import sm_hlm
    from sm_hlm.simulate import simulate_panel

    d = simulate_panel(n_subjects=300, re_names=("Intercept",), cov_re=[[1.0]], seed=4)
    res = sm_hlm.HLM.from_formula("y ~ wave + (1 | subject)", d,
                                  residual=sm_hlm.AR1(time="wave")).fit(reml=False)
    for method in (res.icc, res.r2, res.reliability, res.shrinkage):
        with pytest.raises(NotImplementedError, match="residual structure"):
            method()
