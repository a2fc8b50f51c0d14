"""The gradient optimiser and the verdict's Hessian (sm_hlm.engine.optimizer)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from sm_hlm.engine.optimizer import (_Counted, _hessian_from_gradient, _projected_bfgs,
                                     _verdict_hessian, kkt_verdict, minimize_with_gradient)


def _rosen(x):
    a, b = x[0], x[1]
    f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    g = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
    return f, g


def _quartic(x):
    """A convex quartic plus quadratic in 3 variables with its minimum at (1, 0.5, 0) outside
    the box x2 >= 0.25: the bound is active at the constrained minimum."""
    c = np.array([1.0, 0.5, 0.0])
    A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    d = x - c
    f = 0.5 * d @ A @ d + 0.25 * np.sum(d ** 4)
    return f, A @ d + d ** 3


@pytest.mark.parametrize("case", ["rosen", "quartic"])
def test_projected_bfgs_finds_the_bound_constrained_minimum(case) -> None:
    if case == "rosen":
        fg, x0, lower, upper = _rosen, np.array([-1.2, 1.0]), np.array([-2.0, -2.0]), None
    else:
        fg, x0 = _quartic, np.array([4.0, 3.0, 2.0])
        lower = np.array([-np.inf, -np.inf, 0.25])
        upper = None
    upper = np.full(len(x0), np.inf) if upper is None else upper
    obj = _Counted(lambda x: fg(x)[0], fg)
    x, f, settled = _projected_bfgs(obj, x0, lower, upper, ftol_abs=1e-14, gtol=1e-10)
    ref = minimize(fg, x0, jac=True, method="L-BFGS-B",
                   bounds=[(lo if np.isfinite(lo) else None, None) for lo in lower],
                   options={"ftol": 1e-15, "gtol": 1e-12})
    assert settled
    assert f <= ref.fun + 1e-9
    np.testing.assert_allclose(x, ref.x, atol=1e-4)
    if case == "quartic":
        assert x[2] == 0.25          # held on its bound, where the gradient points outward
        assert fg(x)[1][2] > 0


def test_projected_bfgs_reports_a_stall() -> None:
    """An objective that only decreases by rounding-level steps is not 'settled'."""
    def fg(x):
        return float(-np.sum(np.log1p(x))), -1.0 / (1.0 + x)      # unbounded above: no minimum
    obj = _Counted(lambda x: fg(x)[0], fg)
    x, f, settled = _projected_bfgs(obj, np.array([1.0, 2.0]), np.zeros(2),
                                    np.full(2, np.inf), ftol_abs=1e-9, gtol=1e-12,
                                    max_iter=25)
    assert not settled and np.all(x > 2.0)


def test_forward_and_central_hessians_agree_on_a_smooth_function() -> None:
    x = np.array([0.7, 0.3, 0.9])
    obj = _Counted(lambda z: _quartic(z)[0], _quartic)
    lower, upper = np.full(3, -np.inf), np.full(3, np.inf)
    Hc = _hessian_from_gradient(obj.grad, x, lower, upper)
    Hf = _hessian_from_gradient(obj.grad, x, lower, upper, g0=obj.grad(x))
    d = x - np.array([1.0, 0.5, 0.0])
    exact = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]]) + np.diag(3 * d ** 2)
    np.testing.assert_allclose(Hc, exact, atol=1e-7)
    np.testing.assert_allclose(Hf, exact, atol=1e-3)
    np.testing.assert_allclose(_verdict_hessian(obj, x, obj.grad(x), lower, upper), Hf)


def test_verdict_hessian_falls_back_to_central_differences_near_singularity() -> None:
    """A near-singular Hessian (smallest eigenvalue 1e-8 of the largest) is computed by
    central differences, whose error cannot flip the sign of that eigenvalue."""
    A = np.diag([1.0, 1e-8])

    def fg(x):
        return 0.5 * x @ A @ x + x[0] ** 3, A @ x + np.array([3 * x[0] ** 2, 0.0])
    obj = _Counted(lambda z: fg(z)[0], fg)
    x = np.array([0.0, 0.0])
    lower, upper = np.full(2, -np.inf), np.full(2, np.inf)
    H = _verdict_hessian(obj, x, obj.grad(x), lower, upper)
    np.testing.assert_allclose(H, _hessian_from_gradient(obj.grad, x, lower, upper))
    assert np.linalg.eigvalsh(H)[0] > 0


def test_minimize_with_gradient_converges_with_an_exact_optimum() -> None:
    obj_f = lambda x: _quartic(x)[0]          # noqa: E731
    rec = minimize_with_gradient(obj_f, _quartic, np.array([4.0, 3.0, 2.0]),
                                 np.array([-np.inf, -np.inf, 0.25]), gradient_first=True)
    assert rec.converged
    ok, _ = kkt_verdict(rec.end, _quartic(rec.end)[1], rec.hessian,
                        np.array([-np.inf, -np.inf, 0.25]), np.full(3, np.inf))
    assert ok
    free = _quartic(rec.end)[1][:2]
    assert np.max(np.abs(free)) < 1e-8
