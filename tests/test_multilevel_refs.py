"""Accuracy against lme4 with several grouping factors (issue 8, item 6).

References: ``validation/r/multilevel_lme4_more.R`` (JSON committed): mlmRev's
egsingle (three-level growth model) and ScotsSec (crossed), nlme's Pixel, lme4's
InstEval (crossed, REML), and seeded simulations from
``validation/multilevel_data.py`` (very unbalanced three levels, four levels with
mixed term types, crossed with slopes plus a nested factor; labels reused across
parents, rows in random order).

Every case is fitted once per module through one small adapter, :func:`fit_case`,
so that the same assertions can run over another route to the fit (the public
``HLM.from_formula`` API) by adding an adapter with the same signature.

What is asserted (issue 8, item 6):

- log-likelihood never below lme4's by more than 1e-6, and not above it by more
  than lme4's own refit with tight optimizer tolerances shows is possible
  (lme4's default fit may stop short, with or without a convergence warning);
  with tight tolerances on both sides, the two agree within 1e-6;
- fixed effects within 1e-5 relative, their standard errors within 1e-4
  relative, against lme4's tight refit;
- theta and the variance components within lme4's default optimizer tolerance
  (nloptr's ``xtol_rel = 1e-4``) of lme4's tight refit;
- conditional modes and variances (small cases) against lme4's tight refit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from sm_hlm.engine import lme4_term_order, theta_to_lme4
from sm_hlm.engine.fit import fit_theta
from sm_hlm.engine.solution import solve_at
from validation.multilevel_data import design, engine_terms

from .conftest import R_DIR, load_json

REF = load_json("multilevel_lme4_more.json")


@dataclass(frozen=True)
class Case:
    """One reference model.

    Attributes
    ----------
    data
        CSV file in ``validation/r/data``.
    formula
        lme4's formula as fitted in R; ``formula_py`` the same model in the
        package's formula language (differs only where R's syntax does).
    factors
        Grouping columns (read as text, as R's factors).
    fixed
        Fixed-effects columns for :func:`validation.multilevel_data.design`,
        in lme4's ``fixef`` order (``"a:b"`` a product, ``"1"`` the intercept).
    random
        ``(factor, columns, correlated)`` per term in the formula's order, with
        ``(x || g)`` split into one term per column as lme4 does.
    fixef_names
        lme4's names of the fixed effects (default: ``fixed`` with ``"1"`` as
        ``"(Intercept)"``).
    """

    data: str
    formula: str
    factors: tuple[str, ...]
    fixed: tuple[str, ...]
    random: tuple[tuple[str, tuple[str, ...], bool], ...]
    formula_py: str = ""
    fixef_names: tuple[str, ...] = ()
    response: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "response", self.formula.split("~")[0].strip())
        if not self.fixef_names:
            object.__setattr__(self, "fixef_names", tuple(
                "(Intercept)" if c == "1" else c for c in self.fixed))
        if not self.formula_py:
            object.__setattr__(self, "formula_py", self.formula)


_THREE = (("school", ("1", "x"), True), ("school:klass", ("1", "x"), True))
CASES: dict[str, Case] = {
    "egsingle": Case(
        "egsingle.csv", "math ~ year * size + female + black + hispanic + retained"
        " + (year | schoolid) + (year | schoolid:childid)", ("schoolid", "childid"),
        ("1", "year", "size", "female", "black", "hispanic", "retained", "year:size"),
        (("schoolid", ("1", "year"), True), ("schoolid:childid", ("1", "year"), True))),
    "scotssec": Case(
        "scotssec.csv", "attain ~ verbal * female + (1 | primary) + (1 | second)",
        ("primary", "second"), ("1", "verbal", "female", "verbal:female"),
        (("primary", ("1",), True), ("second", ("1",), True))),
    "pixel": Case(
        "pixel.csv", "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)", ("Dog", "Side"),
        ("1", "day", "day:day"), (("Dog", ("1", "day"), True), ("Side:Dog", ("1",), True)),
        formula_py="pixel ~ day + I(day**2) + (day | Dog) + (1 | Side:Dog)",
        fixef_names=("(Intercept)", "day", "I(day^2)")),
    "insteval": Case(
        "insteval.csv", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", ("s", "d", "dept"),
        ("1", "service"), (("s", ("1",), True), ("d", ("1",), True), ("dept", ("1",), True))),
    "ml_three_unbal": Case(
        "ml_three_unbal.csv", "y ~ x * sector + tq + (x | school) + (x | school:klass)",
        ("school", "klass"), ("1", "x", "sector", "tq", "x:sector"), _THREE),
    "ml_four_mixed": Case(
        "ml_four_mixed.csv", "y ~ x + sector + tq + (1 | district) + (x || district:school)"
        " + (x | district:school:klass)", ("district", "school", "klass"),
        ("1", "x", "sector", "tq"),
        (("district", ("1",), True), ("district:school", ("1",), True),
         ("district:school", ("x",), True), ("district:school:klass", ("1", "x"), True))),
    "ml_crossed_nested": Case(
        "ml_crossed_nested.csv", "y ~ cond + w + (cond | subj) + (cond | item) + (1 | site)",
        ("site", "subj", "item"), ("1", "cond", "w"),
        (("subj", ("1", "cond"), True), ("item", ("1", "cond"), True), ("site", ("1",), True))),
}
KEYS = sorted(REF)


def load_case(case: Case) -> pd.DataFrame:
    """The case's data, grouping columns as text (lme4's level labels)."""
    return pd.read_csv(R_DIR / "data" / case.data, dtype={f: str for f in case.factors})


def level_labels(df: pd.DataFrame, term) -> np.ndarray:
    """lme4's label of each level code of an engine term (``"a:b"`` for interactions)."""
    first = np.unique(term.refs, return_index=True)[1]     # a row of every level, in code order
    rows = df.iloc[first][term.factor.split(":")].astype(str)
    return rows.agg(":".join, axis=1).to_numpy(dtype=object)


