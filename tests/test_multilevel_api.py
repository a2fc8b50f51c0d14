"""Several grouping factors through the public API (issue 8): HLM.from_formula with nested
and crossed bar terms, against lme4 (validation/r/multilevel_lme4.json, made by
validation/r/multilevel_lme4.R), the dense n x n oracle, and each other."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sm_hlm
from sm_hlm import HLM, IdentificationError
from sm_hlm.engine.dense import dense_reference
from sm_hlm.engine.terms import theta_to_lme4
from sm_hlm.exceptions import DroppedRowsWarning
from sm_hlm.multilevel import MultilevelHLM
from validation.multilevel_data import simulate_crossed, simulate_hierarchy

ROOT = Path(__file__).resolve().parent.parent
REFS = json.loads((ROOT / "validation" / "r" / "multilevel_lme4.json").read_text())
DATA = ROOT / "validation" / "r" / "data"


def lme4_name(name: str) -> str:
    """Our (patsy) fixed-effect name as lme4 prints it."""
    if name == "Intercept":
        return "(Intercept)"
    return name.replace("[T.", "").replace("]", "")


def load(case: dict) -> tuple[str, pd.DataFrame]:
    df = pd.read_csv(DATA / case["data"])
    formula = case["formula"]
    if formula.startswith("yield ~"):          # a Python keyword: quoted for patsy
        formula = "Q('yield') ~" + formula[len("yield ~"):]
    return formula, df


@pytest.fixture(scope="module", params=sorted(REFS))
def fitted(request):
    case = REFS[request.param]
    formula, df = load(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sm_hlm.ConvergenceWarning)
        res = HLM.from_formula(formula, df).fit(reml=case["REML"])
    return request.param, case, res


def test_loglik_against_lme4(fitted):
    """Never below lme4's logLik by more than 1e-6, nor above its tight refit by more."""
    name, case, res = fitted
    assert isinstance(res.model, MultilevelHLM)
    assert res.converged
    assert res.llf >= case["logLik"] - 1e-6, name
    assert res.llf <= case["tight"]["logLik"] + 1e-6, name


def test_fixed_effects_and_se_against_lme4(fitted):
    name, case, res = fitted
    ref = {k: v for k, v in case["tight"]["fixef"].items()}
    se = dict(zip(case["fixef_names"], case["tight"]["se"]))
    ours = {lme4_name(k): v for k, v in res.fe_params.items()}
    ours_se = {lme4_name(k): v for k, v in res.bse_fe.items()}
    assert set(ours) == set(ref), name
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-8), (name, k)
        assert ours_se[k] == pytest.approx(se[k], rel=1e-4), (name, k)


def test_theta_and_groups_against_lme4(fitted):
    name, case, res = fitted
    model = res.model
    assert model.n_groups == case["ngrps"]
    theta = theta_to_lme4(res.theta, model.layout)
    ref = np.array(list(case["tight"]["theta"].values()))
    np.testing.assert_allclose(theta, ref, rtol=2e-3, atol=2e-4, err_msg=name)


def test_conditional_modes_against_lme4(fitted):
    """ranef(condVar = TRUE) per factor, matched by level label."""
    name, case, res = fitted
    re = res.ranef(cond_var=True)
    for factor, ref in case["ranef"].items():
        df = re[factor]
        names = [n if n != "(Intercept)" else "Intercept" for n in ref["names"]]
        vals = np.asarray(ref["values"], dtype=float).reshape(len(ref["levels"]), -1)
        got = df.loc[[_label(df.index, lev) for lev in ref["levels"]], names].to_numpy()
        scale = max(1.0, float(np.max(np.abs(vals))))
        np.testing.assert_allclose(got, vals, atol=2e-3 * scale, err_msg=f"{name} {factor}")
        parts = {}                 # lme4 keeps (x || g) as one term per column
        for cv in case["condvar"][factor]:
            k = len(cv["names"])
            cov = np.asarray(cv["cov"], dtype=float).reshape(len(ref["levels"]), k, k)
            for i, n in enumerate(cv["names"]):
                parts[n if n != "(Intercept)" else "Intercept"] = cov[:, i, i]
        var = np.column_stack([parts[n] for n in names])
        got_var = df.loc[[_label(df.index, lev) for lev in ref["levels"]],
                         [f"condvar({n})" for n in names]].to_numpy()
        np.testing.assert_allclose(got_var, var, rtol=5e-3, err_msg=f"{name} {factor} condvar")


