"""The blocked deviance kernels (many groups) agree with the unblocked ones."""
from __future__ import annotations

import numpy as np
import pytest

import sm_hlm.engine.deviance as deviance
from sm_hlm import HLM
from sm_hlm.simulate import simulate_mixed


def _model(q: int) -> HLM:
    re = ("Intercept", "x1", "x2")[:q]
    df = simulate_mixed(n_groups=60, mean_group_size=6, seed=3,
                        fe_params={"Intercept": 1.0, "x1": 0.5, "x2": -0.3},
                        re_names=re, cov_re=np.diag([1.0, 0.5, 0.3][:q]))
    rhs = " + ".join(re[1:]) if q > 1 else "1"
    return HLM.from_formula(f"y ~ x1 + x2 + ({rhs} | group)", df)


@pytest.mark.parametrize("q, beyond", [(1, "blocked"), (2, "blocked"), (3, "blocked"),
                                       (1, "compiled"), (2, "compiled")])
@pytest.mark.parametrize("reml", [False, True])
def test_blocked_matches_unblocked(q: int, reml: bool, beyond: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond a block of groups: the blocked numpy kernels, or (q <= 2) the compiled
    fused kernel over all groups at once, against the unblocked kernels."""
    from sm_hlm.engine import compiled
    if beyond == "compiled" and compiled.csmall() is None:
        pytest.skip(f"the compiled small kernel is {compiled.status()['_csmall']}")
    mod = _model(q)
    dev = mod.deviance_function(reml=reml)
    rng = np.random.default_rng(q)
    thetas = [dev.moment_start() + 0.3 * rng.standard_normal(len(dev.moment_start()))
              for _ in range(3)]
    ref = [(dev.work_deviance(t), dev.work_gradient(t)[1]) for t in thetas]
    llf = mod.fit(reml=reml).llf
    monkeypatch.setattr(deviance, "_CHUNK_GROUPS", 7)     # 60 groups: 9 blocks, a ragged last
    monkeypatch.setattr(deviance, "_SMALL_ANY_M", beyond == "compiled")
    dev2 = mod.deviance_function(reml=reml)
    assert dev2._small_ok == (beyond == "compiled")
    for t, (f, g) in zip(thetas, ref):
        assert dev2.work_deviance(t) == pytest.approx(f, rel=1e-12, abs=1e-9)
        f2, g2 = dev2.work_gradient(t)
        assert f2 == pytest.approx(f, rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(g2, g, rtol=1e-9, atol=1e-9)
    assert mod.fit(reml=reml).llf == pytest.approx(llf, abs=1e-8)