# ------------------------------------------------------------------ adapter
def fit_case(case: Case, df: pd.DataFrame, *, reml: bool, tight: bool) -> dict:
    """Fit ``case`` through the engine; the results in lme4's layout.

    Parameters
    ----------
    tight
        Stop BOBYQA at ``ftol_abs = 1e-12, xtol_abs = 1e-10`` (the default:
        lme4's ``1e-8``).

    Returns
    -------
    dict with
        llf : log-likelihood (ML) or -REML criterion / 2;
        fe_params, bse_fe : Series indexed by lme4's fixef names;
        theta_lme4 : theta in lme4's order;
        varcorr : list of covariance matrices (sigma^2 Lambda Lambda') in lme4's
            VarCorr order (= theta's order, one per term);
        scale : sigma^2;
        ranef : factor -> DataFrame (index: lme4's level labels, columns: the
            effects of all that factor's terms, formula order);
        condvar : factor -> {tuple of the term's effect names: (levels, q, q)
            array in the row order of ``ranef[factor]``};
        converged : bool.
    """
    terms = engine_terms(df, case.random)
    X = design(df, case.fixed)
    y = df[case.response].to_numpy(float)
    tol = dict(ftol_abs=1e-12, xtol_abs=1e-10) if tight else {}
    fit = fit_theta(terms, X, y, reml=reml, **tol)
    sol = solve_at(fit.deviance_function, fit.theta)
    names = list(case.fixef_names)
    lams = fit.deviance_function.layout.lambdas(fit.theta)
    order = lme4_term_order([t.n_levels for t in terms])
    ranef: dict[str, pd.DataFrame] = {}
    condvar: dict[str, dict[tuple[str, ...], np.ndarray]] = {}
    for k, t in enumerate(terms):
        lab = level_labels(df, t)
        block = pd.DataFrame(sol.b[k], index=pd.Index(lab, name=t.factor), columns=list(t.names))
        if t.factor in ranef:
            block = block.reindex(ranef[t.factor].index)
            ranef[t.factor] = pd.concat([ranef[t.factor], block], axis=1)
            pos = pd.Index(lab).get_indexer(ranef[t.factor].index)
            condvar[t.factor][t.names] = sol.condvar[k][pos]
        else:
            ranef[t.factor] = block
            condvar[t.factor] = {t.names: sol.condvar[k]}
    return dict(llf=-fit.deviance / 2, fe_params=pd.Series(sol.beta, index=names),
                bse_fe=pd.Series(np.sqrt(np.diag(sol.cov_beta)), index=names),
                theta_lme4=theta_to_lme4(fit.theta, fit.deviance_function.layout),
                varcorr=[sol.scale * lams[k] @ lams[k].T for k in order],
                scale=sol.scale, ranef=ranef, condvar=condvar,
                converged=bool(fit.optimizer.converged))