def _label(index: pd.Index, lev: str):
    """lme4's level label (a string) in our index (labels keep the data's type)."""
    if lev in index:
        return lev
    for cast in (int, float):
        try:
            v = cast(lev)
        except ValueError:
            continue
        if v in index:
            return v
    raise KeyError(lev)


def test_loglik_is_the_dense_loglik_of_the_estimates(fitted):
    """The reported logLik equals the dense n x n log-likelihood at the reported theta."""
    name, case, res = fitted
    model = res.model
    if model.nobs > 1500:
        pytest.skip("dense oracle for small cases only")   # n x n algebra
    ref = dense_reference(model.re_terms, model.exog, model.endog, res.theta, reml=res.reml)
    assert -0.5 * ref["deviance"] == pytest.approx(res.llf, rel=1e-10, abs=1e-8)
    np.testing.assert_allclose(res.fe_params, ref["beta"], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------- spellings
@pytest.fixture(scope="module")
def pastes():
    return pd.read_csv(DATA / "pastes.csv")


def test_nesting_spellings_agree(pastes):
    a = HLM.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes).fit()
    b = HLM.from_formula("strength ~ 1 + (1 | batch/cask)", pastes).fit()
    c = HLM.from_formula("strength ~ 1", pastes, groups="batch",
                         vc_formula={"cask": "0 + C(cask)"}).fit()
    for r in (b, c):
        assert r.llf == pytest.approx(a.llf, abs=1e-9)
        np.testing.assert_allclose(r.vcomp.to_numpy(), a.vcomp.to_numpy(), rtol=1e-6)
        assert list(r.vcomp.index) == list(a.vcomp.index)
    assert set(a.cov_re) == {"batch", "batch:cask"}


