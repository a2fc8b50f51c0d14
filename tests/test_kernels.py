"""Batched kernels against dense numpy, the profiled deviance against the notes' dense likelihood."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sm_hlm
from sm_hlm.engine import linalg
from sm_hlm.engine.deviance import LOG2PI
from sm_hlm.simulate import simulate_mixed


def _spd_stack(rng, q, m):
    A = rng.normal(size=(m, q, q))
    M = A @ A.transpose(0, 2, 1) + q * np.eye(q)
    return np.moveaxis(M, 0, 2).copy(), M


@pytest.mark.parametrize("q", [1, 2, 3, 4, 5, 7])
def test_batched_cholesky_and_solves(q):
    rng = np.random.default_rng(q)
    Mq, M = _spd_stack(rng, q, 11)
    L = linalg.batched_cholesky(Mq)
    np.testing.assert_allclose(np.moveaxis(L, 2, 0), np.linalg.cholesky(M), atol=1e-12)
    B = rng.normal(size=(q, 3, 11))
    X = linalg.batched_forward_solve(L, B)
    np.testing.assert_allclose(np.einsum("ikm,krm->irm", L, X), B, atol=1e-10)
    Y = linalg.batched_back_solve(L, B)
    np.testing.assert_allclose(np.einsum("kim,krm->irm", L, Y), B, atol=1e-10)
    XT = linalg.batched_forward_solve_T(L, B.transpose(1, 0, 2).copy())
    np.testing.assert_allclose(XT.transpose(1, 0, 2), X, atol=1e-12)
    Li = linalg.batched_inverse_lower(L)
    np.testing.assert_allclose(np.einsum("ikm,kjm->ijm", Li, L),
                               np.broadcast_to(np.eye(q)[:, :, None], L.shape), atol=1e-10)


def test_group_crossprod_matches_dense():
    rng = np.random.default_rng(3)
    sizes = np.array([1, 4, 2, 7])
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    A = rng.normal(size=(sizes.sum(), 2))
    B = rng.normal(size=(sizes.sum(), 3))
    out = linalg.group_crossprod(A, B, starts)
    for j, (s, n) in enumerate(zip(starts, sizes)):
        np.testing.assert_allclose(out[:, :, j], A[s:s + n].T @ B[s:s + n], atol=1e-12)


def test_sequential_rank_cholesky_drops_aliased_columns_in_order():
    x = np.array([[1.0, 2.0, 2.0], [1.0, 3.0, 3.0], [1.0, 5.0, 5.0]])
    M = (x.T @ x)[:, :, None]
    _, kept = linalg.sequential_rank_cholesky(M, tol=1e-12)
    assert kept[:, 0].tolist() == [True, True, False]


@pytest.fixture(scope="module")
def slope_model():
    d = simulate_mixed(n_groups=40, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                       re_names=["Intercept", "x"], cov_re=[[1.0, 0.3], [0.3, 0.5]], scale=1.0,
                       seed=7)
    return sm_hlm.HLM.from_formula("y ~ x + (x | group)", d)


@pytest.mark.parametrize("theta", [[1.0, 0.0, 1.0], [0.4, -0.2, 0.7], [2.0, 0.5, 0.0]])
def test_profiled_deviance_equals_dense_likelihood(slope_model, theta):
    """The fast ML deviance at theta equals -2 x the notes' group-by-group dmvnorm log-likelihood
    at the profiled beta and sigma^2."""
    theta = np.array(theta)
    dev = slope_model.deviance_function(reml=False)
    t = dev.terms(theta)
    scale = dev.scale(t)
    cov_re = slope_model.re_design.cov_re(theta, scale)
    from sm_hlm.groupwise import marginal_loglike_dense
    dense = marginal_loglike_dense(slope_model, t.beta, cov_re, scale)
    assert dev(theta) == pytest.approx(-2 * dense, rel=1e-10)
    assert dev.from_terms(t) == pytest.approx(dev(theta), rel=1e-12)


def test_reml_criterion_equals_dense_formula(slope_model):
    """REML = ML deviance + log|X'V^-1X| - p log(2 pi sigma^2), all dense."""
    theta = np.array([0.6, 0.1, 0.4])
    m = slope_model
    dev = m.deviance_function(reml=True)
    t = dev.terms(theta)
    scale = dev.scale(t)
    cov_re = m.re_design.cov_re(theta, scale)
    from sm_hlm.groupwise import marginal_loglike_dense
    ll = marginal_loglike_dense(m, t.beta, cov_re, scale)
    XtVX = np.zeros((m.k_fe, m.k_fe))
    for j in range(m.n_groups):
        rows = m.group_codes == j
        Z, X = m.exog_re[rows], m.exog[rows]
        V = Z @ cov_re @ Z.T + scale * np.eye(rows.sum())
        XtVX += X.T @ np.linalg.solve(V, X)
    reml = -2 * ll + np.linalg.slogdet(XtVX)[1] - m.k_fe * (LOG2PI)
    assert dev(theta) == pytest.approx(reml, rel=1e-10)


