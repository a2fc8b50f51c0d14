"""Issue 7's properties: no silent false optimum, an honest llf, invariances.

(a) A dozen fuzz cases (validation/fuzz/cases.py) across categories against
    their lme4 fits (validation/r/fuzz_lme4.json, written by
    validation/r/fuzz_lme4.R): sm_hlm's logLik is at least lme4's minus 1e-6,
    or sm_hlm raised a ConvergenceWarning.
(b) Properties under hypothesis, on data from the package's seeded simulator
    (sm_hlm.simulate.simulate_mixed):
    - the reported ``llf`` is the log-likelihood (REML criterion) at the
      reported estimates, computed independently and stably
      (validation.fuzz.oracle), to 1e-8 relative;
    - shifting and scaling a predictor (the model has an intercept; a random
      slope's block is a full covariance for shifts) leaves the ML logLik
      unchanged and changes the REML logLik by exactly -log|c| (the REML
      criterion has log|X'V^-1X|, and det(X T) = c det(X)), to 1e-6; the
      fitted values are unchanged to 1e-6 relative;
    - the response c y + a: the ML logLik changes by -n log|c|, the REML one
      by -(n - p) log|c| (the density of c y, resp. of n - p error
      contrasts), to 1e-6; the fitted values become c f + a.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sm_hlm.exceptions import ConvergenceWarning
from sm_hlm.formula.api import hlm
from sm_hlm.simulate import simulate_mixed
from validation.fuzz.cases import CASES, checksum_matches, get_case
from validation.fuzz.oracle import oracle_loglike, oracle_loglike_results
from validation.fuzz.report import lme4_estimates

from .conftest import load_json

REF = load_json("fuzz_lme4.json")

# ------------------------------------------------------------ (a) fuzz subset
#: fast cases across the categories (each fits in well under a second); with the
#: optimiser of 2026-11-28, near_singular_9 (REML), huge_ratio_8 (REML) and
#: large_pred_three (ML) ended below lme4 without a ConvergenceWarning
SUBSET = [
    ("groups_slope_m3", False),
    ("singletons_slope_s60_m400", True),
    ("unbalanced_giant_three", False),
    ("corr_slope_2_m50_rho-0.95", True),
    ("indep_slope_2", False),
    ("three_corr_6_m80", False),
    ("four_corr_1_m200", True),
    ("factor_slope_2_m100", True),
    ("near_singular_9", True),
    ("huge_ratio_8", True),
    ("large_pred_three", False),
    ("collinear_5_eps1e-05", True),
    ("small_n_5", False),
    ("combined_4", False),
]


def _fit(formula: str, data: pd.DataFrame, reml: bool):
    """Fit, returning the result and whether a ConvergenceWarning was raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hlm(formula, data).fit(reml=reml)
    return res, any(issubclass(w.category, ConvergenceWarning) for w in caught)


@pytest.mark.parametrize("name,reml", SUBSET,
                         ids=[f"{n}-{'REML' if r else 'ML'}" for n, r in SUBSET])
def test_fuzz_case_not_silently_below_lme4(name: str, reml: bool) -> None:
    case = get_case(name)
    ref = REF[f"{name}_{'REML' if reml else 'ML'}"]
    data = case.data()
    assert checksum_matches(ref["checksum"], data), "the fuzz generator drifted"
    assert ref.get("error") is None
    res, warned = _fit(case.formula, data, reml)
    assert res.llf >= ref["logLik"] - 1e-6 or warned, (
        f"logLik {res.llf:.8f} is {ref['logLik'] - res.llf:.3e} below lme4's "
        f"{ref['logLik']:.8f} without a ConvergenceWarning")


def test_subset_spans_categories() -> None:
    cats = {get_case(n).category for n, _ in SUBSET}
    assert len(cats) >= 12


def test_fuzz_data_have_their_stored_checksums() -> None:
    """Every case's data set is the one lme4 fitted (the generator has not drifted)."""
    drifted = [c.name for c in CASES
               if not checksum_matches(REF[f"{c.name}_ML"]["checksum"], c.data())]
    assert not drifted


ORACLE_CASES = [k for k, r in REF.items() if r.get("error") is None
                and (r["category"] in ("large_predictor", "huge_ratio")
                     or (r["name"], r["REML"]) in set(SUBSET))]


