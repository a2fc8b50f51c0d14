"""Formula engines: designs through statsmodels' FormulaManager with patsy or formulaic.

The engine is statsmodels' (``statsmodels.formula.options.formula_engine``,
initialised from ``SM_FORMULA_ENGINE``).  Both engines must give the same
designs and so the same fits, pickles and predictions on new data.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula as smf_options

from sm_hlm import HLM
from sm_hlm.formula.engines import formula_engine
from sm_hlm.simulate import simulate_nels

pytest.importorskip("formulaic")
ENGINES = ["patsy", "formulaic"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine_option():
    """Restore statsmodels' engine option after a test changes it."""
    before = smf_options.options.formula_engine
    yield smf_options.options
    smf_options.options.formula_engine = before


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    d = simulate_nels(n_schools=40, seed=5)
    d["urb"] = np.random.default_rng(1).choice(["rural", "sub", "urban"], len(d))
    return d


def _model(formula: str, data: pd.DataFrame, engine: str) -> HLM:
    before = smf_options.options.formula_engine
    smf_options.options.formula_engine = engine
    try:
        assert formula_engine() == engine
        return HLM.from_formula(formula, data)
    finally:
        smf_options.options.formula_engine = before


FACTOR = "mscore ~ C(urb) * ses + flp + (1 + ses | school)"
TRANSFORMS = "mscore ~ C(urb, Treatment('urban')) + center(flp) + standardize(ses):flp " \
             "+ (1 + center(ses) | school)"


def test_model_spec_is_the_engines(data):
    for engine, kind in [("patsy", "DesignInfo"), ("formulaic", "ModelSpec")]:
        m = _model(FACTOR, data, engine)
        assert type(m.model_spec).__name__ == kind
        assert m.model_spec is m.fixed_design_info
        assert list(m.exog_names) == ["Intercept", "C(urb)[T.sub]", "C(urb)[T.urban]", "ses",
                                      "C(urb)[T.sub]:ses", "C(urb)[T.urban]:ses", "flp"]
        assert all(type(t.design_info).__name__ == kind for t in m.re_design.terms)


