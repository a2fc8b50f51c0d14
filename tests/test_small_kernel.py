"""The fused q <= 2 kernel (sm_hlm.engine.small) against the general batched kernels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM
from sm_hlm.simulate import simulate_nels

FORMULAS = ["mscore ~ flp*ses + (ses|school)", "mscore ~ flp + (1|school)",
            "mscore ~ 0 + ses + (ses|school)", "mscore ~ ses + (ses||school)",
            "mscore ~ 0 + (1|school)"]


@pytest.fixture(scope="module")
def data():
    return simulate_nels(n_schools=150, seed=21)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("form", ["compiled", "pair-products", "H"])
def test_small_kernel_matches_general_kernels(data, formula, reml, form, monkeypatch) -> None:
    """The three forms of A (the compiled loop; pair products of G_j; H_j = L_j^{-1} G_j)
    against the general kernels, with the gradient."""
    import sm_hlm.engine.small as small
    from sm_hlm.engine import compiled
    if form == "compiled":
        if compiled.csmall() is None:
            pytest.skip(f"the compiled small kernel is {compiled.status()['_csmall']}")
    else:
        monkeypatch.setattr(small, "COMPILED_MAX_R", 0)
    if form == "H":
        monkeypatch.setattr(small, "PAIR_LIMIT", 0)
    model = HLM.from_formula(formula, data)
    dev = model.deviance_function(reml=reml)
    assert dev._small_ok
    rng = np.random.default_rng(4)
    x0 = dev.moment_start()
    for scale in (0.3, 1.0, 2.5):
        x = x0 * scale + 0.05 * rng.standard_normal(x0.shape) * (x0 != 0)
        x = np.abs(x)
        dev._small_ok = True
        d1, g1 = dev.work_gradient(x)
        v1 = dev.work_deviance(x)
        t1 = dev.terms(dev.theta_from_work(x))
        dev._small_ok = False
        d2, g2 = dev.work_gradient(x)
        v2 = dev.work_deviance(x)
        t2 = dev.terms(dev.theta_from_work(x))
        dev._small_ok = True
        assert dev._small.compiled == (form == "compiled")
        assert (dev._small.pairs is not None) == (form == "pair-products")
        assert d1 == pytest.approx(d2, rel=1e-13, abs=1e-9)
        assert v1 == pytest.approx(v2, rel=1e-13, abs=1e-9)
        np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9 * np.max(np.abs(g2)))
        np.testing.assert_allclose(t1.beta, t2.beta, rtol=1e-11, atol=1e-12)
        assert t1.logdet_L == pytest.approx(t2.logdet_L, rel=1e-12)


def test_small_kernel_rejects_larger_q() -> None:
    from sm_hlm.engine.small import SmallKernel
    with pytest.raises(ValueError, match="q = 3"):
        SmallKernel(np.ones((3, 3, 4)), np.ones((2, 3, 4)), np.eye(2))


def test_deviance_is_infinite_far_beyond_any_variance_ratio(data) -> None:
    """|theta~| > 1e7 (sigma^2 -> 0 relative to a random effect): no value, so that an
    optimiser following a deviance that decreases without end stops and says so."""
    dev = HLM.from_formula("mscore ~ ses + (1|school)", data).deviance_function(reml=False)
    assert np.isfinite(dev.work_deviance(np.array([1e6])))
    assert dev.work_deviance(np.array([2e7])) == np.inf
    assert dev.work_gradient(np.array([2e7]))[0] == np.inf


@pytest.mark.parametrize("formula", FORMULAS[:4])
@pytest.mark.parametrize("kernels", ["compiled", "numpy"])
def test_small_conditional_modes_match_general_path(data, formula, kernels,
                                                    monkeypatch) -> None:
    """BLUPs and their covariances from the closed-form K_j^{-1} (the compiled pass and
    the numpy form) and from the general path."""
    from sm_hlm.engine import compiled
    if kernels == "numpy":
        monkeypatch.setattr(compiled, "_DISABLED", True)
    elif compiled.csmall() is None:
        pytest.skip(f"the compiled small kernel is {compiled.status()['_csmall']}")
    model = HLM.from_formula(formula, data)
    dev = model.deviance_function(reml=True)
    theta = dev.theta_from_work(np.abs(dev.moment_start()) * 1.3)
    beta = dev.terms(theta).beta
    b1, c1 = dev.conditional_modes(theta, beta)
    assert dev._small.compiled == (kernels == "compiled")
    dev._small_ok = False
    b2, c2 = dev.conditional_modes(theta, beta)
    np.testing.assert_allclose(b1, b2, rtol=1e-12, atol=1e-12 * np.max(np.abs(b2)))
    np.testing.assert_allclose(c1, c2, rtol=1e-12, atol=1e-12 * np.max(np.abs(c2)))


@pytest.mark.parametrize("formula", FORMULAS[:4])
@pytest.mark.parametrize("kernels", ["compiled", "numpy"])
def test_residual_quadratic_against_dense_marginal_covariance(data, formula, kernels,
                                                              monkeypatch) -> None:
    """r'V^{-1}r and log|V| (V = I + Z Lambda Lambda' Z', per group) from the row
    residuals, against dense per-group algebra (the compiled pass and the numpy form)."""
    from sm_hlm.engine import compiled
    from sm_hlm.engine.deviance import residual_quadratic
    if kernels == "numpy":
        monkeypatch.setattr(compiled, "_DISABLED", True)
    elif compiled.csmall() is None:
        pytest.skip(f"the compiled small kernel is {compiled.status()['_csmall']}")
    model = HLM.from_formula(formula, data)
    rd = model.re_design
    rng = np.random.default_rng(7)
    theta = np.abs(rd.theta_start() * (0.5 + rng.random(rd.n_theta)))
    theta[rd.theta_lower == -np.inf] = 0.3 * rng.standard_normal((rd.theta_lower == -np.inf).sum())
    r = model._sorted_rows(model.endog - model.exog @ rng.standard_normal(model.k_fe))
    lam_t = model._reparam.Tinv @ rd.lambda_(theta)
    quad, logdet = residual_quadratic(r, model._work_q, model._starts, model._work.root, lam_t)
    lam = rd.lambda_(theta)
    Z = model._sorted_rows(model.exog_re) if model.exog_re.ndim == 2 else None
    bounds = np.append(model._starts, len(r))
    q_ref = l_ref = 0.0
    for a, b in zip(bounds[:-1], bounds[1:]):
        Zj = Z[a:b] @ lam
        V = np.eye(b - a) + Zj @ Zj.T
        q_ref += r[a:b] @ np.linalg.solve(V, r[a:b])
        l_ref += np.linalg.slogdet(V)[1]
    assert quad == pytest.approx(q_ref, rel=1e-11)
    assert logdet == pytest.approx(l_ref, rel=1e-11)


def test_theta_and_gradient_and_lower_factor(data) -> None:
    """The end point's theta and gradient in original coordinates from the working
    point's inner matrix, against :meth:`gradient` at that theta; the closed-form
    2 x 2 LQ factor against numpy's QR."""
    model = HLM.from_formula(FORMULAS[0], data)
    dev = model.deviance_function(reml=False)
    x = np.abs(dev.moment_start()) * 1.7 + np.array([0.0, 0.2, 0.0])
    theta, g = dev.theta_and_gradient(x)
    np.testing.assert_allclose(theta, dev.theta_from_work(x), rtol=0, atol=0)
    np.testing.assert_allclose(g, dev.gradient(theta), rtol=1e-10, atol=1e-10 * np.max(np.abs(g)))
    rng = np.random.default_rng(3)
    for M in [rng.standard_normal((2, 2)) for _ in range(20)] + [np.array([[0.0, 0.0], [1.0, 2.0]]),
                                                               np.array([[3.0, 0.0], [0.0, 0.0]])]:
        L = dev._lower_factor(M)
        assert L[0, 1] == 0.0 and np.all(np.diag(L) >= 0)
        np.testing.assert_allclose(L @ L.T, M @ M.T, rtol=1e-13, atol=1e-13)
        Q, R = np.linalg.qr(M.T)
        ref = R.T * np.where(np.diag(R) < 0, -1.0, 1.0)[None, :]
        if abs(M[0] @ M[0]) > 0:
            np.testing.assert_allclose(L, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("formula", FORMULAS[:4])
@pytest.mark.parametrize("kernels", ["compiled", "numpy"])
def test_moment_start_closed_forms_match_dense_group_algebra(formula, kernels,
                                                             monkeypatch) -> None:
    """The q <= 2 moment start (closed forms on every group, rank-deficient groups
    weighted out; the compiled pass and the numpy form) against per-group dense algebra
    on the full-rank groups only."""
    from sm_hlm.engine import compiled
    if kernels == "numpy":
        monkeypatch.setattr(compiled, "_DISABLED", True)
    elif compiled.csmall() is None:
        pytest.skip(f"the compiled small kernel is {compiled.status()['_csmall']}")
    data = simulate_nels(n_schools=80, seed=5)
    single = data.groupby("school").head(1).iloc[:6]        # six one-row schools
    single = single.assign(school=single.school + 10_000)
    model = HLM.from_formula(formula, pd.concat([data, single], ignore_index=True))
    dev = model.deviance_function(reml=False)
    F, G, p = dev._F, dev._G, dev._p
    q = F.shape[0]
    full = np.all(np.diagonal(F, axis1=0, axis2=1) > 0, axis=1)
    assert (~full).sum() == (6 if q == 2 else 0)
    w = dev.work
    beta = np.linalg.solve(w.WtW[:p, :p], w.WtW[:p, p]) if p else np.zeros(0)
    u = np.append(-beta, 1.0)
    bs, sinv = [], []
    for j in np.flatnonzero(full):
        Rj = F[:, :, j].T                                    # R_j = F_j' (upper)
        bs.append(np.linalg.solve(Rj, G[:, :, j] @ u))
        sinv.append(np.diag(np.linalg.inv(Rj.T @ Rj)))
    bs, sinv = np.array(bs), np.array(sinv)
    rank = int((np.diagonal(F, axis1=0, axis2=1) > 0).sum())
    sigma2 = float(u @ dev._within @ u) / (dev.stats.nobs - rank - p)
    psi = bs.var(axis=0) - sigma2 * sinv.mean(axis=0)
    rows, cols = dev._index()
    start = dev.moment_start()
    seen = psi > 0
    expect = np.clip(np.sqrt(np.where(seen, psi, 0.0) / sigma2), 0.05, 1e4)
    diag_pos = rows == cols
    np.testing.assert_allclose(start[diag_pos][seen], expect[seen], rtol=1e-10)
    assert np.all(start[~diag_pos] == 0.0)
    assert dev._small.compiled == (kernels == "compiled")
