"""Kenward-Roger (sm_hlm.kenward_roger) against pbkrtest 0.5 and lmerTest.

References: validation/r/kr_pbkrtest.R -> validation/r/kr_pbkrtest.json
(pbkrtest's vcovAdj, Lb_ddf per coefficient, KRmodcomp for multi-df
contrasts, lmerTest's summary(ddf = "Kenward-Roger")).  sm_hlm is evaluated
at lme4's REML theta (``results_at``), so the comparison is of the Kenward-
Roger computation itself, to 1e-6 relative; the fit's own optimum is compared
separately.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sm_hlm import HLM, AR1
from sm_hlm.kenward_roger import kr_adjust, kr_core, kr_parameter_matrices
from sm_hlm.simulate import simulate_mixed

ROOT = Path(__file__).resolve().parents[1]
REFS_PATH = ROOT / "validation" / "r" / "kr_pbkrtest.json"
DATA_DIR = ROOT / "validation" / "r" / "data"
NELS_PATH = ROOT.parent / "shared" / "data" / "nels.csv"
REFS = json.loads(REFS_PATH.read_text())
CASES = [k for k in REFS if k != "versions"]
RTOL = 1e-6


def _data(case: dict) -> pd.DataFrame:
    if case["data"] == "nels":
        if not NELS_PATH.exists():
            pytest.skip(f"NELS data not found at {NELS_PATH}")
        d = pd.read_csv(NELS_PATH)
        d["school"] = d["school"].astype(str)
        return d
    return pd.read_csv(DATA_DIR / case["data"])


@pytest.fixture(scope="module")
def at_lme4() -> dict:
    """Each case evaluated at lme4's REML theta (and the model, for refits)."""
    out = {}
    for key in CASES:
        case = REFS[key]
        model = HLM.from_formula(case["formula"], _data(case))
        out[key] = (model, model.results_at(np.array(case["theta"]), reml=True))
    return out


def _order(res) -> list[str]:
    return ["(Intercept)" if n == "Intercept" else n for n in res.model.exog_names]


@pytest.mark.parametrize("key", CASES)
def test_vcov_adj_matches_pbkrtest(key: str, at_lme4: dict) -> None:
    case = REFS[key]
    _, res = at_lme4[key]
    assert _order(res) == case["fixef_names"]
    np.testing.assert_allclose(res.cov_fe.to_numpy(), case["vcov"], rtol=RTOL)
    np.testing.assert_allclose(res.cov_kenward_roger().to_numpy(), case["vcovAdj"], rtol=RTOL)


@pytest.mark.parametrize("key", CASES)
def test_coefficient_table_matches_lmertest(key: str, at_lme4: dict) -> None:
    case = REFS[key]
    _, res = at_lme4[key]
    tab = res.kenward_roger()
    lt = case["lmerTest"]
    np.testing.assert_allclose(tab["df"], case["coef"]["ddf"], rtol=RTOL)
    np.testing.assert_allclose(tab["df"], lt["df"], rtol=RTOL)
    np.testing.assert_allclose(tab["Std. Error"], case["coef"]["se_adj"], rtol=RTOL)
    np.testing.assert_allclose(tab["Estimate"], lt["Estimate"], rtol=RTOL)
    np.testing.assert_allclose(tab["t value"], lt["t value"], rtol=RTOL)
    # p-values: relative where R prints them above underflow
    p_r = np.array([np.nan if v is None else v for v in lt["Pr(>|t|)"]], float)
    big = p_r > 1e-300
    np.testing.assert_allclose(tab["Pr(>|t|)"].to_numpy()[big], p_r[big], rtol=1e-5)
    assert list(tab.index) == list(res.model.exog_names)


