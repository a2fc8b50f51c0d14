"""The multi-factor engine (sm_hlm.engine): dense n x n references, the one-factor
engine, and lme4 fits (validation/r/multilevel_lme4.R, JSON committed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sm_hlm
from sm_hlm.engine import (BlockedDeviance, RETerm, ThetaLayout, interaction_codes,
                           lme4_term_order, nested_in, theta_from_lme4, theta_to_lme4)
from sm_hlm.engine.dense import dense_reference
from sm_hlm.engine.fit import fit_theta
from sm_hlm.engine.solution import solve_at
from sm_hlm.simulate import simulate_mixed
from validation.multilevel_data import design, engine_terms

from .conftest import load_csv, load_json

REF = load_json("multilevel_lme4.json")

# --------------------------------------------------------------------- cases
#: case -> (data file, random terms in lme4's formula order after || expansion, fixed effects)
#: fixed effects: "1", a column, "a:b" (product) or "C(col)" (treatment dummies, sorted levels)
MODELS = {
    "ml_three": ("ml_three.csv", [("school", ["1", "x"], True), ("school:klass", ["1", "x"], True)],
                 ["1", "x", "sector", "tq", "x:sector"]),
    "ml_four": ("ml_four.csv", [("district", ["1", "x"], True),
                                ("district:school", ["1", "x"], True),
                                ("district:school:klass", ["1", "x"], True)],
                ["1", "x", "sector", "tq"]),
    "ml_crossed": ("ml_crossed.csv", [("subj", ["1", "cond"], True), ("item", ["1", "cond"], True)],
                   ["1", "cond", "w"]),
    "ml_crossed_indep": ("ml_crossed.csv", [("subj", ["1"], True), ("subj", ["cond"], True),
                                            ("item", ["1"], True)], ["1", "cond", "w"]),
    "penicillin": ("penicillin.csv", [("plate", ["1"], True), ("sample", ["1"], True)], ["1"]),
    "pastes": ("pastes.csv", [("batch", ["1"], True), ("batch:cask", ["1"], True)], ["1"]),
    "oats": ("oats.csv", [("Block", ["1"], True), ("Block:Variety", ["1"], True)],
             ["1", "nitro", "C(Variety)"]),
    "machines": ("machines.csv", [("Worker", ["1"], True), ("Worker:Machine", ["1"], True)],
                 ["1", "C(Machine)"]),
}
KEYS = sorted(REF)


def fixed_design(df: pd.DataFrame, spec: list[str]) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for s in spec:
        if s.startswith("C("):
            col = s[2:-1]
            levels = sorted(df[col].astype(str).unique())
            for lev in levels[1:]:
                cols.append((df[col].astype(str) == lev).to_numpy(float))
                names.append(f"{col}{lev}")
        else:
            cols.append(design(df, [s])[:, 0])
            names.append("(Intercept)" if s == "1" else s)
    return np.column_stack(cols), names


def level_labels(df: pd.DataFrame, term: RETerm) -> np.ndarray:
    """lme4's label of each level code of a term ("a:b" for interactions)."""
    lab = df[term.factor.split(":")].astype(str).agg(":".join, axis=1).to_numpy()
    out = np.empty(term.n_levels, dtype=object)
    out[term.refs] = lab
    return out


def build(case: str, df: pd.DataFrame | None = None):
    fname, spec, fe = MODELS[case]
    df = load_csv(fname) if df is None else df
    terms = engine_terms(df, spec)
    X, names = fixed_design(df, fe)
    return df, terms, X, df.iloc[:, list(df.columns).index(_response(case))].to_numpy(float), names


def _response(case: str) -> str:
    return {"penicillin": "diameter", "pastes": "strength", "oats": "yield",
            "machines": "score"}.get(case, "y")


def random_theta(layout: ThetaLayout, rng: np.random.Generator) -> np.ndarray:
    diag = layout.lower == 0
    k = layout.n_theta
    return np.where(diag, rng.uniform(0.3, 1.5, k), rng.uniform(-0.6, 0.6, k))