def test_formula_and_array_interfaces_agree(pastes):
    f = HLM.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes).fit()
    g = pd.DataFrame({"batch": pastes.batch, "batch:cask": pastes.batch + ":" + pastes.cask})
    a = MultilevelHLM(pastes.strength, np.ones((len(pastes), 1)), g).fit()
    assert a.llf == pytest.approx(f.llf, abs=1e-9)
    np.testing.assert_allclose(a.params, f.params, rtol=1e-7)
    np.testing.assert_allclose(a.ranef()["batch:cask"].to_numpy(),
                               f.ranef()["batch:cask"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_one_factor_agrees_with_the_two_level_engine():
    df = simulate_hierarchy(names=["school"], n_top=60, mean_children=[20],
                            cov_re={"school": [[1.0, 0.3], [0.3, 0.5]]}, seed=4)
    two = HLM.from_formula("y ~ x + tq + (x | school)", df).fit(reml=False)
    multi = MultilevelHLM.from_formula("y ~ x + tq + (x | school)", df).fit(reml=False)
    assert multi.llf == pytest.approx(two.llf, abs=1e-7)
    np.testing.assert_allclose(multi.fe_params, two.fe_params, rtol=1e-6)
    np.testing.assert_allclose(multi.cov_re, two.cov_re, rtol=1e-4, atol=1e-7)
    assert isinstance(multi.cov_re, pd.DataFrame)       # one factor: a DataFrame


def test_same_factor_terms_form_one_block_diagonal_term():
    df = simulate_hierarchy(names=["school", "klass"], n_top=40, mean_children=[4, 10],
                            cov_re={"school": [[1.0, 0.0], [0.0, 0.3]],
                                    "klass": [[0.5, 0.0], [0.0, 0.0001]]}, seed=7)
    r = HLM.from_formula("y ~ x + (1 | school) + (0 + x | school) + (1 | school:klass)",
                         df).fit()
    assert list(r.cov_re["school"].index) == ["Intercept", "x"]
    assert r.cov_re["school"].loc["Intercept", "x"] == 0.0
    s = HLM.from_formula("y ~ x + (x || school) + (1 | school:klass)", df).fit()
    assert s.llf == pytest.approx(r.llf, abs=1e-8)


# ------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def three():
    df = simulate_hierarchy(names=["school", "klass"], n_top=50, mean_children=[4, 12],
                            cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                                    "klass": [[0.5, -0.1], [-0.1, 0.2]]}, seed=11)
    return df, HLM.from_formula("y ~ x * sector + tq + (x | school) + (x | school/klass)"
                                .replace(" + (x | school/klass)", " + (x | school:klass)"),
                                df).fit(reml=False)


def test_results_per_factor(three):
    df, r = three
    assert r.model.factor_names == ["school:klass", "school"]      # lme4's order
    assert r.model.is_nested and r.model.outermost_factor == "school"
    assert set(r.cov_re) == set(r.random_effects) == set(r.group_coefficients) == {
        "school", "school:klass"}
    assert len(r.random_effects["school"]) == df.school.nunique()
    gc = r.group_coefficients["school"]
    np.testing.assert_allclose(gc["x"], r.fe_params["x"] + r.ranef()["school"]["x"])
    cov = r.random_effects_cov["school:klass"]
    first = next(iter(cov.values()))
    assert first.shape == (2, 2) and np.all(np.linalg.eigvalsh(first.to_numpy()) > 0)
    assert len(r.params) == r.k_fe + 6
    assert np.all(np.isnan(r.pvalues[r.k_fe:]))             # no tests of variances
    assert np.all(np.isfinite(r.bse_re)) and np.all(r.bse_re > 0)
    resid = r.model.endog - np.asarray(r.fittedvalues)
    np.testing.assert_allclose(np.asarray(r.resid), resid)


def test_summary_lists_every_factor(three):
    df, r = three
    text = r.summary().as_text()
    n_cls = df.groupby(["school", "klass"]).ngroups
    assert f"groups: school:klass, {n_cls}; school, {df.school.nunique()}" in text
    assert "school:klass" in text and "Residual" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_icc_per_level(three):
    _, r = three
    icc = r.icc()
    assert icc["share"].sum() == pytest.approx(1.0)
    v = icc["variance"]
    total = v.sum()
    assert icc.loc["school", "icc"] == pytest.approx(v["school"] / total)
    assert icc.loc["school:klass", "icc"] == pytest.approx((v["school"] + v["school:klass"])
                                                           / total)


def test_predict_new_levels_at_any_level(three):
    df, r = three
    row = df.iloc[[0]].copy()
    fitted = r.predict(row)
    assert fitted.iloc[0] == pytest.approx(np.asarray(r.fittedvalues)[0], rel=1e-10)
    new_class = row.assign(klass=999)
    school = r.ranef()["school"].loc[row.school.iloc[0]]
    fixed = r.predict(row, random=False).iloc[0]
    expect = fixed + school["Intercept"] + school["x"] * row.x.iloc[0]
    assert r.predict(new_class).iloc[0] == pytest.approx(expect, rel=1e-10)
    new_school = row.assign(school=-5)
    assert r.predict(new_school).iloc[0] == pytest.approx(fixed, rel=1e-12)
    with pytest.raises(KeyError, match="klass"):
        r.predict(row.drop(columns="klass"))
    assert r.predict(row.drop(columns=["klass", "school"]), random=False).iloc[0] == fixed


def test_caterpillar_per_factor(three):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    _, r = three
    figs = r.plot_caterpillar()
    assert set(figs) == {"school", "school:klass"}
    with pytest.raises(KeyError, match="no grouping factor"):
        r.plot_caterpillar("district")


def test_crossed_design():
    df = simulate_crossed(n_subj=30, n_item=20, p_obs=0.8, cov_subj=[[0.6, 0.1], [0.1, 0.2]],
                          cov_item=[[0.4, 0.0], [0.0, 0.1]], seed=3)
    r = HLM.from_formula("y ~ cond + w + (cond | subj) + (1 | item)", df).fit()
    assert not r.model.is_nested and r.model.outermost_factor is None
    assert "crossed" in r.summary().as_text()
    ref = dense_reference(r.model.re_terms, r.model.exog, r.model.endog, r.theta, reml=True)
    assert -0.5 * ref["deviance"] == pytest.approx(r.llf, rel=1e-10)


# ----------------------------------------------------------------- bad input
def test_bad_input_names_the_factor(pastes):
    one = pastes.assign(site="x")
    with pytest.raises(IdentificationError, match="'site' has only one level"):
        HLM.from_formula("strength ~ 1 + (1 | batch) + (1 | site)", one)
    with pytest.raises(IdentificationError, match="random effects for term"):
        HLM.from_formula("strength ~ 1 + (1 | batch) + (1 + u | batch:cask)",
                         pastes.assign(u=np.arange(len(pastes)) % 2))
    same = pastes.assign(b2=pastes.batch + "!")
    with pytest.raises(IdentificationError, match="completely confounded"):
        HLM.from_formula("strength ~ 1 + (1 | batch) + (1 | b2)", same)
    with pytest.raises(KeyError, match="caskk"):
        HLM.from_formula("strength ~ 1 + (1 | batch/caskk)", pastes)
    with pytest.raises(TypeError, match="unexpected keyword argument 'banana'"):
        HLM.from_formula("strength ~ 1 + (1 | batch/cask)", pastes).fit(banana=1)
    with pytest.raises(TypeError, match="time variable 'cask'.*must be numeric"):
        HLM.from_formula("strength ~ 1 + (1 | batch/cask)", pastes,
                         residual=sm_hlm.residual.AR1(time="cask"))
    with pytest.raises(sm_hlm.FormulaSyntaxError, match="vc_formula"):
        HLM.from_formula("strength ~ 1", pastes, groups="batch", vc_formula={"c": "cask"})


def test_nan_in_a_grouping_column_drops_rows(pastes):
    d = pastes.copy()
    d.loc[[3, 17], "cask"] = np.nan
    with pytest.warns(DroppedRowsWarning, match="2 of 60 rows"):
        m = HLM.from_formula("strength ~ 1 + (1 | batch/cask)", d)
    assert m.nobs == 58
    with pytest.raises(sm_hlm.MissingDataError, match="cask"):
        HLM.from_formula("strength ~ 1 + (1 | batch/cask)", d, missing="raise")


# ------------------------------------------------------- three-level specification
def test_from_levels_three_levels_composes_the_hlm3_model(three):
    df, _ = three
    m = HLM.from_levels(level1="y ~ x", level2={"Intercept": "~ tq"},
                        level3={"Intercept": "~ sector", "x": "~ sector"},
                        groups=["school", "klass"],
                        random={"klass": ["Intercept", "x"], "school": ["Intercept", "x"]},
                        data=df)
    assert isinstance(m, MultilevelHLM)
    assert m.formula == ("y ~ 1 + sector + tq + x + sector:x + (1 + x | school:klass) + "
                         "(1 + x | school)")
    r = m.fit(reml=False)
    same = HLM.from_formula(m.formula, df).fit(reml=False)
    assert r.llf == pytest.approx(same.llf, abs=1e-9)
    eq = r.level_equations()
    assert set(eq) == {"beta(Intercept; Intercept)", "beta(Intercept; tq)",
                       "beta(x; Intercept)"}
    tab = eq["beta(x; Intercept)"]
    assert list(tab.index) == ["Intercept", "sector"]
    assert tab.loc["sector", "Coef."] == pytest.approx(r.fe_params["sector:x"])
    assert "Level-3 equation of beta(x; Intercept)" in r.summary().as_text()


def test_from_levels_three_levels_checks_each_level(three):
    df, _ = three
    from sm_hlm.crosslevel import Level2Error
    from sm_hlm.levels import LevelSpecError
    with pytest.raises(Level2Error, match="'x' must be constant within each unit of school"):
        HLM.from_levels(level1="y ~ 1", level3={"Intercept": "~ x"},
                        groups=["school", "klass"], data=df)
    with pytest.raises(Level2Error, match="'x' must be constant within each unit of "
                       "school:klass"):
        HLM.from_levels(level1="y ~ 1", level2={"Intercept": "~ x"},
                        groups=["school", "klass"], data=df)
    with pytest.raises(LevelSpecError, match="not a level-2 coefficient"):
        HLM.from_levels(level1="y ~ x", level3={"w": "~ sector"},
                        groups=["school", "klass"], data=df)
    with pytest.raises(TypeError, match=r"\[outer, inner\]"):
        HLM.from_levels(level1="y ~ x", groups=["school"], level3={}, data=df)


def test_crosslevel_aggregates_at_any_level(three):
    df, _ = three
    from sm_hlm import crosslevel
    cls_mean = crosslevel.group_aggregate(df, "x", ["school", "klass"], broadcast=True)
    expect = df.groupby(["school", "klass"]).x.transform("mean")
    np.testing.assert_allclose(np.asarray(cls_mean), expect.to_numpy(), rtol=1e-12)
    centred = crosslevel.center(df, "x", groups=["school", "klass"])
    np.testing.assert_allclose(np.asarray(centred), (df.x - expect).to_numpy(), atol=1e-12)
    school = crosslevel.group_aggregate(df, "x", "school")
    assert len(school) == df.school.nunique()
    per_class = crosslevel.group_aggregate(df, "x", ["school", "klass"])
    assert len(per_class) == df.groupby(["school", "klass"]).ngroups
    assert per_class.index.name == "school:klass"


def test_reliability_per_level(three):
    df, r = three
    rel = r.reliability()
    assert list(rel.index) == ["school:klass", "school"]
    assert ((rel["reliability"] > 0) & (rel["reliability"] < 1)).all()
    # one factor: the mean of the two-level engine's per-group reliabilities
    one = HLM.from_formula("y ~ x + (1 | school)", df).fit()
    multi = MultilevelHLM.from_formula("y ~ x + (1 | school)", df).fit()
    assert multi.reliability().loc["school", "reliability"] == pytest.approx(
        one.reliability()["Intercept"].mean(), rel=1e-5)
    crossed = simulate_crossed(n_subj=20, n_item=15, p_obs=0.9, cov_subj=[[0.5, 0], [0, 0.1]],
                               cov_item=[[0.3, 0], [0, 0.1]], seed=2)
    rc = HLM.from_formula("y ~ cond + (1 | subj) + (1 | item)", crossed).fit()
    with pytest.raises(NotImplementedError, match="crossed"):
        rc.reliability()


def test_pickle_round_trip_keeps_predictions(three, tmp_path):
    import pickle
    df, r = three
    new = df.iloc[:5].assign(klass=[1, 999, 2, 3, 998])
    before = r.predict(new)
    r2 = pickle.loads(pickle.dumps(r))
    pd.testing.assert_series_equal(r2.predict(new), before)
    r.save(tmp_path / "fit.pkl")
    r3 = sm_hlm.MultilevelResults.load(tmp_path / "fit.pkl")
    pd.testing.assert_series_equal(r3.predict(new), before)
    assert r3.llf == r.llf


def test_singular_fit_names_the_factor():
    df = simulate_hierarchy(names=["school", "klass"], n_top=30, mean_children=[3, 8],
                            cov_re={"school": [[1.0, 0.0], [0.0, 1e-12]],
                                    "klass": [[1e-12, 0.0], [0.0, 1e-12]]}, seed=3)
    with pytest.warns(sm_hlm.SingularFitWarning, match="factor 'school:klass'"):
        r = HLM.from_formula("y ~ x + tq + (1 | school) + (1 | school:klass)", df).fit()
    assert r.singular and "school:klass" in r.singular_terms[0]
    assert "boundary (singular) fit" in r.summary().as_text()


def test_with_response_equals_a_fresh_structure(fitted):
    """The shared symbolic analysis with a new response gives the fresh factor's numbers
    (nested, crossed, and the linear-mode updates of crossed column 0)."""
    from sm_hlm.engine.blocked import BlockedDeviance
    name, case, res = fitted
    model = res.model
    Xw, _, wterms = model._working[:3]
    rng = np.random.default_rng(0)
    y2 = rng.normal(size=len(model.endog))
    for reml in (False, True):
        base = model.deviance_function(reml=reml)
        fresh = BlockedDeviance(wterms, Xw, y2, reml=reml)
        th = res.theta / model._theta_scale() * 1.1
        assert base.with_response(Xw, y2)(th) == pytest.approx(fresh(th), rel=1e-12), name


# ------------------------------------------------------------- profile intervals
PROFILE_REFS = json.loads((ROOT / "validation" / "r" / "multilevel_profile_refs.json").read_text())


@pytest.mark.parametrize("name", sorted(PROFILE_REFS))
def test_profile_intervals_against_lme4(name):
    """lme4's confint(profile(fit)) (validation/r/multilevel_profile_refs.R): lme4
    interpolates a spline through its profile, so agreement is to ~1e-3 relative."""
    ref = PROFILE_REFS[name]
    df = pd.read_csv(DATA / ref["data"])
    r = HLM.from_formula(ref["formula"], df).fit(reml=False)
    ci = r.conf_int_profile().set_index("lme4")
    lo = ci.loc[ref["rows"], "2.5 %"].to_numpy()
    hi = ci.loc[ref["rows"], "97.5 %"].to_numpy()
    # zero lower ends (an SD whose profile reaches 0) compare absolutely
    np.testing.assert_allclose(lo, ref["lower"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(hi, ref["upper"], rtol=1e-3, atol=1e-6)
    # the estimates lie inside their intervals
    sv = r.params[:r.k_fe].to_numpy()
    fe = ci.loc[[lme4_name(n) for n in r.fe_params.index]]
    assert np.all((fe["2.5 %"].to_numpy() <= sv) & (sv <= fe["97.5 %"].to_numpy()))


def test_formulaic_engine_gives_the_same_multilevel_fit(three):
    """statsmodels' formula engine setting reaches multilevel models (fixed and random
    designs, predictions from the stored spec)."""
    from sm_hlm.formula.engines import using_engine
    df, r = three
    f = "y ~ x * sector + tq + (x | school) + (x | school:klass)"
    with using_engine("formulaic"):
        m = HLM.from_formula(f, df)
    assert type(m.model_spec).__module__.startswith("formulaic")
    rf = m.fit(reml=False)
    assert rf.llf == pytest.approx(r.llf, abs=1e-8)
    np.testing.assert_allclose(rf.fe_params.sort_index(), r.fe_params.sort_index(),
                               rtol=1e-7)
    new = df.iloc[:4].assign(klass=[1, 999, 2, 3])
    np.testing.assert_allclose(rf.predict(new), r.predict(new), rtol=1e-7)


def test_summary_table_and_compare_take_multilevel_fits(pastes):
    r1 = HLM.from_formula("strength ~ 1 + (1 | batch)", pastes).fit(reml=False)
    r2 = HLM.from_formula("strength ~ 1 + (1 | batch/cask)", pastes).fit(reml=False)
    text = str(sm_hlm.summary_table(r1, r2))
    assert "SD(Intercept | batch:cask)" in text and "batch:cask 30; batch 10" in text
    tab = sm_hlm.compare(r1, r2)
    assert tab["Chisq"].iloc[1] == pytest.approx(2 * (r2.llf - r1.llf))