def _lme4_fe_name(name: str) -> str:
    """Our (patsy) fixed-effect name as lme4 prints it."""
    if name == "Intercept":
        return "(Intercept)"
    return name.replace(" ** ", "^").replace("**", "^")


def fit_case_api(case: Case, df: pd.DataFrame, *, reml: bool, tight: bool) -> dict:
    """Fit ``case`` through the public API, ``HLM.from_formula(...).fit()``; the same
    layout as :func:`fit_case` (terms on one factor, one block-diagonal term of the
    model, are split into lme4's terms by the covariance they estimate)."""
    import warnings

    from sm_hlm import HLM, ConvergenceWarning

    tol = dict(ftol_abs=1e-12, xtol_abs=1e-10) if tight else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # reported in "converged"
        res = HLM.from_formula(case.formula_py, df).fit(reml=reml, **tol)
    fe = res.fe_params.rename(index=_lme4_fe_name)
    se = res.bse_fe.rename(index=_lme4_fe_name)
    names = list(case.fixef_names)
    scale = float(res.scale)
    cov_re = res.cov_re if isinstance(res.cov_re, dict) else {
        res.model.factor_names[0]: res.cov_re}
    re = res.ranef(cond_var=True)
    n_levels = [res.model.factors[f].n_levels for f, _, _ in case.random]
    order = lme4_term_order(n_levels)
    theta, varcorr = [], []
    for k in order:
        factor, cols, _ = case.random[k]
        eff = ["Intercept" if c == "1" else c for c in cols]
        cov = cov_re[factor].loc[eff, eff].to_numpy()
        lam = np.linalg.cholesky(cov / scale) if np.all(np.diag(cov) > 0) else np.sqrt(
            np.maximum(cov / scale, 0.0))
        theta += [lam[i, j] for j in range(len(eff)) for i in range(j, len(eff))]
        varcorr.append(cov)
    ranef, condvar = {}, {}
    for factor, cols, _ in case.random:
        eff = ["Intercept" if c == "1" else c for c in cols]
        lme4_eff = ["(Intercept)" if c == "1" else c for c in cols]
        df_f = re[factor]
        part = df_f[eff].rename(columns=dict(zip(eff, lme4_eff)))
        ranef[factor] = pd.concat([ranef[factor], part], axis=1) if factor in ranef else part
        key = tuple(lme4_eff)
        cv = res.fit_result.blup_cov[[t.factor for t in res.model.re_terms].index(factor)]
        idx = [list(res.model.re_terms[[t.factor for t in res.model.re_terms].index(
            factor)].names).index(e) for e in eff]
        condvar.setdefault(factor, {})[key] = cv[:, idx][:, :, idx]
    for f in ranef:
        ranef[f].index = ranef[f].index.astype(str)
    return dict(llf=float(res.llf), fe_params=fe[names], bse_fe=se[names],
                theta_lme4=np.array(theta), varcorr=varcorr, scale=scale, ranef=ranef,
                condvar=condvar, converged=bool(res.converged))


# ----------------------------------------------------------------- fixtures
def _case_of(key: str) -> tuple[Case, bool]:
    name, method = key.rsplit("_", 1)
    return CASES[name], method == "REML"


ADAPTERS = {"engine": fit_case, "api": fit_case_api}


def fit_references(route: str = "engine") -> dict:
    """Every reference fitted by an adapter: key -> {"default": ..., "tight": ...}."""
    fit = ADAPTERS[route]
    out = {}
    for key in KEYS:
        case, reml = _case_of(key)
        df = load_case(case)
        out[key] = {"default": fit(case, df, reml=reml, tight=False),
                    "tight": fit(case, df, reml=reml, tight=True)}
    return out


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def fits(request) -> dict:
    """Both routes: the engine directly and the public ``HLM.from_formula`` API."""
    return fit_references(request.param)


def _vec(named: dict, names: list[str]) -> np.ndarray:
    return np.array([named[n] for n in names], dtype=float)


# -------------------------------------------------------------------- tests
def test_every_case_has_references():
    assert {k.rsplit("_", 1)[0] for k in KEYS} == set(CASES)
    for key in KEYS:
        case, reml = _case_of(key)
        r = REF[key]
        assert r["formula"] == case.formula and r["data"] == case.data and r["REML"] == reml
        assert r["fixef_names"] == list(case.fixef_names)


