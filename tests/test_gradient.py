"""The analytic gradient of the profiled deviance against numerical differentiation,
and the stable deviance against the dense likelihood in hard numerical settings."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import sm_hlm
from sm_hlm.engine.numdiff import jacobian_richardson
from sm_hlm.simulate import simulate_mixed

CASES = {
    "intercept": ("y ~ x + (1 | group)", ("Intercept",), [[1.0]]),
    "slope": ("y ~ x + (x | group)", ("Intercept", "x"), [[1.0, 0.3], [0.3, 0.5]]),
    "indep": ("y ~ x + (x || group)", ("Intercept", "x"), [[1.0, 0.0], [0.0, 0.5]]),
    "three": ("y ~ x + z + (x + z | group)", ("Intercept", "x", "z"),
              [[1.0, 0.2, 0.1], [0.2, 0.6, 0.0], [0.1, 0.0, 0.4]]),
}


def _data(re_names, cov, seed, shift=0.0, scale=1.0):
    d = simulate_mixed(n_groups=60, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5,
                                                                   "z": -0.3},
                       re_names=re_names, cov_re=cov, seed=seed)
    return d.assign(x=d.x * scale + shift)


def _model(name, shift=0.0, scale=1.0, seed=1):
    formula, re_names, cov = CASES[name]
    return sm_hlm.HLM.from_formula(formula, _data(re_names, cov, seed, shift, scale))


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_numerical(name, reml):
    mod = _model(name)
    dev = mod.deviance_function(reml=reml)
    rng = np.random.default_rng(7)
    rd = mod.re_design
    for _ in range(3):
        theta = rd.theta_start() + rng.uniform(0.05, 0.8, rd.n_theta) * np.where(
            rd.theta_lower == 0, 1.0, rng.choice([-1.0, 1.0], rd.n_theta))
        g = dev.gradient(theta)
        num = jacobian_richardson(lambda t: np.array([dev(t)]), theta)[0]
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-6 * np.abs(num).max())
        # working coordinates too
        tw = dev.theta_to_work(theta)
        f, gw = dev.work_gradient(tw)
        assert f == pytest.approx(dev(theta), rel=1e-12)
        numw = jacobian_richardson(lambda t: np.array([dev.work_deviance(t)]), tw)[0]
        np.testing.assert_allclose(gw, numw, rtol=1e-6, atol=1e-6 * np.abs(numw).max())


@pytest.mark.parametrize("name", ["slope", "three"])
def test_work_parametrisation_round_trip(name):
    mod = _model(name, shift=1e5, scale=30.0)
    dev = mod.deviance_function(reml=False)
    rd = mod.re_design
    theta = rd.theta_start() * 0.7 + np.where(rd.theta_lower == 0, 0.0, 0.1)
    tw = dev.theta_to_work(theta)
    np.testing.assert_allclose(dev.theta_from_work(tw), theta, rtol=1e-9, atol=1e-12)
    assert dev.work_deviance(tw) == pytest.approx(dev(theta), rel=1e-10)


def test_loglik_exact_with_large_uncorrelated_slope():
    """(x || g) with x around 1e5 (near-collinear with the intercept within groups):
    the log-likelihood is the dense one computed in 40-digit arithmetic."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    mod = _model("indep", shift=1e5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        res = mod.fit(reml=False)
    fit = res.fit_result
    ll = mp.mpf(0)
    for j in range(mod.n_groups):
        idx = np.flatnonzero(mod.group_codes == j)
        Zj = mp.matrix(mod.exog_re[idx].tolist())
        r = mp.matrix([mp.mpf(mod.endog[i]) - mp.fsum(mp.mpf(a) * mp.mpf(b) for a, b in
                                                        zip(mod.exog[i], fit.fe_params))
                       for i in idx])
        V = Zj * mp.matrix(fit.cov_re.tolist()) * Zj.T + mp.mpf(fit.scale) * mp.eye(len(idx))
        ll += -0.5 * (len(idx) * mp.log(2 * mp.pi) + mp.log(mp.det(V))
                      + (r.T * mp.inverse(V) * r)[0])
    assert res.llf == pytest.approx(float(ll), rel=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_loglik_is_dense_loglik_with_large_predictors(name):
    """A predictor around 1e5: the reported logLik is the dense log-likelihood at the
    reported estimates, and equals the fit with the predictor centred (an exact
    reparametrisation)."""
    # shifting x is an exact reparametrisation unless x has an uncorrelated random slope
    big = _model(name, shift=1e5 if name != "indep" else 0.0, scale=1.0 if name != "indep" else 1e5)
    ref = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        rb, rr = big.fit(reml=False), ref.fit(reml=False)
    assert rb.llf == pytest.approx(rb.loglike_dense(), rel=1e-8)
    assert rb.llf == pytest.approx(rr.llf, abs=1e-6)
    np.testing.assert_allclose(rb.fittedvalues, rr.fittedvalues, rtol=1e-6)
    assert rb.converged and rr.converged


def test_reml_with_a_predictor_around_1e5_is_exact():
    """The fuzz case where lme4's REML criterion loses digits (x = 1e5 + N(0, 1)): sm_hlm's
    REML log-likelihood is the one computed in 50-digit arithmetic at its estimates, and at
    lme4's theta it is 1.3e-5 below lme4's printed value, which is lme4's rounding."""
    mp = pytest.importorskip("mpmath")
    from validation.fuzz.cases import get_case
    mp.mp.dps = 50
    d = get_case("large_pred_ri").data()
    res = sm_hlm.HLM.from_formula("y ~ x + (1 | g)", d).fit(reml=True)

    def reml_loglik(theta: float) -> float:
        th = mp.mpf(theta)
        xtvx, xtvy, ytvy, logdet = mp.matrix(2, 2), mp.matrix(2, 1), mp.mpf(0), mp.mpf(0)
        for _, grp in d.groupby("g"):
            nj = len(grp)
            c = th ** 2 / (1 + nj * th ** 2)          # V_j^-1 = I - c 11'
            logdet += mp.log(1 + nj * th ** 2)
            cols = [[mp.mpf(1)] * nj, [mp.mpf(v) for v in grp.x]]
            y = [mp.mpf(v) for v in grp.y]
            sums, sy = [mp.fsum(col) for col in cols], mp.fsum(y)
            for a in range(2):
                for b in range(2):
                    xtvx[a, b] += (mp.fsum(u * v for u, v in zip(cols[a], cols[b]))
                                   - c * sums[a] * sums[b])
                xtvy[a] += mp.fsum(u * v for u, v in zip(cols[a], y)) - c * sums[a] * sy
            ytvy += mp.fsum(v * v for v in y) - c * sy * sy
        n, p = len(d), 2
        pw = ytvy - (xtvy.T * mp.lu_solve(xtvx, xtvy))[0]
        dev = logdet + mp.log(mp.det(xtvx)) + (n - p) * (1 + mp.log(2 * mp.pi * pw / (n - p)))
        return float(-dev / 2)

    assert res.llf == pytest.approx(reml_loglik(res.theta[0]), abs=1e-9)
    assert res.llf >= reml_loglik(0.9195344760398033)     # lme4's theta (fuzz_lme4.json)