# ------------------------------------------------------- dense references
DENSE_CASES = ["ml_three", "ml_four", "ml_crossed", "ml_crossed_indep", "penicillin", "pastes",
               "oats", "machines", "mixed", "mixed_dense_nested"]


def _dense_case(case: str):
    if not case.startswith("mixed"):
        return build(case)
    # nested and crossed together: children in classes in schools, crossed with raters
    df = load_csv("ml_three.csv")
    rng = np.random.default_rng(5)
    df["rater"] = rng.integers(1, 9, len(df))
    df["child"] = rng.integers(1, 4, len(df))
    spec = [("school", ["1", "x"], True), ("school:klass", ["1"], True),
            ("school:klass:child", ["1", "x"], False), ("rater", ["1", "x"], True)]
    if case == "mixed_dense_nested":
        # the crossed rater factor sorts between classes and schools, so the schools
        # (nested) land in the dense block; three effects per school
        df["rater"] = rng.integers(1, 131, len(df))
        spec = [("school", ["1", "x", "tq"], True), ("school:klass", ["1"], True),
                ("rater", ["1"], True)]
    X, names = fixed_design(df, ["1", "x", "sector"])
    return df, engine_terms(df, spec), X, df["y"].to_numpy(), names


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("case", DENSE_CASES)
def test_against_dense_algebra(case, reml):
    df, terms, X, y, _ = _dense_case(case)
    dev = BlockedDeviance(terms, X, y, reml=reml)
    rng = np.random.default_rng(abs(hash(case)) % 1000)
    for _ in range(2):
        theta = random_theta(dev.layout, rng)
        ref = dense_reference(terms, X, y, theta, reml=reml)
        sol = solve_at(dev, theta)
        assert dev(theta) == pytest.approx(ref["deviance"], rel=1e-12, abs=1e-10)
        assert sol.deviance == pytest.approx(ref["deviance"], rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(sol.beta, ref["beta"], rtol=1e-10, atol=1e-10)
        assert sol.scale == pytest.approx(ref["sigma2"], rel=1e-10)
        np.testing.assert_allclose(sol.cov_beta, ref["cov_beta"], rtol=1e-9, atol=1e-12)
        assert sol.logdet_L == pytest.approx(ref["logdet_V"], rel=1e-12, abs=1e-10)
        for k in range(len(terms)):
            np.testing.assert_allclose(sol.b[k], ref["b"][k], rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(sol.condvar[k], ref["condvar"][k], rtol=1e-9, atol=1e-12)
            lam = dev.layout.lambdas(theta)[k]
            np.testing.assert_allclose(sol.u[k] @ lam.T, sol.b[k], atol=1e-12)


def test_structure_of_nested_and_crossed_models():
    _, terms, X, y, _ = build("ml_four")
    st = BlockedDeviance(terms, X, y, reml=False).structure
    # innermost first; everything stays block diagonal, D is only [X y]
    assert [t.factor for t in st.terms] == ["district:school:klass", "district:school", "district"]
    assert st.J == 3 and st.N_D == X.shape[1] + 1
    _, terms, X, y, _ = build("ml_crossed")
    st = BlockedDeviance(terms, X, y, reml=False).structure
    assert st.J == 1 and st.N_D == 2 * 30 + X.shape[1] + 1
    assert {g.mode for g in st.updates[0]} == {"linear"}     # crossed: P @ vec(G)
    _, terms, X, y, _ = _dense_case("mixed")
    st = BlockedDeviance(terms, X, y, reml=False).structure
    assert [t.factor for t in st.terms] == ["school:klass:child", "school:klass", "school", "rater"]
    assert st.J == 3                       # the rater factor is crossed: dense from there on
    assert st.N_D == 2 * 8 + X.shape[1] + 1
    _, terms, X, y, _ = _dense_case("mixed_dense_nested")
    st = BlockedDeviance(terms, X, y, reml=False).structure
    assert [t.factor for t in st.terms] == ["school:klass", "rater", "school"] and st.J == 1


def test_rows_in_any_order_give_the_same_fit():
    df, terms, X, y, _ = build("ml_four")
    perm = np.random.default_rng(3).permutation(len(df))
    df2, terms2, X2, y2, _ = build("ml_four", df.iloc[perm].reset_index(drop=True))
    theta = random_theta(ThetaLayout(terms), np.random.default_rng(4))
    s1 = solve_at(BlockedDeviance(terms, X, y, reml=True), theta)
    s2 = solve_at(BlockedDeviance(terms2, X2, y2, reml=True), theta)
    assert s1.deviance == pytest.approx(s2.deviance, rel=1e-12)
    np.testing.assert_allclose(s1.beta, s2.beta, rtol=1e-10)
    for k, (t1, t2) in enumerate(zip(terms, terms2)):
        a = pd.DataFrame(s1.b[k], index=level_labels(df, t1)).sort_index()
        b = pd.DataFrame(s2.b[k], index=level_labels(df2, t2)).sort_index()
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-10)


def test_zero_theta_block_removes_the_term():
    df, terms, X, y, _ = build("ml_crossed")
    full = BlockedDeviance(terms, X, y, reml=False)
    theta = random_theta(full.layout, np.random.default_rng(1))
    theta[3:] = 0.0                                      # item term switched off
    only_subj = BlockedDeviance(terms[:1], X, y, reml=False)
    assert full(theta) == pytest.approx(only_subj(theta[:3]), rel=1e-12)


# ---------------------------------------------------- one-factor engine
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_single_factor_matches_profiled_deviance(reml):
    data = simulate_mixed(n_groups=80, mean_group_size=9, fe_params={"Intercept": 1, "x": 0.5,
                          "z": -0.3}, re_names=["Intercept", "x"], cov_re=[[1, 0.2], [0.2, 0.5]],
                          seed=11)
    data = data.sample(frac=1.0, random_state=2).reset_index(drop=True)
    model = sm_hlm.HLM.from_formula("y ~ x + z + (x | group)", data)
    pdev = model.deviance_function(reml=reml)
    terms = engine_terms(data, [("group", ["1", "x"], True)])
    X = design(data, ["1", "x", "z"])
    dev = BlockedDeviance(terms, X, data["y"].to_numpy(), reml=reml)
    rng = np.random.default_rng(0)
    for theta in [np.array([1.0, 0.0, 1.0]), np.array([0.7, -0.3, 0.4]),
                  random_theta(dev.layout, rng), np.array([0.0, 0.0, 0.5])]:
        assert dev(theta) == pytest.approx(pdev(theta), rel=1e-12)


# --------------------------------------------------------------- lme4
def lme4_theta(key: str, layout: ThetaLayout) -> np.ndarray:
    r = REF[key]
    return theta_from_lme4(np.array([r["theta"][n] for n in r["theta_names"]]), layout)


@pytest.mark.parametrize("key", KEYS)
def test_theta_order_and_names_follow_lme4(key):
    case = key.rsplit("_", 1)[0]
    _, terms, *_ = build(case)
    layout = ThetaLayout(terms)
    names = np.array(layout.names, dtype=object)
    mapped = theta_to_lme4(np.arange(layout.n_theta, dtype=float), layout).astype(int)
    # lme4 names the lower-triangle entry (i, j) "factor.row.col"; ours the same way
    assert list(names[mapped]) == REF[key]["theta_names"]


@pytest.mark.parametrize("key", KEYS)
def test_deviance_at_lme4_theta(key):
    r = REF[key]
    case = key.rsplit("_", 1)[0]
    df, terms, X, y, fe_names = build(case)
    assert fe_names == r["fixef_names"]
    dev = BlockedDeviance(terms, X, y, reml=r["REML"])
    theta = lme4_theta(key, dev.layout)
    sol = solve_at(dev, theta)
    assert sol.deviance == pytest.approx(r["deviance"], abs=1e-8)
    beta = np.array([r["fixef"][n] for n in r["fixef_names"]])
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-8, atol=1e-10)
    assert np.sqrt(sol.scale) == pytest.approx(r["sigma"], rel=1e-8)
    vcov = np.array(r["vcov"])
    np.testing.assert_allclose(sol.cov_beta, vcov, rtol=1e-7, atol=1e-12 * np.abs(vcov).max())
    # conditional modes and variances of every factor, matched by level label
    seen = {}
    for k, t in enumerate(terms):
        ref = r["ranef"][t.factor]
        pos = pd.Index(ref["levels"]).get_indexer(level_labels(df, t))
        assert np.all(pos >= 0)
        cols = [ref["names"].index(n) for n in t.names]
        vals = np.array(ref["values"])[pos][:, cols]
        np.testing.assert_allclose(sol.b[k], vals, rtol=1e-6, atol=1e-8 * np.abs(vals).max())
        cv = r["condvar"][t.factor][seen.get(t.factor, 0)]
        seen[t.factor] = seen.get(t.factor, 0) + 1
        assert cv["names"] == list(t.names)
        cov = np.array(cv["cov"]).reshape(-1, t.S, t.S)[pos]
        np.testing.assert_allclose(sol.condvar[k], cov, rtol=1e-6)


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for key in KEYS:
        case = key.rsplit("_", 1)[0]
        _, terms, X, y, _ = build(case)
        reml = REF[key]["REML"]
        out[key] = (fit_theta(terms, X, y, reml=reml),
                    fit_theta(terms, X, y, reml=reml, ftol_abs=1e-12, xtol_abs=1e-10))
    return out


