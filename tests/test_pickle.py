"""Pickling: save/load and pickle round-trips of every kind of model, remove_data."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from sm_hlm import AR1, HLM, HLMResults, Heteroscedastic, Unstructured
from sm_hlm.formula.pickling import MissingNameError
from sm_hlm.simulate import simulate_nels

from .conftest import load_csv


def _quiet(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f()


@pytest.fixture(scope="module")
def nels_like() -> pd.DataFrame:
    d = simulate_nels(n_schools=70, seed=21)
    rng = np.random.default_rng(4)
    d["urbanicity"] = np.array(["urban", "suburban", "rural"])[rng.integers(0, 3, 70)][
        d.school - 1001]
    return d


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return load_csv("panel_ri_ar1.csv")


def _formula_fit(d):
    return _quiet(lambda: HLM.from_formula(
        "mscore ~ flp*ses + C(urbanicity, Treatment('urban')) + center(ses):np.log(flp) "
        "+ (ses || school)", d).fit())


def _array_fit(d):
    X = np.column_stack([np.ones(len(d)), d.flp, d.ses])
    Z = np.column_stack([np.ones(len(d)), d.ses])
    return _quiet(lambda: HLM(d.mscore.to_numpy(), X, d.school.to_numpy(), Z).fit(reml=False))


def _levels_fit(d):
    return _quiet(lambda: HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp",
                                                                         "ses": "~ flp"},
                                          groups="school", random=["Intercept", "ses"],
                                          data=d).fit(reml=False))


def _ar1_fit(p):
    return _quiet(lambda: HLM.from_formula("y ~ wave*trt + (1 | subject)", p,
                                           residual=AR1(time="wave")).fit())


def _un_het_fit(p):
    return _quiet(lambda: HLM.from_formula(
        "y ~ wave*trt", p, groups="subject", re_formula="0",
        residual=AR1(time="wave") * Heteroscedastic(by="wave")).fit())


def _roundtrip(res):
    return pickle.loads(pickle.dumps(res))


def _same_results(a, b):
    np.testing.assert_array_equal(np.asarray(a.params), np.asarray(b.params))
    np.testing.assert_array_equal(np.asarray(a.bse), np.asarray(b.bse))
    assert a.llf == b.llf
    assert a.summary().as_text() == b.summary().as_text()


def test_formula_model_roundtrip(nels_like, tmp_path):
    res = _formula_fit(nels_like)
    new = nels_like.iloc[::37].copy()
    new.loc[new.index[0], "school"] = -5                  # a group not in the fit
    for back in (_roundtrip(res), None):
        if back is None:
            path = tmp_path / "fit.pkl"
            res.save(path)
            back = HLMResults.load(path)
        _same_results(res, back)
        np.testing.assert_array_equal(res.predict(new).to_numpy(), back.predict(new).to_numpy())
        np.testing.assert_array_equal(res.predict(new, random=False).to_numpy(),
                                      back.predict(new, random=False).to_numpy())
        a = res.get_prediction(new).summary_frame()
        b = back.get_prediction(new).summary_frame()
        pd.testing.assert_frame_equal(a, b)


def test_stateful_transform_and_levels_survive_without_data(nels_like):
    """center(ses) keeps the fitted data's mean; the factor keeps its levels."""
    res = _formula_fit(nels_like)
    back = _roundtrip(res)
    one = nels_like.iloc[[5]]                               # one row: its own mean would be 0
    assert back.predict(one).iloc[0] == res.predict(one).iloc[0]
    fac = back.model.fixed_design_info.factor_infos
    cats = {f.name(): fi.categories for f, fi in fac.items() if fi.type == "categorical"}
    assert cats == {"C(urbanicity, Treatment('urban'))": ("rural", "suburban", "urban")}


def test_array_model_roundtrip(nels_like):
    res = _array_fit(nels_like)
    back = _roundtrip(res)
    _same_results(res, back)
    X = np.column_stack([np.ones(5), nels_like.flp[:5], nels_like.ses[:5]])
    Z = np.column_stack([np.ones(5), nels_like.ses[:5]])
    g = nels_like.school.to_numpy()[:5]
    np.testing.assert_array_equal(res.predict(X, exog_re=Z, groups=g),
                                  back.predict(X, exog_re=Z, groups=g))


def test_from_levels_roundtrip(nels_like):
    res = _levels_fit(nels_like)
    back = _roundtrip(res)
    _same_results(res, back)
    assert back.level_equations().as_text() == res.level_equations().as_text()
    new = nels_like.iloc[:20]
    np.testing.assert_array_equal(res.predict(new).to_numpy(), back.predict(new).to_numpy())


@pytest.mark.parametrize("make", [_ar1_fit, _un_het_fit])
def test_residual_structure_roundtrip(panel, make):
    res = make(panel)
    back = _roundtrip(res)
    _same_results(res, back)
    pd.testing.assert_series_equal(res.residual_params, back.residual_params)
    new = panel.iloc[:15]
    np.testing.assert_array_equal(res.predict(new).to_numpy(), back.predict(new).to_numpy())


def test_unstructured_array_roundtrip(panel):
    X = np.column_stack([np.ones(len(panel)), panel.wave, panel.trt])
    res = _quiet(lambda: HLM(panel.y.to_numpy(), X, panel.subject.to_numpy(),
                             np.zeros((len(panel), 0)),
                             residual=Unstructured(position=panel.wave.to_numpy())).fit())
    back = _roundtrip(res)
    _same_results(res, back)


def test_failed_save_leaves_no_file(nels_like, tmp_path):
    res = _array_fit(nels_like)
    path = tmp_path / "fit.pkl"
    res._results.not_picklable = lambda: None          # pickling fails
    try:
        with pytest.raises(Exception):
            res.save(path)
        assert not path.exists()
        assert list(tmp_path.iterdir()) == []            # no temporary left behind
        path.write_bytes(b"old")
        with pytest.raises(Exception):
            res.save(path)
        assert path.read_bytes() == b"old"               # an existing file is untouched
    finally:
        del res._results.not_picklable
    res.save(path)
    assert HLMResults.load(path).llf == res.llf


def test_remove_data(nels_like):
    res = _formula_fit(nels_like)
    text = res.summary().as_text()
    new = nels_like.iloc[:25]
    pred = res.predict(new).to_numpy()
    frame = res.get_prediction(new, random=False).summary_frame()
    size = len(pickle.dumps(res))
    res.remove_data()
    assert res.model.endog is None and res.model.exog is None
    assert res.model.exog_re is None and res.model.data.frame is None
    assert len(pickle.dumps(res)) < size / 3
    back = _roundtrip(res)
    for r in (res, back):
        assert r.summary().as_text() == text
        np.testing.assert_array_equal(r.predict(new).to_numpy(), pred)
        pd.testing.assert_frame_equal(r.get_prediction(new, random=False).summary_frame(), frame)
    with pytest.raises(ValueError, match="remove_data"):
        back.predict()


def test_unpicklable_formula_function_named_on_use(nels_like):
    square = lambda x: x ** 2                          # noqa: E731 - a lambda does not pickle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = HLM.from_formula("mscore ~ square(ses) + (1 | school)", nels_like).fit()
    back = _roundtrip(res)
    assert back.llf == res.llf
    with pytest.raises(Exception, match="'square'.*could not be stored") as info:
        back.predict(nels_like.iloc[:3])
    assert isinstance(info.value, MissingNameError) or "MissingNameError" in str(info.value)