@pytest.mark.parametrize("key", ORACLE_CASES)
def test_oracle_reproduces_lme4_at_its_estimates(key: str) -> None:
    """The oracle, at lme4's theta, beta and sigma, gives lme4's logLik (REML criterion)."""
    ref = REF[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hlm(ref["formula"], get_case(ref["name"]).data())
    est = lme4_estimates(model, ref)
    assert est is not None, "lme4's theta/beta names do not map onto the model's"
    theta, beta, scale = est
    ll = oracle_loglike(model, theta, beta, scale, reml=ref["REML"])
    assert abs(ll - ref["logLik"]) <= 1e-8 * abs(ref["logLik"]), (
        f"lme4 - oracle = {ref['logLik'] - ll:+.3e}")


# --------------------------------------------------------- (b) properties
MODELS = {
    "ri": ("y ~ x + (1 | g)", ["Intercept"]),
    "slope": ("y ~ x + (x | g)", ["Intercept", "x"]),
    "indep": ("y ~ x + (x || g)", ["Intercept", "x"]),
    "three": ("y ~ x + z + (x + z | g)", ["Intercept", "x", "z"]),
}


@st.composite
def datasets(draw: st.DrawFn) -> dict:
    """Parameters of a seeded simulate_mixed data set: a model kind, 8-60
    groups, SDs 1e-3 to 1e3 times the residual's, correlations in
    [-0.9, 0.9], and x shifted by up to 1e5 (an exact reparametrisation with
    an intercept)."""
    kind = draw(st.sampled_from(tuple(MODELS)))
    q = len(MODELS[kind][1])
    return {"kind": kind,
            "log_sd": tuple(draw(st.integers(-3, 3)) for _ in range(q)),
            "rho": draw(st.sampled_from([-0.9, -0.3, 0.0, 0.5, 0.9])) if kind != "indep" else 0.0,
            "n_groups": draw(st.integers(8, 60)), "mean_size": draw(st.integers(3, 12)),
            "seed": draw(st.integers(0, 2 ** 31 - 1)),
            "x_shift": draw(st.sampled_from([0.0, 1e2, 1e4, 1e5]))}


def make_data(p: dict) -> tuple[str, pd.DataFrame]:
    """The formula and the data of :func:`datasets`' parameters."""
    formula, re_names = MODELS[p["kind"]]
    q = len(re_names)
    sd = 10.0 ** np.asarray(p["log_sd"], dtype=float)
    corr = np.full((q, q), p["rho"])
    np.fill_diagonal(corr, 1.0)
    fe = ({"Intercept": 1.0, "x": 0.5, "z": -0.3} if p["kind"] == "three"
          else {"Intercept": 1.0, "x": 0.5})
    # groups of at least q + 1 rows: n > q m, which lme4 requires too
    d = simulate_mixed(n_groups=p["n_groups"], mean_group_size=max(p["mean_size"], q + 1),
                       fe_params=fe, re_names=re_names, cov_re=corr * np.outer(sd, sd),
                       scale=1.0, seed=p["seed"], min_group_size=q + 1, group_col="g",
                       response="y")
    d["x"] = p["x_shift"] + d["x"]
    return formula, d


#: no shrinking: each example costs two fits, and the first failure already says how much
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow])


def _fit_quiet(formula: str, data: pd.DataFrame, reml: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hlm(formula, data).fit(reml=reml)


@PROPERTY
@given(case=datasets(), reml=st.booleans())
def test_llf_is_the_loglike_of_the_estimates(case: dict, reml: bool) -> None:
    formula, d = make_data(case)
    res = _fit_quiet(formula, d, reml)
    oracle = oracle_loglike_results(res)
    assert abs(res.llf - oracle) <= 1e-8 * max(1.0, abs(oracle)), (
        f"llf {res.llf!r} but the log-likelihood at the reported estimates is {oracle!r} "
        f"(difference {res.llf - oracle:+.3e})")


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@PROPERTY
@given(case=datasets(), reml=st.booleans(),
       shift=st.sampled_from([-1e5, -37.5, 0.0, 1e3, 1e5]), log_c=st.integers(-3, 3),
       negative=st.booleans())
def test_predictor_shift_scale_invariance(case: dict, reml: bool, shift: float, log_c: int,
                                          negative: bool) -> None:
    formula, d = make_data(case)
    if "||" in formula:
        shift = 0.0     # a shift is no reparametrisation of a diagonal covariance
    c = (-1.0 if negative else 1.0) * 10.0 ** log_c
    d2 = d.assign(x=(d["x"] + shift) * c)
    r1, r2 = _fit_quiet(formula, d, reml), _fit_quiet(formula, d2, reml)
    expected = r1.llf - (np.log(abs(c)) if reml else 0.0)
    assert abs(r2.llf - expected) <= 1e-6, (
        f"x -> (x + {shift:g}) * {c:g}: logLik {r2.llf!r}, expected {expected!r} "
        f"(difference {r2.llf - expected:+.3e})")
    rel = _rel_diff(np.asarray(r2.fittedvalues), np.asarray(r1.fittedvalues))
    assert rel <= 1e-6, f"fitted values moved by {rel:.3e} relative"


@PROPERTY
@given(case=datasets(), reml=st.booleans(), log_c=st.integers(-3, 3), negative=st.booleans(),
       shift=st.sampled_from([0.0, 1e4]))
def test_response_scale_invariance(case: dict, reml: bool, log_c: int, negative: bool,
                                   shift: float) -> None:
    formula, d = make_data(case)
    c = (-1.0 if negative else 1.0) * 10.0 ** log_c
    d2 = d.assign(y=c * d["y"] + shift)
    r1, r2 = _fit_quiet(formula, d, reml), _fit_quiet(formula, d2, reml)
    n, p = len(d), r1.k_fe
    expected = r1.llf - (n - p if reml else n) * np.log(abs(c))
    assert abs(r2.llf - expected) <= 1e-6, (
        f"y -> {c:g} y + {shift:g}: logLik {r2.llf!r}, expected {expected!r} "
        f"(difference {r2.llf - expected:+.3e})")
    f1 = c * np.asarray(r1.fittedvalues) + shift
    rel = _rel_diff(np.asarray(r2.fittedvalues), f1)
    assert rel <= 1e-6, f"fitted values moved by {rel:.3e} relative"