@pytest.mark.parametrize("key", KEYS)
def test_fit_agrees_with_lme4(fits, key):
    r, (fit, tight) = REF[key], fits[key]
    for ours, ref in ((fit, r), (tight, r["tight"])):
        llf = -ours.deviance / 2
        # never below lme4's optimum by more than 1e-6, and within 1e-6 of it
        assert llf >= ref["logLik"] - 1e-6
        assert abs(llf - ref["logLik"]) <= 1e-6
        assert ours.optimizer.converged
        assert ours.n_evals > 0
    # fixed effects and their SEs at the optimum, both optimizers run to tight tolerances
    # (at lme4's default ftol_abs = 1e-8 the flat ml_four likelihood leaves beta uncertain
    # in the 5th digit, for lme4 and for us alike)
    ref = r["tight"]
    sol = solve_at(tight.deviance_function, tight.theta, condvar=False)
    beta = np.array([ref["fixef"][n] for n in r["fixef_names"]])
    assert np.all(np.abs(sol.beta - beta) <= 1e-5 * np.maximum(np.abs(beta), 1.0))
    np.testing.assert_allclose(np.sqrt(np.diag(sol.cov_beta)), ref["se"], rtol=1e-4)


# ------------------------------------------------------ helpers and errors
def test_lme4_term_order():
    assert list(lme4_term_order([30, 10, 10])) == [0, 1, 2]        # already non-increasing
    assert list(lme4_term_order([5, 10, 10])) == [2, 1, 0]          # rev(order(nl)): ties reversed
    assert list(lme4_term_order([10, 40, 20])) == [1, 2, 0]


