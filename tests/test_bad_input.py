"""Bad input gets a clear exception naming the problem; nothing is dropped silently."""
from __future__ import annotations

import string
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sm_hlm
from sm_hlm.formula import parse_formula
from sm_hlm.simulate import simulate_nels

F = "mscore ~ ses + (ses | school)"


@pytest.fixture
def data() -> pd.DataFrame:
    return simulate_nels(n_schools=40, seed=9)


def test_missing_predictor_column(data):
    with pytest.raises(KeyError, match=r"\['hwh'\]"):
        sm_hlm.HLM.from_formula("mscore ~ hwh + (1 | school)", data)


def test_missing_grouping_column(data):
    with pytest.raises(KeyError, match="district"):
        sm_hlm.HLM.from_formula("mscore ~ ses + (1 | district)", data)
    with pytest.raises(KeyError, match="district"):
        sm_hlm.HLM.from_formula("mscore ~ ses", data, groups="district")


def test_missing_response_column(data):
    with pytest.raises(KeyError, match="score"):
        sm_hlm.HLM.from_formula("score ~ ses + (1 | school)", data)


@pytest.mark.parametrize("column", ["mscore", "ses", "school"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_values_raise_by_name(data, column, bad):
    d = data.astype({"school": float})
    d.loc[d.index[[3, 17]], column] = bad
    with pytest.raises(sm_hlm.MissingDataError, match=rf"'{column}' \(2 rows\)"):
        sm_hlm.HLM.from_formula(F, d, missing="raise")


@pytest.mark.parametrize("column", ["mscore", "ses", "school"])
def test_missing_drop_reports_count(data, column):
    d = data.astype({"school": float})
    d.loc[d.index[[3, 17, 30]], column] = np.nan
    with pytest.warns(sm_hlm.DroppedRowsWarning, match=rf"dropped 3 of {len(d)} rows"):
        m = sm_hlm.HLM.from_formula(F, d, missing="drop")
    assert m.nobs == len(d) - 3
    assert m.n_dropped == 3


def test_array_interface_nan_raises_and_drops(data):
    y = data.mscore.copy()
    y.iloc[5] = np.nan
    X = pd.DataFrame({"Intercept": 1.0, "ses": data.ses})
    with pytest.raises(sm_hlm.MissingDataError, match="mscore"):
        sm_hlm.HLM(y, X, data.school)
    with pytest.warns(sm_hlm.DroppedRowsWarning, match="dropped 1 of"):
        m = sm_hlm.HLM(y, X, data.school, missing="drop")
    assert m.nobs == len(data) - 1


def test_unused_columns_with_nan_do_not_drop_rows(data):
    d = data.assign(other=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sm_hlm.DroppedRowsWarning)
        m = sm_hlm.HLM.from_formula(F, d)
    assert m.nobs == len(d)


def test_single_group(data):
    d = data.assign(school=1)
    with pytest.raises(sm_hlm.IdentificationError, match="only one group"):
        sm_hlm.HLM.from_formula(F, d)


def test_more_random_effects_than_identifiable(data):
    # lme4's checkNlevels: a factor needs fewer levels than observations
    one_per_group = data.groupby("school").head(1)
    with pytest.raises(sm_hlm.IdentificationError, match="levels of 'school' for 40 obs"):
        sm_hlm.HLM.from_formula("mscore ~ 1 + (1 | school)", one_per_group)
    # lme4's checkZdims, per term: (ses | school) has 2 x m random effects
    two_per_group = data.groupby("school").head(2)
    with pytest.raises(sm_hlm.IdentificationError, match=r"80 random effects for term "
                       r"\(Intercept \+ ses \| school\).*not identifiable"):
        sm_hlm.HLM.from_formula("mscore ~ ses + (ses | school)", two_per_group)
    # ... while (ses || school) is two terms of m random effects each: lme4 fits it
    mod = sm_hlm.HLM.from_formula("mscore ~ ses + (ses || school)", two_per_group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        res = mod.fit(reml=False)
    assert np.isfinite(res.llf)


def test_few_groups_fit_as_lme4_does(data):
    # two groups for a 2 x 2 covariance: lme4 fits (a singular fit); so does sm_hlm
    few = data[data.school.isin(data.school.unique()[:2])]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = sm_hlm.HLM.from_formula(F, few).fit(reml=False)
    assert np.isfinite(res.llf)
    assert res.singular == any(issubclass(x.category, sm_hlm.SingularFitWarning) for x in w)


def test_rank_deficient_fixed_effects(data):
    d = data.assign(ses2=2 * data.ses)
    with pytest.raises(sm_hlm.IdentificationError, match=r"\['ses2'\]"):
        sm_hlm.HLM.from_formula("mscore ~ ses + ses2 + (1 | school)", d)


def test_non_numeric_response(data):
    d = data.assign(grade=np.where(data.mscore > 50, "high", "low"))
    with pytest.raises(TypeError, match="'grade' must be numeric"):
        sm_hlm.HLM.from_formula("grade ~ ses + (1 | school)", d)
    with pytest.raises(TypeError, match="must be numeric"):
        sm_hlm.HLM(d.grade, np.ones((len(d), 1)), d.school)


def test_empty_data(data):
    with pytest.raises(ValueError, match="empty data"):
        sm_hlm.HLM.from_formula(F, data.iloc[:0])
    d = data.copy()
    d["ses"] = np.nan
    with pytest.warns(sm_hlm.DroppedRowsWarning):
        with pytest.raises(ValueError, match="no rows left"):
            sm_hlm.HLM.from_formula(F, d)


@pytest.mark.parametrize("formula, match", [
    ("mscore ~ ses + (ses | )", "names no grouping column"),
    ("mscore ~ ses + ( | school)", "nothing left of the bar"),
    ("mscore ~ ses + (ses | school", "unbalanced parentheses"),
    ("mscore ~ ses + ses | school)", "unbalanced parentheses"),
    ("mscore ~ ses | school", "outside a parenthesised"),
    ("mscore ses + (1 | school)", "exactly one '~'"),
    ("~ ses + (1 | school)", "no response"),
    ("mscore ~ ses + + (1 | school)", "stray"),
    ("mscore ~ (1 | school | x)", "more than one bar"),
])
def test_malformed_bar_syntax(data, formula, match):
    with pytest.raises(sm_hlm.FormulaSyntaxError, match=match):
        sm_hlm.HLM.from_formula(formula, data)


def test_conflicting_random_specifications(data):
    with pytest.raises(ValueError, match="not both"):
        sm_hlm.HLM.from_formula(F, data, re_formula="~ses")
    with pytest.raises(ValueError, match="disagrees"):
        sm_hlm.HLM.from_formula(F, data, groups="flp")
    with pytest.raises(ValueError, match="no random effects"):
        sm_hlm.HLM.from_formula("mscore ~ ses", data)


def test_level2_variable_in_random_part_warns(data):
    from sm_hlm.crosslevel import Level2InRandomWarning
    with pytest.warns(Level2InRandomWarning, match="flp"):
        sm_hlm.HLM.from_formula("mscore ~ flp + (flp | school)", data)


def test_wrong_lengths_and_groups_name():
    with pytest.raises(ValueError, match="differ in length"):
        sm_hlm.HLM(np.arange(10.0), np.ones((9, 1)), np.repeat([1, 2], 5))
    with pytest.raises(TypeError, match="column name"):
        sm_hlm.HLM(np.arange(10.0), np.ones((10, 1)), "school")


def test_unknown_model_keywords_are_errors(data):
    """No keyword is silently dropped: a weighted model must never be fitted unweighted."""
    from sm_hlm.formula.api import hlm
    d = data.assign(w=1.0)
    # weights= is supported now (issue 9): it reaches the model
    assert sm_hlm.HLM.from_formula(F, d, weights="w").weight_type == "precision"
    with pytest.raises(TypeError, match="'freq_weights' is not supported"):
        hlm(F, d, freq_weights=d.w)
    # vc_formula is read (issue 8): a component constant within each school is confounded
    with pytest.raises(sm_hlm.IdentificationError, match="'school' and 'school:flp' are "
                       "completely confounded"):
        sm_hlm.HLM.from_formula("mscore ~ ses", d, groups="school",
                                vc_formula={"c": "0 + C(flp)"})
    with pytest.raises(TypeError, match="'vc_formula' is not supported"):
        sm_hlm.HLM(d.mscore, np.ones((len(d), 1)), d.school, vc_formula={"c": "0 + C(flp)"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'banana'"):
        hlm(F, d, banana=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'banana'"):
        sm_hlm.HLM(d.mscore, np.ones((len(d), 1)), d.school, banana=3)
    with pytest.raises(TypeError, match="positional"):
        sm_hlm.HLM.from_formula(F, d, None, None, "extra")


def test_bad_fit_arguments(data):
    m = sm_hlm.HLM.from_formula(F, data)
    with pytest.raises(TypeError, match="unexpected keyword argument 'banana'"):
        m.fit(banana=3)
    with pytest.raises(TypeError, match="'niter_sa' is not supported"):
        m.fit(niter_sa=5)
    with pytest.raises(ValueError, match="method='newton' is not available"):
        m.fit(method="newton")
    with pytest.raises(TypeError, match="reml must be True or False"):
        m.fit(reml="no")
    with pytest.raises(ValueError, match="3 entries"):
        m.fit(start_params=[1.0, 0.0])


_formula_chars = st.text(alphabet=string.ascii_letters[:6] + "()|~+ 01:*", min_size=0, max_size=30)


@settings(max_examples=300, deadline=None)
@given(_formula_chars)
def test_parser_never_fails_unclearly(text):
    """Any string either parses or raises one of the documented errors."""
    try:
        p = parse_formula(text)
    except (sm_hlm.FormulaSyntaxError, NotImplementedError):
        return
    assert p.response and p.fixed_rhs
    for term in p.random:
        assert term.expr and term.group


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 399), st.sampled_from(["mscore", "ses", "school"])),
                min_size=1, max_size=20))
def test_drop_removes_exactly_the_rows_with_missing_values(cells):
    d = simulate_nels(n_schools=25, seed=2).iloc[:400].astype({"school": float})
    for row, col in cells:
        d.iloc[row, d.columns.get_loc(col)] = np.nan
    bad = d[["mscore", "ses", "school"]].isna().any(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = sm_hlm.HLM.from_formula(F, d, missing="drop")
        except sm_hlm.IdentificationError:
            return
    assert m.nobs == (~bad).sum()
    assert m.row_index.equals(d.index[~bad])


def test_results_methods_reject_unknown_keywords(data):
    """Every public method of the results raises TypeError for an unknown keyword."""
    import inspect
    res = sm_hlm.HLM.from_formula(F, data).fit(reml=False)._results
    checked = 0
    for name in dir(type(res)):
        attr = getattr(type(res), name)
        if name.startswith("_") or isinstance(attr, property) or not callable(attr):
            continue
        if not inspect.isfunction(attr) and not inspect.ismethod(attr):
            continue
        with pytest.raises(TypeError):
            getattr(res, name)(banana=1)
        checked += 1
    assert checked >= 25


def test_constant_response_is_a_clear_error(data):
    d = data.assign(mscore=50.0)
    with pytest.raises(sm_hlm.IdentificationError, match="'mscore' is constant"):
        sm_hlm.HLM.from_formula(F, d)


def test_response_constant_within_groups_is_a_clear_error(data):
    # a random intercept fits such a response exactly: sigma^2 -> 0, the likelihood is unbounded
    d = data.assign(mscore=data.groupby("school")["mscore"].transform("mean"))
    with pytest.raises(sm_hlm.IdentificationError, match="fitted exactly within the groups"):
        sm_hlm.HLM.from_formula("mscore ~ ses + (1 | school)", d)
    # ... but not when every group's rows are all taken up by its random effects (bounded)
    two = data.groupby("school").head(2)
    two = two.assign(mscore=two.groupby("school")["mscore"].transform("mean") + two.ses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm_hlm.HLM.from_formula("mscore ~ ses + (ses || school)", two).fit(reml=False)
    assert np.isfinite(res.llf)


def test_near_collinear_columns_fit_as_lme4_does(data):
    """R's qr(X, tol = 1e-7) rule: 1e-6 noise keeps the column (lme4 fits), an exact copy
    is refused with the column named; a shift of the column changes neither."""
    rng = np.random.default_rng(3)
    noise = rng.normal(size=len(data))
    for shift in (0.0, 1e5):
        d = data.assign(ses=data.ses + shift, ses2=data.ses + shift + 1e-6 * noise)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
            res = sm_hlm.HLM.from_formula("mscore ~ ses + ses2 + (1 | school)", d).fit(
                reml=False)
        assert res.converged and abs(res.llf - res.loglike_dense()) < 1e-6 * abs(res.llf)
        d = data.assign(ses=data.ses + shift, ses2=data.ses + shift)
        with pytest.raises(sm_hlm.IdentificationError, match=r"\['ses2'\]"):
            sm_hlm.HLM.from_formula("mscore ~ ses + ses2 + (1 | school)", d)
