"""Reports: summary text width and layout, LaTeX and HTML, no tests of variance
components, the star convention, R's abbreviate, statsmodels' Wald conventions."""
from __future__ import annotations

import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from statsmodels.iolib.summary2 import summary_col

from sm_hlm import HLM, summary_table
from sm_hlm.compare import STAR_LEVELS
from sm_hlm.report import abbreviate
from sm_hlm.simulate import simulate_nels

from .conftest import load_json

LONG = "student_socioeconomic_status_centered_xy"         # 40 characters


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    d = simulate_nels(n_schools=90, seed=11)
    rng = np.random.default_rng(3)
    urb = np.array(["urban", "suburban", "rural"])[rng.integers(0, 3, 90)]
    d["urbanicity"] = urb[d.school - 1001]
    d[LONG] = d.ses - d.groupby("school").ses.transform("mean")
    return d


def _fit(formula: str, data: pd.DataFrame, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HLM.from_formula(formula, data, **kw).fit(reml=False)


@pytest.fixture(scope="module")
def wide(data):
    # a factor with a long contrast name, an interaction and a 40-character name
    return _fit(f"mscore ~ flp*ses + C(urbanicity, Treatment('urban')) + {LONG} + "
                f"(1 + {LONG} | school)", data)


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _rules(text: str) -> list[str]:
    return [ln for ln in _lines(text) if ln and set(ln) <= {"=", "-"}]


@pytest.mark.parametrize("kw", [{}, {"ddf": "satterthwaite"}, {"cov_type": "CR2"},
                                {"correlation": True}])
def test_summary_text_fits_100_columns(wide, kw):
    assert len(LONG) == 40
    text = wide.summary(**kw).as_text()
    assert max(len(ln) for ln in _lines(text)) <= 100
    rules = _rules(text)
    assert len(rules) >= 6 and len({len(r) for r in rules}) == 1     # one rule width
    # the full names are all there (long ones wrapped, never cut)
    flat = re.sub(r"\s+", "", text)
    for name in wide.fe_params.index:
        assert re.sub(r"\s+", "", name) in flat, name


def test_summary_numbers_unchanged(wide):
    text = wide.summary().as_text()
    for name in ["flp", "ses", "flp:ses"]:
        row = next(ln for ln in _lines(text) if ln.startswith(name + " "))
        vals = row.split()[1:]
        assert vals[0] == f"{wide.fe_params[name]:.4f}"
        assert vals[1] == f"{wide.bse_fe[name]:.4f}"
        assert vals[2] == f"{wide.fe_params[name] / wide.bse_fe[name]:.4f}"
    assert f"{wide.aic:.1f}" in text and f"{wide.llf:.1f}" in text


def test_satterthwaite_df_rounded(wide):
    text = wide.summary(ddf="satterthwaite").as_text()
    df = wide.satterthwaite()["df"]
    row = next(ln for ln in _lines(text) if ln.startswith("ses "))
    assert row.split()[3] == f"{df['ses']:.1f}"


def test_correlation_table_abbreviated_as_lme4(data):
    res = _fit("mscore ~ flp*ses + (ses | school)", data)
    text = res.summary().as_text()
    block = text[text.index("Correlation of fixed effects:"):].split("\n")
    assert block[1].split() == ["Intrcp", "flp", "ses"]      # R's abbreviate(, 6)
    assert block[2].split()[0] == "flp" and block[4].split()[0] == "flp:ses"
    assert block[4].split()[-1] == f"{res.corr_fe.loc['flp:ses', 'ses']:.3f}"


def test_correlation_numbered_when_labels_do_not_fit(wide):
    text = wide.summary().as_text()
    block = text[text.index("Correlation of fixed effects:"):].split("\n")
    assert block[1].split()[:2] == ["(1)", "(2)"]
    assert block[2].startswith("(2) C(urbanicity, Treatment('urban'))")


def test_correlation_hidden_beyond_12_fixed_effects(data):
    d = data.assign(k=(data.index % 12).astype(str))
    res = _fit("mscore ~ ses + C(k) + (1 | school)", d)
    assert res.model.k_fe == 13
    text = res.summary().as_text()
    assert "Correlation of fixed effects" not in text
    assert "p = 13 > 12" in text and "correlation=True" in text
    shown = res.summary(correlation=True).as_text()
    assert "Correlation of fixed effects" in shown
    assert max(len(ln) for ln in _lines(shown)) <= 100
    assert "Correlation" not in res.summary(correlation=False).as_text().split("=" * 5)[-1]


def test_narrow_width_option(wide):
    text = wide.summary().as_text(width=80)
    assert max(len(ln) for ln in _lines(text)) <= 80


def test_latex_is_one_booktabs_table(wide):
    tex = wide.summary().as_latex(label="tab:fit2", caption="NELS model")
    assert tex.count("\\begin{table}") == 1 and tex.count("\\begin{tabular}") == 1
    assert tex.count("\\end{tabular}") == 1 and tex.count("\\end{table}") == 1
    for cmd in ["\\toprule", "\\midrule", "\\bottomrule", "\\caption{NELS model}",
                "\\label{tab:fit2}"]:
        assert cmd in tex
    default = wide.summary().as_latex()
    assert "\\caption{Linear mixed model fit by maximum likelihood}" in default
    assert re.search(r"\\label\{[^}]+\}", default)
    # every row has the same number of cells
    body = tex[tex.index("\\toprule"):tex.index("\\bottomrule")]
    rows = [r for r in body.split("\\\\\n") if "&" in r and "multicolumn" not in r]
    ncol = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    assert all(r.count("&") == ncol - 1 for r in rows)
    assert "P\\textgreater{}\\textbar{}z\\textbar{}" in tex


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br",):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_well_formed_and_escaped(wide):
    s = wide.summary()
    html = s._repr_html_()
    assert html == s.as_html()
    chk = _Checker()
    chk.feed(html)
    assert not chk.errors and not chk.stack
    assert html.count("<table") == len(s.tables)
    assert "P&gt;|z|" in html and "P>|z|" not in html
    assert "C(urbanicity, Treatment(&#x27;urban&#x27;))[T.rural]" in html


def test_variance_components_have_no_tests(wide, data):
    assert np.all(np.isnan(np.asarray(wide.pvalues)[wide.k_fe:]))
    np.testing.assert_allclose(np.asarray(wide.pvalues)[:wide.k_fe],
                               2 * __import__("scipy").stats.norm.sf(
                                   np.abs(wide.fe_params / wide.bse_fe)))
    # statsmodels' summary_col: stars on fixed effects only
    small = _fit("mscore ~ flp + (1 | school)", data)
    col = summary_col([small], stars=True).as_text()
    var_line = next(ln for ln in _lines(col) if ln.startswith("Var(Intercept | school)"))
    assert "*" not in var_line and small.bse_re.iloc[0] > 0
    assert "***" in next(ln for ln in _lines(col) if ln.startswith("flp"))
    # summary: the random-effects section has no z / p columns
    text = wide.summary().as_text()
    re_block = text[text.index("Random effects:"):text.index("Fixed effects:")]
    assert "P>" not in re_block and "z" not in re_block.split("\n")[1]


def test_summary_table_star_convention_and_width(wide, data):
    small = _fit("mscore ~ flp + (1 | school)", data)
    st = summary_table(small, wide, names=["small", "wide"])
    text = st.as_text()
    assert STAR_LEVELS == (0.05, 0.01, 0.001)
    assert "* p<0.05, ** p<0.01, *** p<0.001" in text and "not tested" in text
    assert max(len(ln) for ln in _lines(text)) <= 100
    vc = text[text.index("Variance components"):text.index("Fit:")]
    assert "*" not in vc
    p = float(wide.pvalues["flp"])
    stars = "*" * sum(p < lv for lv in STAR_LEVELS)
    assert f"{wide.fe_params['flp']:.3f}{stars}" in text
    tex = st.as_latex()
    assert tex.count("\\begin{tabular}") == 1 and "\\toprule" in tex


def test_abbreviate_matches_r():
    ref = load_json("report_refs.json")["abbreviate"]
    assert abbreviate(ref["names"], 6) == ref["min6"]
    assert abbreviate(ref["names"], 11) == ref["min11"]


def test_wald_test_statsmodels_default_scalar(wide):
    w = wide.wald_test("flp = 0, flp:ses = 0")
    assert isinstance(w.statistic, float) and w.df_denom is None or True
    b = wide.fe_params[["flp", "flp:ses"]].to_numpy()
    V = wide.cov_fe.loc[["flp", "flp:ses"], ["flp", "flp:ses"]].to_numpy()
    assert w.statistic == pytest.approx(b @ np.linalg.solve(V, b), rel=1e-10)


def test_wald_test_terms_one_test_per_term(wide):
    wt = wide.wald_test_terms()
    tab = wt.table
    fac = "C(urbanicity, Treatment('urban'))"
    assert list(tab.index) == ["Intercept", fac, "flp", "ses", "flp:ses", LONG]
    assert tab.loc[fac, "df_constraint"] == 2
    cols = [c for c in wide.fe_params.index if c.startswith(fac)]
    b = wide.fe_params[cols].to_numpy()
    V = wide.cov_fe.loc[cols, cols].to_numpy()
    assert tab.loc[fac, "statistic"] == pytest.approx(b @ np.linalg.solve(V, b), rel=1e-10)
    assert tab.loc["flp:ses", "statistic"] == pytest.approx(
        (wide.fe_params["flp:ses"] / wide.bse_fe["flp:ses"]) ** 2, rel=1e-10)
    assert list(wide.wald_test_terms(skip_single=True).table.index) == [fac]
    comb = wide.wald_test_terms(combine_terms=["ses"]).table
    assert comb.index[-1] == "ses" and comb["df_constraint"].iloc[-1] == 2 and len(comb) == 7


def test_wald_test_terms_arrays(data):
    X = pd.DataFrame({"Intercept": 1.0, "flp": data.flp, "ses": data.ses})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = HLM(data.mscore, X, data.school).fit(reml=False)
    tab = res.wald_test_terms().table
    assert list(tab.index) == ["Intercept", "flp", "ses"]
    assert (tab["df_constraint"] == 1).all()