@pytest.mark.parametrize("key", CASES)
def test_contrasts_match_krmodcomp(key: str, at_lme4: dict) -> None:
    case = REFS[key]
    _, res = at_lme4[key]
    for ct in case["contrasts"]:
        L = np.array(ct["L"], float)
        rhs = 0.0 if ct["betaH"] is None else L @ np.array(ct["betaH"], float)
        if L.shape[0] > 1:
            f = res.kenward_roger(L, rhs).iloc[0]
            np.testing.assert_allclose(f["F value"], ct["Fstat"], rtol=RTOL)
            np.testing.assert_allclose(f["DenDF"], ct["ddf"], rtol=RTOL)
            np.testing.assert_allclose(f["F.scaling"], ct["F.scaling"], rtol=RTOL)
            np.testing.assert_allclose(f["F unscaled"], ct["FstatU"], rtol=RTOL)
            np.testing.assert_allclose(f["Pr(>F)"], ct["p.value"], rtol=1e-5)
            assert f["NumDF"] == ct["ndf"]
        else:
            # one row: t test on the same df; KRmodcomp's F is F.scaling * t^2
            t = res.kenward_roger(L, rhs).iloc[0]
            np.testing.assert_allclose(t["df"], ct["ddf"], rtol=RTOL)
            np.testing.assert_allclose(ct["F.scaling"] * t["t value"] ** 2, ct["Fstat"], rtol=RTOL)
            np.testing.assert_allclose(t["Pr(>|t|)"], ct["p.value"], rtol=1e-5)
        # the core function agrees with KRmodcomp's auxiliary numbers
        core = res._results._sm_hlm_kr_core
        adj = kr_adjust(core, L, res.fit_result.fe_params,
                        0.0 if ct["betaH"] is None else np.array(ct["betaH"]))
        np.testing.assert_allclose([adj.A1, adj.A2, adj.rho], [ct["A1"], ct["A2"], ct["rho"]],
                                   rtol=RTOL)


@pytest.mark.parametrize("key", ["slope", "three", "indep"])
def test_own_reml_fit_close_to_pbkrtest(key: str, at_lme4: dict) -> None:
    """At sm_hlm's own REML optimum the df move only as far as theta differs from lme4's."""
    model, res_lme4 = at_lme4[key]
    fit = model.fit(reml=True)
    assert fit.llf >= res_lme4.llf - 1e-8
    np.testing.assert_allclose(fit.kenward_roger()["df"], REFS[key]["coef"]["ddf"], rtol=1e-5)


def test_ml_fit_is_refitted_by_reml(at_lme4: dict) -> None:
    model, _ = at_lme4["slope"]
    ml = model.fit(reml=False)
    reml = model.fit(reml=True)
    with pytest.warns(UserWarning, match="refitted by REML"):
        tab = ml.kenward_roger()
    assert "refitted by REML" in tab.attrs["method"]
    pd.testing.assert_frame_equal(tab, reml.kenward_roger(), check_exact=False, rtol=1e-12)
    # pbkrtest does the same: its vcovAdj of the ML fit is that of the REML fit
    np.testing.assert_allclose(REFS["slope"]["vcovAdj_from_ML"], REFS["slope"]["vcovAdj"],
                               rtol=RTOL)
    np.testing.assert_allclose(ml.cov_kenward_roger(), reml.cov_kenward_roger(), rtol=1e-12)
    with pytest.raises(ValueError, match="needs a REML fit"):
        ml.summary(ddf="kenward-roger")


