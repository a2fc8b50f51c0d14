"""Derivative-free optimisation of the covariance parameters, with a record.

The optimiser sees only the covariance parameters (theta, and the residual
structure's parameters); beta and sigma^2 are profiled out.  BOBYQA (Powell's
bound-constrained quadratic-model trust-region method, through NLopt) is the
default, as in lme4 (``nloptwrap``) and MixedModels.jl.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OptimizerRecord", "minimize_bobyqa", "numerical_gradient"]

_NLOPT_MESSAGES = {
    1: "success", 2: "stopval reached", 3: "ftol reached", 4: "xtol reached",
    5: "maxeval reached", 6: "maxtime reached",
    -1: "failure", -2: "invalid arguments", -3: "out of memory", -4: "roundoff limited",
    -5: "forced stop",
}


@dataclass(frozen=True)
class OptimizerRecord:
    """What the optimiser did.

    Attributes
    ----------
    method : str
    start, end : ndarray
        Parameters at the start and at the optimum.
    fun_start, fun_end : float
        Objective (profiled deviance) at start and end.
    n_evals : int
        Objective evaluations, including the gradient check.
    gradient : ndarray
        Finite-difference gradient of the objective at ``end`` (one-sided for
        parameters on a bound).
    converged : bool
        The optimiser reported success and the gradient is small for all
        parameters off their bounds.
    message : str
    """

    method: str
    start: np.ndarray
    end: np.ndarray
    fun_start: float
    fun_end: float
    n_evals: int
    gradient: np.ndarray
    converged: bool
    message: str
    names: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return (f"{self.method}: {self.message}, {self.n_evals} evaluations, "
                f"objective {self.fun_start:.6f} -> {self.fun_end:.6f}, "
                f"max |gradient| {np.max(np.abs(self.gradient), initial=0.0):.2e}")


def numerical_gradient(fun: Callable[[np.ndarray], float], x: np.ndarray,
                       lower: np.ndarray, *, step: float = 1e-5) -> np.ndarray:
    """Central-difference gradient; forward differences at a lower bound."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    f0 = None
    for i in range(len(x)):
        h = step * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        if x[i] - h < lower[i]:
            if f0 is None:
                f0 = fun(x)
            g[i] = (fun(x + e) - f0) / h
        else:
            g[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


def minimize_bobyqa(fun: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray,
                    upper: np.ndarray | None = None, *, ftol_abs: float = 1e-8,
                    xtol_abs: float = 1e-8, maxeval: int = 100_000,
                    initial_step: float | None = None, grad_tol: float = 2e-3,
                    names: tuple[str, ...] = ()) -> OptimizerRecord:
    """Minimise ``fun`` over a box with BOBYQA, checking the gradient at the end.

    Parameters
    ----------
    fun
        Objective of the parameter vector.
    x0, lower, upper
        Start and bounds (``upper`` defaults to +inf).
    ftol_abs, xtol_abs, maxeval
        NLopt stopping rules.
    grad_tol
        Largest finite-difference gradient (on parameters off their bounds)
        accepted as converged; lme4 uses 2e-3 on its scaled gradient.

    Notes
    -----
    After BOBYQA stops, a finite-difference gradient is taken.  When it is
    not small on the parameters off their bounds, BOBYQA is restarted from
    that point with a small trust region (a quadratic model can stop early
    on the flat ridges of a variance-component likelihood) and the better
    point is kept.
    """
    import nlopt

    x0 = np.asarray(x0, dtype=float)
    k = len(x0)
    lower = np.asarray(lower, dtype=float)
    upper = np.full(k, np.inf) if upper is None else np.asarray(upper, dtype=float)
    count = [0]

    def counted(x: np.ndarray) -> float:
        count[0] += 1
        v = fun(x)
        return float(v) if np.isfinite(v) else 1e300

    fun_start = counted(x0)
    if k == 0:
        return OptimizerRecord("none", x0, x0, fun_start, fun_start, count[0], np.zeros(0),
                               True, "no covariance parameters", names)

    def run(start: np.ndarray, step: float) -> tuple[np.ndarray, float, int]:
        opt = nlopt.opt(nlopt.LN_BOBYQA, k)
        opt.set_min_objective(lambda x, grad: counted(x))
        opt.set_lower_bounds(lower)
        opt.set_upper_bounds(upper)
        opt.set_ftol_abs(ftol_abs)
        opt.set_xtol_abs(xtol_abs)
        opt.set_maxeval(maxeval)
        opt.set_initial_step(step)
        try:
            x = opt.optimize(start)
            code = opt.last_optimize_result()
        except nlopt.RoundoffLimited:
            x, code = start, -4
        return np.asarray(x), float(opt.last_optimum_value()), code

    step = 0.5 if initial_step is None else initial_step

    def check(x: np.ndarray) -> tuple[np.ndarray, bool]:
        g = numerical_gradient(counted, x, lower)
        inner = x > lower + 1e-6
        return g, bool(np.all(np.abs(g[inner]) <= grad_tol)) if inner.any() else True

    x1, f1, code = run(np.clip(x0, lower, upper), step)
    grad, small = check(x1)
    confirmed = False
    if not small or code < 0:
        x2, f2, code2 = run(x1, min(step, 0.02))
        # a restart that cannot improve the objective confirms a flat optimum
        confirmed = code2 > 0 and f2 >= f1 - 10 * ftol_abs
        if f2 <= f1:
            x1, f1, code = x2, f2, code2 if code2 > 0 else code
            grad, small = check(x1)
    interior = x1 > lower + 1e-6
    ok = code > 0 and code != 5 and (small or confirmed)
    msg = _NLOPT_MESSAGES.get(code, str(code))
    if not small:
        msg += f"; gradient {np.max(np.abs(grad[interior])):.2e} exceeds {grad_tol:g}"
        if confirmed:
            msg += " but a restart did not improve the objective (flat optimum)"
    return OptimizerRecord("BOBYQA (NLopt)", x0, x1, fun_start, f1, count[0], grad, ok, msg,
                           names)