@pytest.mark.parametrize("name", ["ml_three_unbal", "ml_four_mixed", "ml_crossed_nested"])
def test_simulated_data_are_hard_enough(name):
    """Labels reused across parents, rows in random order, unbalanced sizes."""
    case = CASES[name]
    df = load_case(case)
    inner = case.random[-1][0] if name != "ml_crossed_nested" else "subj"
    parts = inner.split(":")
    ngrps = REF[f"{name}_ML"]["ngrps"]
    if len(parts) > 1:       # the innermost label alone names fewer units than the nesting
        assert df[parts[-1]].nunique() < ngrps[inner] == df.groupby(parts).ngroups
    codes = pd.factorize(df[parts].agg(":".join, axis=1))[0]
    assert np.any(np.diff(codes) < 0)                    # rows not grouped by unit
    sizes = df.groupby(parts).size()
    assert sizes.nunique() > 1                           # unbalanced
    if name != "ml_crossed_nested":  # singletons and units 3x the median size
        assert sizes.min() == 1 and sizes.max() >= 3 * sizes.median()
    else:                            # subjects nested in sites, crossed with items
        assert df.groupby("subj")["site"].nunique().max() == 1
        assert df.groupby("item")["site"].nunique().min() > 1


@pytest.mark.parametrize("key", KEYS)
def test_loglik(fits, key):
    r = REF[key]
    ours, ours_tight = fits[key]["default"], fits[key]["tight"]
    # never below lme4's optimum by more than 1e-6 ...
    assert ours["llf"] >= r["logLik"] - 1e-6
    assert ours_tight["llf"] >= r["tight"]["logLik"] - 1e-6
    # ... and above it only as far as lme4's own tight refit reaches
    assert ours["llf"] <= r["tight"]["logLik"] + 1e-6
    assert ours_tight["llf"] <= r["tight"]["logLik"] + 1e-6
    assert ours["converged"] and ours_tight["converged"]