def test_summary_uses_kenward_roger(at_lme4: dict) -> None:
    _, res = at_lme4["slope"]
    smry = res.summary(ddf="Kenward-Roger")
    fe = smry.tables[3]
    kr = res.kenward_roger()
    np.testing.assert_allclose(fe["Std.Err."].astype(float), kr["Std. Error"], rtol=1e-12)
    np.testing.assert_allclose(fe["df"].astype(float), kr["df"], rtol=1e-12)
    crit = stats.t.ppf(0.975, kr["df"].to_numpy())
    np.testing.assert_allclose(fe["0.975]"].astype(float),
                               kr["Estimate"].to_numpy() + crit * kr["Std. Error"].to_numpy(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="kenward-roger"):
        res.summary(ddf="kr")


def test_levels_table_kenward_roger() -> None:
    df = simulate_mixed(n_groups=30, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                        re_names=("Intercept", "x"), cov_re=[[1.0, 0.2], [0.2, 0.4]], seed=3)
    df["w"] = np.random.default_rng(2).normal(size=30)[df["group"] - 1]
    m = HLM.from_levels(level1="y ~ x", level2={"Intercept": "~ w", "x": "~ w"}, groups="group",
                        random=["Intercept", "x"], data=df)
    res = m.fit(reml=True)
    eqs = res.level_equations(ddf="kenward-roger")
    kr = res.kenward_roger()
    frame = eqs.frame
    np.testing.assert_allclose(np.sort(frame["df"].to_numpy()), np.sort(kr["df"].to_numpy()),
                               rtol=1e-12)
    np.testing.assert_allclose(np.sort(frame["Std.Err."].to_numpy()),
                               np.sort(kr["Std. Error"].to_numpy()), rtol=1e-12)


def test_string_and_array_contrasts_agree(at_lme4: dict) -> None:
    _, res = at_lme4["slope"]
    a = res.kenward_roger(np.array([[0, 1, 0, 0], [0, 0, 0, 1.0]]), [2.0, 0.2])
    s = res.kenward_roger("x = 2, x:z = 0.2")
    pd.testing.assert_frame_equal(a, s)
    from sm_hlm.inference import contest
    pd.testing.assert_frame_equal(contest(res, np.array([[0, 1, 0, 0], [0, 0, 0, 1.0]]), [2.0, 0.2],
                                          ddf="kenward-roger"), a)
    with pytest.raises(ValueError, match="ddf must be"):
        contest(res, np.array([[0, 1, 0, 0]]), ddf="kr")
    rows = res.kenward_roger(np.array([[0, 1, 0, 0], [0, 0, 0, 1.0]]), joint=False)
    full = res.kenward_roger()
    np.testing.assert_allclose(rows["df"], full["df"].iloc[[1, 3]], rtol=1e-12)
    np.testing.assert_allclose(rows["Std. Error"], full["Std. Error"].iloc[[1, 3]], rtol=1e-12)


def test_bad_contrasts(at_lme4: dict) -> None:
    _, res = at_lme4["slope"]
    with pytest.raises(ValueError, match="4 columns"):
        res.kenward_roger(np.ones((1, 3)))
    with pytest.raises(ValueError, match="rank"):
        res.kenward_roger(np.array([[0, 1, 0, 0], [0, 2, 0, 0.0]]))
    with pytest.raises(ValueError, match="rhs"):
        res.kenward_roger(np.eye(4)[:2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="inside the string"):
        res.kenward_roger("x = 0", rhs=1.0)
    with pytest.raises(TypeError):
        res.kenward_roger(None, 0.0, True)   # joint is keyword-only


def test_residual_structure_not_implemented() -> None:
    from sm_hlm.simulate import simulate_panel
    panel = simulate_panel(n_subjects=40, n_waves=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the fit itself is not under test
        res = HLM.from_formula("y ~ wave + (1 | subject)", panel, residual=AR1(time="wave")).fit()
    with pytest.raises(NotImplementedError, match="residual structure"):
        res.kenward_roger()


# ------------------------------------------------- dense brute force (property)
def _dense_kr(X, Zs, groups, psi, s2, E):
    """pbkrtest's vcovAdj_internal written out with n x n matrices (small data only)."""
    n = X.shape[0]
    m = groups.max() + 1
    G = []
    for Er in E:
        Gr = np.zeros((n, n))
        for j in range(m):
            idx = np.flatnonzero(groups == j)
            Gr[np.ix_(idx, idx)] = Zs[idx] @ Er @ Zs[idx].T
        G.append(Gr)
    G.append(np.eye(n))
    gam = list(np.concatenate([[np.sum(psi * Er) / np.sum(Er * Er) * 1.0 for Er in E]]))
    Sigma = sum(gv * Gr for gv, Gr in zip(gam + [s2], G))
    Si = np.linalg.inv(Sigma)
    Phi = np.linalg.inv(X.T @ Si @ X)
    R = len(G)
    P = [-X.T @ Si @ Gr @ Si @ X for Gr in G]
    Q = [[X.T @ Si @ G[r] @ Si @ G[t] @ Si @ X for t in range(R)] for r in range(R)]
    K = np.array([[np.trace(Si @ G[r] @ Si @ G[t]) for t in range(R)] for r in range(R)])
    IE2 = np.array([[K[r, t] - 2 * np.trace(Phi @ Q[r][t]) + np.trace(Phi @ P[r] @ Phi @ P[t])
                     for t in range(R)] for r in range(R)])
    W = 2 * np.linalg.inv(IE2)
    U = sum(W[r, t] * (Q[r][t] - P[r] @ Phi @ P[t]) for r in range(R) for t in range(R))
    return Phi, Phi + 2 * Phi @ U @ Phi, Sigma


def test_groupwise_core_equals_dense_formula() -> None:
    """Per-group Woodbury algebra == the n x n formula, with groups of size 1 and a
    group-level predictor (X partly in the span of Z)."""
    df = simulate_mixed(n_groups=12, mean_group_size=4, min_group_size=1,
                        fe_params={"Intercept": 1.0, "x": 0.5}, re_names=("Intercept", "x"),
                        cov_re=[[1.0, 0.3], [0.3, 0.5]], seed=5)
    df["w"] = np.random.default_rng(1).normal(size=12)[df["group"] - 1]
    X = np.column_stack([np.ones(len(df)), df["x"], df["w"]])
    Z = X[:, :2]
    g = df["group"].to_numpy() - 1
    m = 12
    lam = np.array([[1.1, 0.0], [0.4, 0.6]])
    s2 = 1.7
    psi = s2 * lam @ lam.T
    E = kr_parameter_matrices([(0, [(0, 0), (1, 0), (1, 1)])], 2)
    ZtZ = np.array([Z[g == j].T @ Z[g == j] for j in range(m)])
    ZtX = np.array([Z[g == j].T @ X[g == j] for j in range(m)])
    core = kr_core(ZtZ, ZtX, X.T @ X, len(df), lam, s2, E)
    Phi, PhiA, Sigma = _dense_kr(X, Z, g, psi, s2, list(E))
    # the dense Sigma uses gamma = the free entries of Psi
    for j in range(m):
        idx = np.flatnonzero(g == j)
        np.testing.assert_allclose(Sigma[np.ix_(idx, idx)], Z[idx] @ psi @ Z[idx].T
                                   + s2 * np.eye(len(idx)), rtol=1e-12)
    np.testing.assert_allclose(core.Phi, Phi, rtol=1e-10)
    np.testing.assert_allclose(core.PhiA, PhiA, rtol=1e-9)
    # a singular Psi (rank 1) goes through the same algebra
    lam1 = np.array([[1.0, 0.0], [0.5, 0.0]])
    core1 = kr_core(ZtZ, ZtX, X.T @ X, len(df), lam1, s2, E)
    Phi1, PhiA1, _ = _dense_kr(X, Z, g, s2 * lam1 @ lam1.T, s2, list(E))
    np.testing.assert_allclose(core1.PhiA, PhiA1, rtol=1e-8)


def test_no_random_effects_reduces_to_ols() -> None:
    """With sigma^2 the only variance parameter, Kenward-Roger is exact: OLS's t and F."""
    import statsmodels.api as sm
    df = simulate_mixed(n_groups=30, mean_group_size=8, fe_params={"Intercept": 1.0, "x": 0.5},
                        seed=9)
    res = HLM.from_formula("y ~ x", df, groups="group", re_formula="0").fit()
    ols = sm.OLS(df["y"], sm.add_constant(df["x"])).fit()
    tab = res.kenward_roger()
    np.testing.assert_allclose(tab["Std. Error"], ols.bse, rtol=1e-10)
    np.testing.assert_allclose(tab["df"], ols.df_resid, rtol=1e-10)
    f = res.kenward_roger(np.eye(2)).iloc[0]
    ft = ols.f_test(np.eye(2))
    np.testing.assert_allclose(f["F value"], float(ft.fvalue), rtol=1e-10)
    np.testing.assert_allclose(f["DenDF"], ft.df_denom, rtol=1e-10)
    assert f["F.scaling"] == pytest.approx(1.0, rel=1e-12)
