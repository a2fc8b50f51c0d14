"""Messages for a boolean response, a grouping column that needs Q(), missing nlopt."""
from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM, FormulaSyntaxError
from sm_hlm._compat import require_nlopt
from sm_hlm.formula.parse import parse_formula, quote_name
from sm_hlm.simulate import simulate_nels


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    d = simulate_nels(n_schools=40, mean_size=10, seed=31)
    d["passed"] = d.mscore > d.mscore.median()
    d["sch id"] = d.school
    return d


def _fit(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HLM.from_formula(*args, **kw).fit(reml=False)


def test_boolean_response_is_zero_one(data):
    a = _fit("passed ~ ses + (1 | school)", data)
    b = _fit("passed01 ~ ses + (1 | school)", data.assign(passed01=data.passed.astype(float)))
    np.testing.assert_array_equal(np.asarray(a.params), np.asarray(b.params))
    assert a.model.endog_names == "passed" and set(np.unique(a.model.endog)) == {0.0, 1.0}
    # the array interface already treats it as 0/1
    X = np.column_stack([np.ones(len(data)), data.ses])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = HLM(data.passed, X, data.school).fit(reml=False)
    assert c.llf == pytest.approx(a.llf, abs=1e-8)


def test_group_column_needing_q(data):
    a = _fit("mscore ~ ses + (ses | Q('sch id'))", data)
    b = _fit('mscore ~ ses + (ses | Q("sch id"))', data)
    c = _fit("mscore ~ ses", data, groups="sch id", re_formula="~ses")
    ref = _fit("mscore ~ ses + (ses | school)", data)
    for r in (a, b, c):
        assert r.model.group_name == "sch id"
        assert r.llf == pytest.approx(ref.llf, abs=1e-9)
    assert "No. Groups (sch id)" in a.summary().as_text()
    assert list(a.vcomp.index)[0] == "Var(Intercept | sch id)"
    assert str(a.model.re_specs[0]) == "(ses | Q('sch id'))"
    # the printed term parses back to the same group
    assert parse_formula("y ~ x + " + str(a.model.re_specs[0])).random[0].group == "sch id"
    new = data.iloc[:5]
    np.testing.assert_allclose(a.predict(new), ref.predict(new), rtol=1e-9)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a)).predict(new), a.predict(new))


def test_group_column_errors_point_to_q():
    with pytest.raises(FormulaSyntaxError, match=r"Q\('name'\)"):
        parse_formula("y ~ x + (1 | sch id)")
    assert quote_name("school") == "school" and quote_name("sch id") == "Q('sch id')"
    assert quote_name("it's") == 'Q("it\'s")'


def test_missing_nlopt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nlopt", None)      # import nlopt -> ImportError
    with pytest.raises(ImportError, match="pip install nlopt"):
        require_nlopt()
    # fit() says so before any work
    import pandas as pd
    d = pd.DataFrame({"y": np.arange(12.0) % 5, "g": np.repeat([1, 2, 3], 4)})
    mod = HLM.from_formula("y ~ 1 + (1 | g)", d)
    with pytest.raises(ImportError, match="pip install nlopt"):
        mod.fit()
    monkeypatch.undo()
    assert require_nlopt().__name__ == "nlopt"


def test_from_levels_with_group_column_needing_q(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"},
                            groups="sch id", random=["Intercept"], data=data).fit(reml=False)
        b = HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp"},
                            groups="school", random=["Intercept"], data=data).fit(reml=False)
    assert a.model.group_name == "sch id" and a.llf == pytest.approx(b.llf, abs=1e-9)