@pytest.mark.parametrize("formula", [FACTOR, TRANSFORMS])
def test_engines_same_design_and_fit(formula, data):
    mp, mf = (_model(formula, data, e) for e in ENGINES)
    np.testing.assert_allclose(mf.exog, mp.exog, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mf.exog_re, mp.exog_re, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mf.endog, mp.endog)
    rp = mp.fit()
    # the same computation at the same theta: identical results
    rf = mf.results_at(np.asarray(rp.theta), reml=True)
    np.testing.assert_allclose(rf.fe_params.to_numpy(), rp.fe_params.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(rf.bse_fe.to_numpy(), rp.bse_fe.to_numpy(), rtol=1e-10)
    assert rf.llf == pytest.approx(rp.llf, rel=1e-12)
    if formula == FACTOR:     # bit-identical designs: the optimiser takes the same path
        np.testing.assert_array_equal(mf.exog, mp.exog)
        rf2 = mf.fit()
        np.testing.assert_allclose(rf2.fe_params.to_numpy(), rp.fe_params.to_numpy(),
                                   rtol=1e-10)
        np.testing.assert_allclose(rf2.cov_re.to_numpy(), rp.cov_re.to_numpy(), rtol=1e-10)
        assert rf2.llf == pytest.approx(rp.llf, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_pickle_and_predict_new_data(engine, data, tmp_path):
    res = _model(TRANSFORMS, data, engine).fit()
    new = data.iloc[[3, 50, 400]].copy()
    new["urb"] = "rural"                                    # one level only in new data
    new.loc[new.index[1], "school"] = -99                  # a group not in the fit
    marg = res.predict(new, random=False)
    cond = res.predict(new)
    # by hand: the stored spec (centring/standardising constants of the fit's data)
    X = np.column_stack([np.ones(3), np.ones(3), np.zeros(3),     # [T.rural], [T.sub]
                         new["flp"] - data["flp"].mean(),
                         (new["ses"] - data["ses"].mean()) / data["ses"].std(ddof=0)
                         * new["flp"]])
    np.testing.assert_allclose(np.asarray(marg), X @ res.fe_params.to_numpy(), rtol=1e-12)
    assert np.asarray(cond)[1] == pytest.approx(np.asarray(marg)[1], rel=1e-12)
    back = pickle.loads(pickle.dumps(res))
    assert type(back.model.model_spec).__name__ == type(res.model.model_spec).__name__
    np.testing.assert_array_equal(np.asarray(back.predict(new)), np.asarray(cond))
    path = tmp_path / "fit.pkl"
    res.save(str(path))
    loaded = type(res).load(str(path))
    np.testing.assert_array_equal(np.asarray(loaded.predict(new, random=False)),
                                  np.asarray(marg))


def test_engines_predict_alike(data):
    new = data.sample(25, random_state=2)
    rp = _model(TRANSFORMS, data, "patsy").fit()
    rf = _model(TRANSFORMS, data, "formulaic").results_at(np.asarray(rp.theta), reml=True)
    for random in (True, False):
        np.testing.assert_allclose(np.asarray(rf.predict(new, random=random)),
                                   np.asarray(rp.predict(new, random=random)), rtol=1e-10)


def test_scale_differs_between_engines_named(data):
    with pytest.raises(ValueError, match=r"scale\(\).*formulaic.*standardize"):
        _model("mscore ~ scale(ses) + (1 | school)", data, "formulaic")
    assert _model("mscore ~ scale(ses) + (1 | school)", data, "patsy").k_fe == 2


def test_unknown_engine(engine_option):
    with pytest.raises(ValueError, match="patsy or formulaic"):
        engine_option.formula_engine = "formulas"
    env = dict(os.environ, SM_FORMULA_ENGINE="formulas", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import sm_hlm; sm_hlm.HLM.from_formula"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode != 0
    assert "SM_FORMULA_ENGINE" in out.stderr and "formulas" in out.stderr


def test_env_variable_selects_formulaic():
    code = ("import numpy as np; from sm_hlm import HLM; from sm_hlm.simulate import "
            "simulate_nels; m = HLM.from_formula('mscore ~ ses + (1 | school)', "
            "simulate_nels(n_schools=10, seed=1)); print(type(m.model_spec).__name__)")
    env = dict(os.environ, SM_FORMULA_ENGINE="formulaic", PYTHONPATH=str(ROOT),
               OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ModelSpec"


def test_string_constraints_and_terms_under_formulaic(data):
    mp, mf = (_model("mscore ~ ses * flp + C(urb) + (1 | school)", data, e) for e in ENGINES)
    rp = mp.fit()
    rf = mf.results_at(np.asarray(rp.theta), reml=True)
    before = smf_options.options.formula_engine
    smf_options.options.formula_engine = "formulaic"       # statsmodels would parse with it
    try:
        wf = rf.wald_test("flp = 0, ses:flp = 0")
        tf = rf.t_test("ses:flp = 0")
        terms_f = rf.wald_test_terms().table
    finally:
        smf_options.options.formula_engine = before
    wp = rp.wald_test("flp = 0, ses:flp = 0")
    assert float(wf.statistic) == pytest.approx(float(wp.statistic), rel=1e-10)
    assert tf.tvalue.item() == pytest.approx(rp.t_test("ses:flp = 0").tvalue.item(), rel=1e-10)
    terms_p = rp.wald_test_terms().table
    assert list(terms_f.index) == list(terms_p.index)
    np.testing.assert_allclose(terms_f["statistic"].astype(float),
                               terms_p["statistic"].astype(float), rtol=1e-10)


def test_from_levels_under_formulaic(data, engine_option):
    kw = dict(level1="mscore ~ ses", level2={"Intercept": "~ flp"}, groups="school", data=data)
    ref = HLM.from_levels(**kw).fit()
    engine_option.formula_engine = "formulaic"
    res = HLM.from_levels(**kw).fit()
    assert engine_option.formula_engine == "formulaic"          # restored after the build
    assert type(res.model.model_spec).__name__ == "DesignInfo"   # the gamma map reads patsy
    np.testing.assert_array_equal(res.fe_params.to_numpy(), ref.fe_params.to_numpy())
