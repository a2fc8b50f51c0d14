"""Tests of the two-level specification (sm_hlm.levels, HLM.from_levels)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM, LevelSpecError
from sm_hlm.crosslevel import Level2Error
from sm_hlm.levels import LevelEquations, LevelsSpec
from sm_hlm.simulate import simulate_nels

ROOT = Path(__file__).resolve().parent.parent
NELS_CSV = ROOT.parent / "shared" / "data" / "nels.csv"
requires_nels = pytest.mark.skipif(not NELS_CSV.exists(),
                                   reason=f"NELS data file not found at {NELS_CSV}")

FIT2 = "mscore ~ flp + ses + flp*ses + (ses | school)"
LEVELS = dict(level1="mscore ~ ses", level2={"Intercept": "~ flp", "ses": "~ flp"},
              groups="school", random=["Intercept", "ses"])


def _quiet_fit(model: HLM, reml: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(reml=reml)


def assert_same_fit(a, b, tol: float = 1e-8) -> None:
    assert list(a.model.exog_names) == list(b.model.exog_names)
    np.testing.assert_allclose(a.llf, b.llf, rtol=0, atol=tol)
    np.testing.assert_allclose(a.fe_params.to_numpy(), b.fe_params.to_numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=0, atol=tol)


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate_nels(n_schools=150, seed=11)


@pytest.fixture(scope="module")
def fit2_sim(sim):
    direct = HLM.from_formula(FIT2, sim).fit(reml=False)
    levels = HLM.from_levels(data=sim, **LEVELS).fit(reml=False)
    return direct, levels


# --------------------------------------------------------------- composition
def test_composed_formula_and_spec(sim):
    m = HLM.from_levels(data=sim, **LEVELS)
    assert m.formula == "mscore ~ 1 + flp + ses + flp:ses + (1 + ses | school)"
    spec = m.levels
    assert isinstance(spec, LevelsSpec)
    assert spec.coefficients == ("Intercept", "ses")
    assert spec.random == ("Intercept", "ses")
    assert [g.label for g in spec.gammas] == ["gamma_00", "gamma_01", "gamma_10", "gamma_11"]
    assert [g.fe_name for g in spec.gammas] == ["Intercept", "flp", "ses", "flp:ses"]
    assert [g.predictor for g in spec.gammas] == ["Intercept", "flp", "Intercept", "flp"]
    gf = spec.gamma_frame()
    assert gf.loc["gamma_11", "fe_name"] == "flp:ses"
    text = spec.describe()
    assert "mscore_ij = beta_0j + beta_1j*ses_ij + r_ij" in text
    assert "beta_0j = gamma_00 + gamma_01*flp_j + u_0j" in text
    assert "beta_1j = gamma_10 + gamma_11*flp_j + u_1j" in text


@pytest.mark.parametrize("reml", [False, True])
def test_same_as_direct_formula_sim(sim, reml):
    a = HLM.from_formula(FIT2, sim).fit(reml=reml)
    b = HLM.from_levels(data=sim, **LEVELS).fit(reml=reml)
    assert_same_fit(a, b)


def test_omitted_level2_equation_is_fixed_gamma_k0(sim):
    m = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"}, groups="school",
                        data=sim)
    assert m.formula == "mscore ~ 1 + flp + ses + (1 | school)"
    eq = m.levels.equation("ses")
    assert not eq.given and not eq.random and eq.predictors == ("Intercept",)
    assert_same_fit(_quiet_fit(HLM.from_formula("mscore ~ flp + ses + (1 | school)", sim), False),
                    _quiet_fit(m, False))
    assert "beta_1j = gamma_10" == m.levels.level2_equations()[1]


def test_level2_tilde_one_equals_omitted(sim):
    a = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp", "ses": "~ 1"},
                        groups="school", random=["Intercept", "ses"], data=sim)
    b = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"},
                        groups="school", random=["Intercept", "ses"], data=sim)
    assert a.formula == b.formula == "mscore ~ 1 + flp + ses + (1 + ses | school)"
    assert a.levels.equation("ses").given and not b.levels.equation("ses").given


def test_intercept_aliases_and_bare_rhs(sim):
    m = HLM.from_levels(level1="mscore ~ ses", level2={"(Intercept)": "flp", "ses": "flp"},
                        groups="school", random=["(Intercept)", "ses"], data=sim)
    assert m.formula == "mscore ~ 1 + flp + ses + flp:ses + (1 + ses | school)"


def test_level2_transformations(sim):
    lv = HLM.from_levels(level1="mscore ~ ses",
                         level2={"Intercept": "~ np.log(flp) + I(flp**2)", "ses": "~ np.log(flp)"},
                         groups="school", random=["Intercept", "ses"], data=sim)
    direct = HLM.from_formula("mscore ~ np.log(flp) + I(flp**2) + ses + np.log(flp):ses"
                              " + (ses | school)", sim)
    assert_same_fit(direct.fit(reml=False), lv.fit(reml=False))
    preds = [g.predictor for g in lv.levels.gammas]
    assert preds == ["Intercept", "np.log(flp)", "I(flp ** 2)", "Intercept", "np.log(flp)"]
    assert [g.label for g in lv.levels.gammas] == ["gamma_00", "gamma_01", "gamma_02",
                                                   "gamma_10", "gamma_11"]


def test_level2_categorical(sim):
    lv = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ C(flp)", "ses": "~ C(flp)"},
                         groups="school", random=["Intercept", "ses"], data=sim)
    direct = HLM.from_formula("mscore ~ C(flp)*ses + (ses | school)", sim)
    a, b = direct.fit(reml=False), lv.fit(reml=False)
    np.testing.assert_allclose(a.llf, b.llf, atol=1e-8)
    fe_b = b.fe_params
    for name, val in a.fe_params.items():
        np.testing.assert_allclose(fe_b[name], val, atol=1e-7)
    preds = [g.predictor for g in lv.levels.gammas if g.coefficient == "ses"]
    assert preds == ["Intercept", "C(flp)[T.2.0]", "C(flp)[T.3.0]"]


def test_level1_factor_has_one_coefficient_per_column(sim):
    d = sim.assign(sector=np.where(sim.index % 3 == 0, "a", np.where(sim.index % 3 == 1, "b", "c")))
    lv = HLM.from_levels(level1="mscore ~ ses + C(sector)",
                         level2={"Intercept": "~ flp", "C(sector)": "~ flp"},
                         groups="school", data=d)
    assert lv.formula == "mscore ~ 1 + flp + ses + C(sector) + flp:C(sector) + (1 | school)"
    eqs = {e.coefficient: e for e in lv.levels.equations}
    assert list(eqs) == ["Intercept", "ses", "C(sector)[T.b]", "C(sector)[T.c]"]
    assert eqs["C(sector)[T.c]"].k == 3 and eqs["C(sector)[T.c]"].term == "C(sector)"
    g = lv.levels.gamma_frame()
    assert g.loc["gamma_31", "fe_name"] == "flp:C(sector)[T.c]"
    assert g.loc["gamma_31", "predictor"] == "flp"
    assert lv.levels.equation("C(sector)").coefficient == "C(sector)[T.b]"
    res = _quiet_fit(lv, False)
    t = res.level_equations().tables["beta_3j (C(sector)[T.c])"]
    assert t.loc["gamma_31", "Coef."] == res.fe_params["flp:C(sector)[T.c]"]


def test_level1_factor_without_level2_main_effect_rejected(sim):
    # patsy would code flp:C(sector) with all three levels (flp has no main effect),
    # adding a coefficient the two-level model lacks
    d = sim.assign(sector=np.where(sim.index % 2 == 0, "a", np.where(sim.index % 3 == 1, "b", "c")))
    with pytest.raises(LevelSpecError, match=r"'flp:C\(sector\)'.*intercept's level-2 equation"):
        HLM.from_levels(level1="mscore ~ ses + C(sector)", level2={"C(sector)": "~ flp"},
                        groups="school", data=d)


def test_local_function_in_level2(sim):
    def shift(x):
        return x - 2.0

    lv = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ shift(flp)"},
                         groups="school", data=sim)
    direct = HLM.from_formula("mscore ~ shift(flp) + ses + (1 | school)", sim)
    assert_same_fit(_quiet_fit(direct, False), _quiet_fit(lv, False))


def test_random_without_intercept(sim):
    lv = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"}, groups="school",
                         random=["ses"], data=sim)
    assert lv.formula.endswith("+ (0 + ses | school)")
    assert list(lv.re_design.names) == ["ses"]
    direct = HLM.from_formula("mscore ~ flp + ses + (0 + ses | school)", sim)
    assert_same_fit(_quiet_fit(direct, False), _quiet_fit(lv, False))
    assert lv.levels.level2_equations()[0] == "beta_0j = gamma_00 + gamma_01*flp_j"


def test_uncorrelated_random(sim):
    lv = HLM.from_levels(data=sim, correlated=False, **LEVELS)
    assert lv.formula.endswith("(1 + ses || school)")
    assert lv.re_design.n_theta == 2


def test_no_random_effects(sim):
    lv = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"}, groups="school",
                         random=[], data=sim)
    assert lv.k_re == 0 and "|" not in lv.formula
    import statsmodels.formula.api as smf
    ols = smf.ols("mscore ~ flp + ses", sim).fit()
    np.testing.assert_allclose(lv.fit(reml=False).llf, ols.llf, rtol=1e-10)


def test_default_random_is_intercept(sim):
    lv = HLM.from_levels(level1="mscore ~ ses", groups="school", data=sim)
    assert lv.formula == "mscore ~ 1 + ses + (1 | school)"
    assert lv.levels.random == ("Intercept",)


def test_level2_without_intercept(sim):
    lv = HLM.from_levels(level1="mscore ~ ses", level2={"ses": "~ 0 + flp"}, groups="school",
                         data=sim)
    assert lv.formula == "mscore ~ 1 + flp:ses + (1 | school)"
    g = [x for x in lv.levels.gammas if x.coefficient == "ses"]
    assert [x.label for x in g] == ["gamma_11"]


def test_level1_without_intercept(sim):
    lv = HLM.from_levels(level1="mscore ~ 0 + ses", level2={"ses": "~ flp"}, groups="school",
                         random=["ses"], data=sim)
    assert lv.formula == "mscore ~ 0 + ses + flp:ses + (0 + ses | school)"
    assert [g.label for g in lv.levels.gammas] == ["gamma_10", "gamma_11"]
    assert lv.levels.level1_equation() == "mscore_ij = beta_1j*ses_ij + r_ij"


def test_missing_values_dropped(sim):
    d = sim.copy()
    d.loc[d.index[:5], "flp"] = np.nan
    with pytest.warns(Warning, match="dropped 5"):
        lv = HLM.from_levels(data=d, **LEVELS)
    assert lv.nobs == len(d) - 5


def test_level2_check_on_the_rows_the_model_keeps(sim):
    # an infinite flp is dropped as missing by the model, so it must not break the
    # level-2 check (and flp is constant within groups on the rows kept)
    d = sim.copy()
    d.loc[d.index[0], "flp"] = np.inf
    with pytest.warns(Warning, match="dropped 1"):
        lv = HLM.from_levels(data=d, **LEVELS)
    assert lv.nobs == len(d) - 1
    # rows excluded by subset= are not checked either
    d = sim.copy()
    d.loc[d.index[0], "flp"] = 99.0
    keep = d.index != d.index[0]
    lv = HLM.from_levels(data=d, subset=keep, **LEVELS)
    assert_same_fit(_quiet_fit(HLM.from_formula(FIT2, d, subset=keep), False),
                    _quiet_fit(lv, False))
    with pytest.raises(Level2Error, match="'flp'"):
        HLM.from_levels(data=d, **LEVELS)


def test_random_factor_without_intercept_rejected(sim):
    # (0 + C(sector) | school) has one random effect per sector (3), not one per
    # level-1 coefficient C(sector)[T.b], C(sector)[T.c]
    d = sim.assign(sector=np.where(sim.index % 3 == 0, "a", np.where(sim.index % 3 == 1, "b", "c")))
    with pytest.raises(LevelSpecError, match=r"C\(sector\)\[a\].*Add 'Intercept' to random"):
        HLM.from_levels(level1="mscore ~ ses + C(sector)", groups="school",
                        random=["C(sector)"], data=d)
    lv = HLM.from_levels(level1="mscore ~ ses + C(sector)", groups="school",
                         random=["Intercept", "C(sector)"], data=d)
    assert list(lv.re_design.names) == ["Intercept", "C(sector)[T.b]", "C(sector)[T.c]"]


# -------------------------------------------------------------------- errors
def test_unknown_level2_coefficient(sim):
    with pytest.raises(LevelSpecError,
                       match=r"'hwh'.*level-1 coefficients.*\['Intercept', 'ses'\]"):
        HLM.from_levels(level1="mscore ~ ses", level2={"hwh": "~ flp"}, groups="school", data=sim)


def test_unknown_random_entry(sim):
    with pytest.raises(LevelSpecError, match=r"random names 'flp'.*\['Intercept', 'ses'\]"):
        HLM.from_levels(level1="mscore ~ ses", groups="school", random=["Intercept", "flp"],
                        data=sim)


def test_level2_predictor_varying_within_groups(sim):
    with pytest.raises(Level2Error) as exc:
        HLM.from_levels(level1="mscore ~ flp", level2={"Intercept": "~ ses"}, groups="school",
                        data=sim)
    msg = str(exc.value)
    assert "'ses'" in msg and "'school'" in msg and "group ids" in msg
    assert exc.value.column == "ses"
    assert len(exc.value.group_ids) > 0


def test_level2_transformation_of_level1_variable_rejected(sim):
    with pytest.raises(Level2Error, match=r"I\(ses \* 2\)"):
        HLM.from_levels(level1="mscore ~ flp", level2={"flp": "~ I(ses * 2)"}, groups="school",
                        data=sim)


@pytest.mark.parametrize("level2, match", [
    ({"ses": "~ 0"}, "has no terms"),
    ({"ses": "~ flp + (1 | school)"}, "random="),
    ({"ses": "beta ~ flp"}, "left-hand side"),
    ({"ses": ""}, "empty"),
])
def test_bad_level2_equations(sim, level2, match):
    with pytest.raises(LevelSpecError, match=match):
        HLM.from_levels(level1="mscore ~ ses", level2=level2, groups="school", data=sim)


def test_bad_arguments(sim):
    with pytest.raises(LevelSpecError, match="random="):
        HLM.from_levels(level1="mscore ~ ses + (1 | school)", groups="school", data=sim)
    with pytest.raises(TypeError, match="groups"):
        HLM.from_levels(level1="mscore ~ ses", groups=sim["school"], data=sim)
    with pytest.raises(KeyError, match="nope"):
        HLM.from_levels(level1="mscore ~ ses", groups="nope", data=sim)
    with pytest.raises(TypeError, match="formula string"):
        HLM.from_levels(level1="mscore ~ ses", level2={"ses": 3}, groups="school", data=sim)
    with pytest.raises(LevelSpecError, match="twice"):
        HLM.from_levels(level1="mscore ~ ses", groups="school", random=["ses", "ses"], data=sim)


# ------------------------------------------------------------------ reporting
def test_level_equations_tables(fit2_sim):
    direct, res = fit2_sim
    eqs = res.level_equations()
    assert isinstance(eqs, LevelEquations)
    assert list(eqs.tables) == ["beta_0j (Intercept)", "beta_1j (ses)"]
    t1 = eqs.tables["beta_1j (ses)"]
    assert list(t1.index) == ["gamma_10", "gamma_11"]
    assert list(t1.columns) == ["Predictor", "Fixed effect", "Coef.", "Std.Err.", "z", "P>|z|"]
    np.testing.assert_allclose(t1.loc["gamma_11", "Coef."], direct.fe_params["flp:ses"],
                               atol=1e-8)
    np.testing.assert_allclose(t1.loc["gamma_11", "Std.Err."], direct.bse_fe["flp:ses"],
                               rtol=1e-6)
    assert eqs.frame.index.names == ["equation", "gamma"]
    assert eqs.frame.shape[0] == 4
    np.testing.assert_allclose(eqs.frame["Coef."].to_numpy(), res.fe_params.to_numpy())
    txt = eqs.as_text()
    for s in ("Level-1 model", "beta_1j = gamma_10 + gamma_11*flp_j + u_1j", "Estimated equations",
              "gamma_11", "tau_00", "sigma^2", "mscore ~ 1 + flp + ses + flp:ses"):
        assert s in txt
    assert "<h4>beta_1j (ses)</h4>" in eqs.as_html()
    assert eqs.variance.loc["sigma^2", "Variance"] == pytest.approx(res.scale)
    assert eqs.variance.loc["tau_11", "Variance"] == pytest.approx(res.cov_re.iloc[1, 1])


def test_level_equations_hlm_df(fit2_sim):
    _, res = fit2_sim
    t = res.level_equations(ddf="hlm").frame
    assert "t-ratio" in t.columns and "df" in t.columns
    assert (t["df"] == res.n_groups - 1 - 1).all()      # J - S_k - 1 with S_k = 1
    with pytest.raises(ValueError, match="ddf"):
        res.level_equations(ddf="kenward")


def test_level_equations_hlm_df_fixed_coefficient(sim):
    res = _quiet_fit(HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"},
                                     groups="school", data=sim), False)
    t = res.level_equations(ddf="hlm").frame
    assert t.loc[("beta_0j (Intercept)", "gamma_01"), "df"] == res.n_groups - 2
    assert t.loc[("beta_1j (ses)", "gamma_10"), "df"] == res.nobs - 3


def test_summary_includes_level_tables(fit2_sim):
    direct, res = fit2_sim
    s = res.summary()
    txt = s.as_text()
    assert "Level-1 equation mscore_ij = beta_0j + beta_1j*ses_ij + r_ij" in txt
    assert "Level-2 equation beta_1j = gamma_10 + gamma_11*flp_j + u_1j" in txt
    assert "gamma_11" in txt and "Formula: mscore ~ 1 + flp + ses + flp:ses" in txt
    assert "gamma_11" in s.as_html() and "gamma" in s.as_latex()
    assert "gamma" not in direct.summary().as_text()


def test_level_equations_requires_levels(fit2_sim):
    direct, _ = fit2_sim
    with pytest.raises(ValueError, match="from_levels"):
        direct.level_equations()


def test_predict_new_data(fit2_sim, sim):
    direct, res = fit2_sim
    new = sim.iloc[:20]
    np.testing.assert_allclose(np.asarray(res.predict(new)), np.asarray(direct.predict(new)),
                               atol=1e-8)


# ---------------------------------------------------------------------- NELS
@requires_nels
def test_nels_fit2_both_ways():
    d = pd.read_csv(NELS_CSV)
    ref = json.loads((ROOT / "validation" / "r" / "nels_lme4.json").read_text())["fit.2_ML"]
    direct = HLM.from_formula(FIT2, d).fit(reml=False)
    lv = HLM.from_levels(data=d, **LEVELS).fit(reml=False)
    assert_same_fit(direct, lv, tol=1e-8)
    assert lv.llf == pytest.approx(ref["logLik"], abs=1e-6)
    fe = lv.fe_params.rename({"Intercept": "(Intercept)"})
    for k, v in ref["fixef"].items():
        assert fe[k] == pytest.approx(v, abs=1e-4)
    t = lv.level_equations().tables
    assert t["beta_0j (Intercept)"].loc["gamma_00", "Coef."] == pytest.approx(55.3975, abs=5e-5)
    assert t["beta_0j (Intercept)"].loc["gamma_01", "Coef."] == pytest.approx(-2.4062, abs=5e-5)
    assert t["beta_1j (ses)"].loc["gamma_10", "Coef."] == pytest.approx(4.4909, abs=5e-5)
    assert t["beta_1j (ses)"].loc["gamma_11", "Coef."] == pytest.approx(-0.1931, abs=5e-5)


def test_level_equations_with_satterthwaite_df():
    import sm_hlm
    from sm_hlm.simulate import simulate_nels

    d = simulate_nels(n_schools=250, seed=12)
    res = sm_hlm.HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp", "ses": "~ flp"},
                                 groups="school", random=["Intercept", "ses"], data=d).fit()
    le = res.level_equations(ddf="satterthwaite")
    sat = res.satterthwaite()
    frame = le.frame.set_index("Fixed effect")
    assert set(frame.index) == set(sat.index)
    np.testing.assert_allclose(frame.loc[sat.index, "df"].to_numpy(float), sat["df"].to_numpy(),
                               rtol=1e-12)
    assert "satterthwaite" in le.as_text()