def test_nesting_and_interaction_codes():
    df = load_csv("ml_three.csv")
    terms = engine_terms(df, [("school", ["1"], True), ("school:klass", ["1"], True),
                              ("klass", ["1"], True)])
    assert nested_in(terms[1], terms[0]) and not nested_in(terms[0], terms[1])
    assert not nested_in(terms[2], terms[0])          # class labels are reused across schools
    codes = interaction_codes(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 0]))
    assert list(codes) == [0, 1, 2, 2]


def test_memory_error_names_the_factors():
    _, terms, X, y, _ = build("ml_crossed")
    with pytest.raises(MemoryError, match=r"item \(30 levels x 2 = 60\)"):
        BlockedDeviance(terms, X, y, reml=False, memory_limit=10_000)


def test_bad_input():
    n = 6
    with pytest.raises(ValueError, match="'g'.*do not occur"):
        RETerm("g", np.array([0, 0, 2, 2, 0, 2]), 3, np.ones((n, 1)), ("1",))
    with pytest.raises(TypeError, match="'g'.*integer"):
        RETerm("g", np.zeros(n), 1, np.ones((n, 1)), ("1",))
    with pytest.raises(ValueError, match="'g'.*5 rows"):
        RETerm("g", np.zeros(5, int), 1, np.ones((n, 1)), ("1",))
    with pytest.raises(ValueError, match="'g'.*2 columns but 1 names"):
        RETerm("g", np.zeros(n, int), 1, np.ones((n, 2)), ("1",))
    with pytest.raises(ValueError, match="'g'.*non-finite"):
        RETerm("g", np.zeros(n, int), 1, np.full((n, 1), np.nan), ("1",))
    t = RETerm("g", np.array([0, 0, 1, 1, 2, 2]), 3, np.ones((n, 1)), ("1",))
    with pytest.raises(ValueError, match="factor 'g' has 6 rows, endog has 5"):
        BlockedDeviance([t], np.ones((5, 1)), np.zeros(5), reml=False)
    dev = BlockedDeviance([t], np.ones((n, 1)), np.arange(n, dtype=float), reml=False)
    with pytest.raises(ValueError, match="theta must have 1 entries"):
        dev(np.ones(2))
    with pytest.raises(TypeError):
        BlockedDeviance([t], np.ones((n, 1)), np.arange(n, dtype=float), reml=False, bogus=1)


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_zero_theta_is_ordinary_least_squares(reml):
    _, terms, X, y, _ = build("ml_four")
    dev = BlockedDeviance(terms, X, y, reml=reml)
    n, p = X.shape
    beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    dof = n - p if reml else n
    expected = dof * (1 + np.log(2 * np.pi * rss[0] / dof))
    if reml:
        expected += np.linalg.slogdet(X.T @ X)[1]
    assert dev(np.zeros(dev.layout.n_theta)) == pytest.approx(expected, rel=1e-12)
    sol = solve_at(dev, np.zeros(dev.layout.n_theta))
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-10)
    assert all(np.all(b == 0) for b in sol.b) and all(np.all(c == 0) for c in sol.condvar)


