"""The fused q <= 2 kernel (sm_hlm.engine.small) against the general batched kernels."""
from __future__ import annotations

import numpy as np
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
@pytest.mark.parametrize("pairs", [True, False], ids=["pair-products", "H"])
def test_small_kernel_matches_general_kernels(data, formula, reml, pairs, monkeypatch) -> None:
    """Both forms of A (pair products of G_j, or H_j = L_j^{-1} G_j) against the
    general kernels, with the gradient."""
    import sm_hlm.engine.small as small
    if not pairs:
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
        assert (dev._small.pairs is not None) == pairs
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
