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
                       lower: np.ndarray, upper: np.ndarray | None = None, *,
                       step: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference gradient and diagonal curvature of ``fun`` at ``x``.

    Central differences inside the box; one-sided ones next to a bound (the
    curvature is NaN there).  Returns ``(gradient, curvature)``.
    """
    x = np.asarray(x, dtype=float)
    upper = np.full_like(x, np.inf) if upper is None else np.asarray(upper, dtype=float)
    g = np.zeros_like(x)
    curv = np.full_like(x, np.nan)
    f0 = fun(x)
    for i in range(len(x)):   # loops over the few covariance parameters
        h = step * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        if x[i] - h < lower[i]:
            g[i] = (fun(x + e) - f0) / h
        elif x[i] + h > upper[i]:
            g[i] = (f0 - fun(x - e)) / h
        else:
            fp, fm = fun(x + e), fun(x - e)
            g[i] = (fp - fm) / (2 * h)
            curv[i] = (fp - 2 * f0 + fm) / h ** 2
    return g, curv


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
    best: list = [np.inf, None]     # the best point seen (NLopt may stop without returning it)

    def counted(x: np.ndarray) -> float:
        count[0] += 1
        v = fun(x)
        v = float(v) if np.isfinite(v) else 1e300
        if v < best[0]:
            best[0], best[1] = v, np.array(x, dtype=float)
        return v

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
            # keep the best point evaluated: its value is what NLopt reports
            x, code = (best[1] if best[1] is not None else start), -4
            return np.asarray(x), float(best[0]), code
        return np.asarray(x), float(opt.last_optimum_value()), code

    step = 0.5 if initial_step is None else initial_step

    def check(x: np.ndarray) -> tuple[np.ndarray, bool, bool, str]:
        """Gradient, and verdicts on the parameters off both bounds.

        ``tight``: every |g_i| <= grad_tol.  ``ok``: tight, or the
        curvature-scaled gradient |g_i| / sqrt(H_ii) <= grad_tol (lme4 scales
        by the Hessian: the deviance grows with n, so with many rows an
        absolute gradient of 1e-3 can mean parameters exact to 1e-8).
        """
        g, curv = numerical_gradient(counted, x, lower, upper)
        inner = (x > lower + 1e-6) & (x < upper - 1e-6)
        gi = np.abs(g[inner])
        if not inner.any() or np.all(gi <= grad_tol):
            return g, True, True, ""
        ci = curv[inner]
        scaled = np.where(ci > 0, gi / np.sqrt(np.where(ci > 0, ci, 1.0)), np.inf)
        worst = float(np.max(scaled))
        note = (f"; gradient {gi.max():.2e}, scaled by the curvature {worst:.2e}"
                f" {'<=' if worst <= grad_tol else 'exceeds'} {grad_tol:g}")
        return g, False, worst <= grad_tol, note

    x1, f1, code = run(np.clip(x0, lower, upper), step)
    grad, tight, ok_grad, note = check(x1)
    confirmed = False
    if not tight or code < 0:
        # restart with a small trust region; one that cannot improve the objective
        # confirms a flat optimum
        x2, f2, code2 = run(x1, min(step, 0.02))
        confirmed = code2 > 0 and f2 >= f1 - 10 * ftol_abs
        if f2 <= f1:
            x1, f1, code = x2, f2, code2 if code2 > 0 else code
            grad, tight, ok_grad, note = check(x1)
    ok = code > 0 and code != 5 and (ok_grad or confirmed)
    msg = _NLOPT_MESSAGES.get(code, str(code)) + note
    if not ok_grad and confirmed:
        msg += "; a restart did not improve the objective (flat optimum)"
    return OptimizerRecord("BOBYQA (NLopt)", x0, x1, fun_start, f1, count[0], grad, ok, msg,
                           names)