def test_fast_and_general_paths_agree(slope_model):
    dev = slope_model.deviance_function(reml=True)
    theta = np.array([0.7, -0.3, 0.2])
    fused = dev(theta)          # the fused q <= 2 kernel (sm_hlm.engine.small)
    dev._small_ok = False
    first = dev(theta)          # general path (pair products not built yet)
    fast = dev(theta)           # pair-product path
    assert dev._S is not None
    assert fast == pytest.approx(first, rel=1e-12)
    assert fused == pytest.approx(first, rel=1e-12)
    dev._S, dev._use_pairs = None, False
    assert dev(theta) == pytest.approx(fast, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-2, 2), min_size=6, max_size=6))
def test_three_effect_fast_path_matches_terms(vals):
    d = simulate_mixed(n_groups=30, mean_group_size=8, fe_params={"Intercept": 0, "x": 1, "z": 1},
                       re_names=["Intercept", "x", "z"], seed=11)
    m = sm_hlm.HLM.from_formula("y ~ x + z + (x + z | group)", d)
    dev = m.deviance_function(reml=False)
    theta = np.array(vals)
    theta[[0, 3, 5]] = np.abs(theta[[0, 3, 5]])
    t = dev.terms(theta)
    assert dev(theta) == pytest.approx(dev.from_terms(t), rel=1e-10)


def test_fit_reaches_the_optimum(slope_model):
    """No direction lowers the deviance: a fine grid around the optimum is never better."""
    res = slope_model.fit(reml=False)
    dev = slope_model.deviance_function(reml=False)
    best = dev(res.theta)
    rng = np.random.default_rng(0)
    for _ in range(200):
        trial = res.theta + rng.normal(scale=1e-3, size=3)
        trial[[0, 2]] = np.abs(trial[[0, 2]])
        assert dev(trial) >= best - 1e-8
    rec = res.optimizer
    assert rec.converged and rec.n_evals > 0
    assert rec.fun_end == pytest.approx(best)
    assert np.all(np.abs(rec.gradient) < 1e-2)


def test_sequential_rank_cholesky_factor_of_kept_columns():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(12, 3))
    X = np.column_stack([x[:, 0], x[:, 1], x[:, 0] + x[:, 1], x[:, 2]])   # column 2 aliased
    M = (X.T @ X)[:, :, None]
    L, kept = linalg.sequential_rank_cholesky(M)
    assert kept[:, 0].tolist() == [True, True, False, True]
    keep = kept[:, 0]
    np.testing.assert_allclose(L[np.ix_(keep, keep)][:, :, 0],
                               np.linalg.cholesky(M[np.ix_(keep, keep)][:, :, 0]), atol=1e-10)
    np.testing.assert_array_equal(L[2, :, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(L[:, 2, 0], [0, 0, 1, 0])


def test_optimizer_record_end_point_matches_its_value():
    from sm_hlm.engine.optimizer import minimize_bobyqa

    rec = minimize_bobyqa(lambda x: float((x[0] - 1) ** 2 + 10 * (x[1] + 0.5) ** 2),
                          np.array([3.0, 3.0]), np.array([-np.inf, -np.inf]))
    assert rec.converged
    np.testing.assert_allclose(rec.end, [1.0, -0.5], atol=1e-4)
    assert rec.fun_end == pytest.approx((rec.end[0] - 1) ** 2 + 10 * (rec.end[1] + 0.5) ** 2)