@pytest.mark.parametrize("key", KEYS)
def test_fixed_effects_and_standard_errors(fits, key):
    r = REF[key]
    ours = fits[key]["tight"]
    names = r["fixef_names"]
    beta = _vec(r["tight"]["fixef"], names)
    assert list(ours["fe_params"].index) == names
    np.testing.assert_allclose(ours["fe_params"].to_numpy(), beta, rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours["bse_fe"].to_numpy(), r["tight"]["se"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("key", KEYS)
def test_theta_and_variance_components(fits, key):
    r = REF[key]
    ours = fits[key]["tight"]
    theta = _vec(r["tight"]["theta"], r["theta_names"])
    # lme4's default xtol_rel = 1e-4, relative to the size of theta (entries on the
    # boundary, 0, cannot be compared relatively)
    scale = np.max(np.abs(theta))
    np.testing.assert_allclose(ours["theta_lme4"], theta, rtol=1e-4, atol=1e-4 * scale)
    vc = r["tight"]["varcorr"]
    assert len(ours["varcorr"]) == len(vc)
    # sigma^2 Lambda Lambda' is quadratic in theta: twice theta's relative tolerance
    for mine, ref in zip(ours["varcorr"], vc):
        cov = np.array(ref["cov"], dtype=float).reshape(mine.shape)
        sd = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(mine, cov, rtol=2e-4, atol=2e-4 * np.outer(sd, sd).max())
    assert np.sqrt(ours["scale"]) == pytest.approx(r["tight"]["sigma"], rel=1e-4)


RANEF_KEYS = [k for k in KEYS if "ranef" in REF[k]["tight"]]


@pytest.mark.parametrize("key", RANEF_KEYS)
def test_conditional_modes_and_variances(fits, key):
    r = REF[key]["tight"]
    ours = fits[key]["tight"]
    assert set(ours["ranef"]) == set(r["ranef"])
    for factor, ref in r["ranef"].items():
        mine = ours["ranef"][factor].reindex(ref["levels"])[ref["names"]].to_numpy()
        vals = np.array(ref["values"], dtype=float).reshape(mine.shape)
        np.testing.assert_allclose(mine, vals, rtol=0, atol=1e-4 * np.abs(vals).max())
        pos = ours["ranef"][factor].index.get_indexer(ref["levels"])
        assert len(ours["condvar"][factor]) == len(r["condvar"][factor])
        for cv_ref in r["condvar"][factor]:        # lme4's term order
            cv_mine = ours["condvar"][factor][tuple(cv_ref["names"])]
            q = len(cv_ref["names"])
            cov = np.array(cv_ref["cov"], dtype=float).reshape(-1, q, q)
            # relative to the variances: off-diagonal entries near 0 compare on the
            # correlation scale
            d = np.sqrt(np.einsum("lii->li", cov))
            bound = 1e-4 * d[:, :, None] * d[:, None, :]
            assert np.all(np.abs(cv_mine[pos] - cov) <= bound)


# ------------------------------------------------- engine at lme4's optimum
@pytest.mark.parametrize("key", KEYS)
def test_engine_reproduces_lme4_at_its_theta(key):
    """At lme4's own theta the engine gives lme4's deviance, beta, SEs, sigma, modes."""
    from sm_hlm.engine import BlockedDeviance, theta_from_lme4

    r = REF[key]
    case, reml = _case_of(key)
    df = load_case(case)
    terms = engine_terms(df, case.random)
    dev = BlockedDeviance(terms, design(df, case.fixed), df[case.response].to_numpy(float),
                          reml=reml)
    theta = theta_from_lme4(_vec(r["theta"], r["theta_names"]), dev.layout)
    sol = solve_at(dev, theta, condvar=False)
    assert sol.deviance == pytest.approx(r["deviance"], rel=1e-12, abs=1e-8)
    np.testing.assert_allclose(sol.beta, _vec(r["fixef"], r["fixef_names"]), rtol=1e-8,
                               atol=1e-10)
    np.testing.assert_allclose(np.sqrt(np.diag(sol.cov_beta)), r["se"], rtol=1e-7)
    assert np.sqrt(sol.scale) == pytest.approx(r["sigma"], rel=1e-8)
    if "ranef" not in r:
        return
    for k, t in enumerate(terms):
        ref = r["ranef"][t.factor]
        pos = pd.Index(level_labels(df, t)).get_indexer(ref["levels"])
        assert np.all(pos >= 0)
        vals = np.array(ref["values"], dtype=float)[:, [ref["names"].index(n) for n in t.names]]
        np.testing.assert_allclose(sol.b[k][pos], vals, rtol=1e-6,
                                   atol=1e-8 * np.abs(vals).max())


# ------------------------------------------------------ accuracy figures
def deviations(fits: dict) -> pd.DataFrame:
    """Largest deviations from lme4 per reference (the numbers behind the tests).

    Columns: our log-likelihood minus lme4's (default fits; tight fits); the largest
    relative deviation of fixed effects from lme4's tight refit (our default fit,
    lme4's default fit, our tight fit); of the SEs and the largest deviation of theta
    relative to max|theta| (our tight fit against lme4's tight refit); lme4's
    convergence messages.
    """
    rows = []
    for key in KEYS:
        r, d, t = REF[key], fits[key]["default"], fits[key]["tight"]
        names = r["fixef_names"]
        beta, se = _vec(r["tight"]["fixef"], names), np.asarray(r["tight"]["se"])
        theta = _vec(r["tight"]["theta"], r["theta_names"])

        def rel(a, b):
            return float(np.max(np.abs(np.asarray(a) - b) / np.abs(b)))
        rows.append({
            "case": key, "nobs": r["nobs"],
            "llf - lme4 (default)": f"{d['llf'] - r['logLik']:+.1e}",
            "llf - lme4 (tight)": f"{t['llf'] - r['tight']['logLik']:+.1e}",
            "lme4 tight - lme4 default": f"{r['tight']['logLik'] - r['logLik']:+.1e}",
            "fixef rel (default)": f"{rel(d['fe_params'], beta):.1e}",
            "lme4 default fixef rel": f"{rel(_vec(r['fixef'], names), beta):.1e}",
            "fixef rel (tight)": f"{rel(t['fe_params'], beta):.1e}",
            "SE rel (tight)": f"{rel(t['bse_fe'], se):.1e}",
            "theta (tight)": f"{np.max(np.abs(t['theta_lme4'] - theta)) / np.abs(theta).max():.1e}",
            "lme4 messages": "; ".join(r["conv_messages"]) or "-"})
    return pd.DataFrame(rows)


if __name__ == "__main__":      # python -m tests.test_multilevel_refs: the figures
    from benchmarks.common import markdown_table

    print(markdown_table(deviations(fit_references())))