def test_fit_theta_checks_its_start():
    _, terms, X, y, _ = build("pastes")
    with pytest.raises(ValueError, match="start must have 2 entries"):
        fit_theta(terms, X, y, reml=True, start=np.ones(3))
    with pytest.raises(TypeError):
        fit_theta(terms, X, y, reml=True, tol=1e-3)


# ------------------------------------------------------------ gradient
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("case", ["ml_three", "ml_four", "ml_crossed", "ml_crossed_indep",
                                  "penicillin", "pastes", "mixed", "mixed_dense_nested"])
def test_analytic_gradient(case, reml):
    from sm_hlm.engine.gradient import deviance_gradient

    _, terms, X, y, _ = _dense_case(case)
    dev = BlockedDeviance(terms, X, y, reml=reml)
    theta = random_theta(dev.layout, np.random.default_rng(7))
    g = deviance_gradient(dev, theta)
    # Richardson-extrapolated central differences: error O(h^4)
    h = 1e-3
    num = []
    for e in np.eye(len(theta)):
        d1 = (dev(theta + h * e) - dev(theta - h * e)) / (2 * h)
        d2 = (dev(theta + 2 * h * e) - dev(theta - 2 * h * e)) / (4 * h)
        num.append((4 * d1 - d2) / 3)
    num = np.array(num)
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-7 * np.abs(num).max())
    # the gradient vanishes at the optimum (lme4's tight fit)
    if case.startswith("mixed"):
        return
    key = f"{case}_{'REML' if reml else 'ML'}"
    ref = REF[key]["tight"]
    theta_hat = theta_from_lme4(np.array([ref["theta"][n] for n in REF[key]["theta_names"]]),
                                dev.layout)
    g_hat = deviance_gradient(dev, theta_hat)
    inner = theta_hat > 1e-6 if np.all(dev.layout.lower == 0) else np.ones_like(theta_hat, bool)
    assert np.max(np.abs(g_hat[inner])) < 1e-3 * np.max(np.abs(g))
