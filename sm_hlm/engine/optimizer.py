"""Optimisation of the covariance parameters, with a convergence verdict and a record.

The optimiser sees only the covariance parameters (theta, and a residual
structure's parameters); beta and sigma^2 are profiled out.  BOBYQA (Powell's
bound-constrained quadratic-model trust-region method, through NLopt; lme4's
default) finds the optimum without derivatives; where an analytic gradient
exists, a projected BFGS method (:func:`_projected_bfgs`; scipy's L-BFGS-B
where it stalls) finds or polishes it, and Newton steps with the verdict's
Hessian (differences of the gradient) finish it.  The verdict is a
boundary-aware, scale-free test of the
first- and second-order conditions (:func:`kkt_verdict`); a failed test is
never turned into a success.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .._compat import require_nlopt

__all__ = ["OptimizerRecord", "minimize_bobyqa", "minimize_with_gradient", "minimize_deviance",
           "numerical_gradient", "kkt_verdict", "NEWTON_TOL"]

_NLOPT_MESSAGES = {
    1: "success", 2: "stopval reached", 3: "ftol reached", 4: "xtol reached",
    5: "maxeval reached", 6: "maxtime reached",
    -1: "failure", -2: "invalid arguments", -3: "out of memory", -4: "roundoff limited",
    -5: "forced stop",
}
#: Largest Newton decrement sqrt(g' H^-1 g) accepted at an optimum: a Newton step from
#: there would lower the deviance by at most NEWTON_TOL^2 / 2 = 5e-7 (lme4 accepts 2e-3
#: on its Hessian-scaled gradient).
NEWTON_TOL = 1e-3
#: distance from a bound below which a parameter counts as on it
_BOUND_TOL = 1e-7


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
        Objective evaluations (gradient evaluations counted once each).
    gradient : ndarray
        Gradient of the objective at ``end`` (analytic where available).
    converged : bool
        The first-order conditions hold (a scale-free, boundary-aware test)
        and the curvature is positive along the parameters off their bounds.
    message : str
        What the optimiser reported and what the convergence check found.
    names : tuple of str
    hessian : ndarray or None
        The Hessian at ``end`` used by the verdict.
    n_restarts : int
        Restarts made (from interior points after a stop on a boundary, or
        after a failed check).
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
    hessian: np.ndarray | None = None
    n_restarts: int = 0

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


def _hessian_from_gradient(grad: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                           lower: np.ndarray, upper: np.ndarray, *,
                           step: float = 1e-4, g0: np.ndarray | None = None) -> np.ndarray:
    """Symmetrised finite differences of a gradient.

    Central differences (2k gradients) when ``g0`` is None; with the gradient
    ``g0`` at ``x`` given, forward differences stepping into the box (k
    gradients; truncation error O(step), ample for the verdict and the Newton
    steps it serves).  One-sided next to a bound in either case.
    """
    k = len(x)
    H = np.empty((k, k))
    for i in range(k):       # loops over the few covariance parameters
        h = step * max(1.0, abs(x[i]))
        e = np.zeros(k)
        e[i] = h
        if g0 is not None:
            H[:, i] = ((grad(x + e) - g0) / h if x[i] + h <= upper[i]
                       else (g0 - grad(x - e)) / h)
        elif x[i] - h < lower[i]:
            H[:, i] = (grad(x + e) - grad(x)) / h
        elif x[i] + h > upper[i]:
            H[:, i] = (grad(x) - grad(x - e)) / h
        else:
            H[:, i] = (grad(x + e) - grad(x - e)) / (2 * h)
    return 0.5 * (H + H.T)


def _verdict_hessian(obj: "_Counted", x: np.ndarray, g: np.ndarray, lower: np.ndarray,
                     upper: np.ndarray) -> np.ndarray:
    """The Hessian for the verdict: forward differences of the gradient when clearly PD.

    Forward differences (k gradients, reusing ``g`` at ``x``) are accurate to
    O(step) relative; where the smallest eigenvalue is within 1e-6 of the
    largest, or not positive, that error could decide the verdict, so central
    differences (2k gradients, O(step^2)) are used instead.
    """
    H = _hessian_from_gradient(obj.grad, x, lower, upper, g0=g)
    if np.all(np.isfinite(H)):
        ev = np.linalg.eigvalsh(H)
        if ev[0] > 1e-6 * max(float(np.max(np.abs(ev))), 1e-300):
            return H
    return _hessian_from_gradient(obj.grad, x, lower, upper)


def _gradient_extrapolated(fun: Callable[[np.ndarray], float], x: np.ndarray,
                           lower: np.ndarray, upper: np.ndarray, *, h0: float = 1e-2,
                           levels: int = 3) -> np.ndarray:
    """Gradient by Richardson-extrapolated central differences (steps h0, h0/2, h0/4).

    Large steps keep the rounding noise of an objective of order 1e3-1e6 out
    of the gradient; the extrapolation removes the truncation error.  Next
    to a bound, a one-sided difference with a small step.
    """
    k = len(x)
    g = np.empty(k)
    f0 = None
    for i in range(k):       # loops over the few parameters
        h = h0 * max(1.0, abs(x[i]))
        if x[i] - h < lower[i] or x[i] + h > upper[i]:
            f0 = fun(x) if f0 is None else f0
            e = np.zeros(k)
            e[i] = 1e-6 * max(1.0, abs(x[i]))
            g[i] = ((fun(x + e) - f0) / e[i] if x[i] - e[i] < lower[i]
                    else (f0 - fun(x - e)) / e[i])
            continue
        est = []
        for lev in range(levels):
            e = np.zeros(k)
            e[i] = h / 2 ** lev
            est.append((fun(x + e) - fun(x - e)) / (2 * e[i]))
        a = np.array(est)
        for lev in range(1, levels):
            a = (a[1:] * 4 ** lev - a[:-1]) / (4 ** lev - 1)
        g[i] = a[0]
    return g


def _hessian_from_values(fun: Callable[[np.ndarray], float], x: np.ndarray, lower: np.ndarray,
                         upper: np.ndarray, *, step: float = 3e-3) -> np.ndarray:
    """Hessian by forward second differences of function values (steps into the box)."""
    k = len(x)
    h = step * np.maximum(1.0, np.abs(x))
    h = np.where(x + h > upper, -h, h)
    f0 = fun(x)
    fi = np.empty(k)
    for i in range(k):
        e = np.zeros(k)
        e[i] = h[i]
        fi[i] = fun(x + e)
    H = np.empty((k, k))
    for i in range(k):       # k (k + 1) / 2 evaluations
        for j in range(i, k):
            e = np.zeros(k)
            e[i] += h[i]
            e[j] += h[j]
            H[i, j] = H[j, i] = (fun(x + e) - fi[i] - fi[j] + f0) / (h[i] * h[j])
    return H


def kkt_verdict(x: np.ndarray, g: np.ndarray, H: np.ndarray | None, lower: np.ndarray,
                upper: np.ndarray, *, tol: float = NEWTON_TOL) -> tuple[bool, str]:
    """Whether ``x`` is a local minimum of a bound-constrained objective.

    Parameters
    ----------
    x, g, H
        Point, gradient and Hessian of the objective there.
    lower, upper
        Bounds.
    tol
        Largest Newton decrement accepted.

    Returns
    -------
    ok : bool
    note : str
        What was found, for the optimiser record and the warning.

    Notes
    -----
    A parameter on a bound whose gradient points out of the box (moving
    inward would increase the objective) is held there, unless the slope is
    negligible and the curvature negative (then moving inward lowers the
    objective: a failure); the others form the free set F.  The test is scale-free: the Newton decrement
    sqrt(g_F' H_FF^{-1} g_F), the square root of twice the decrease a
    Newton step would bring, must be at most ``tol`` (invariant to rescaling
    the parameters), and H_FF must be positive definite (a strict local
    minimum along the free directions).
    """
    return _kkt(x, g, H, lower, upper, tol=tol)[:2]


def _kkt(x: np.ndarray, g: np.ndarray, H: np.ndarray | None, lower: np.ndarray,
         upper: np.ndarray, *, tol: float) -> tuple[bool, str, float]:
    """:func:`kkt_verdict` and the Newton decrement (inf where H_FF is not PD)."""
    x, g = np.asarray(x, float), np.asarray(g, float)
    if not np.isfinite(g).all():
        return False, "the gradient is not finite at the end point", math.inf
    at_lo = (x - lower <= _BOUND_TOL) & (g >= 0)
    at_hi = (upper - x <= _BOUND_TOL) & (g <= 0)
    held = at_lo | at_hi
    some_held = bool(held.any())
    if some_held and H is not None and np.isfinite(np.diag(H)).all():
        # a bound where the slope vanishes (a variance at zero: the deviance is even in its
        # factor) and the curvature is negative: moving inside lowers the objective
        dh = np.diag(H)
        rising = held & (dh < 0) & (np.abs(g) <= tol * np.sqrt(np.abs(dh)))
        if rising.any():
            return False, (f"parameter(s) {np.flatnonzero(rising).tolist()} on a bound with zero "
                           "slope and negative curvature: the objective decreases into the "
                           "interior (a saddle on the boundary)"), math.inf
    free = ~held
    if some_held and not free.any():
        return True, "every parameter on a bound, the gradient points out of the box", 0.0
    if H is None:
        return False, "the Hessian is not available at the end point", math.inf
    gf, Hf = (g[free], H[np.ix_(free, free)]) if some_held else (g, H)
    if not np.isfinite(Hf).all():
        return False, "the Hessian is not available at the end point", math.inf
    ev, V = np.linalg.eigh(Hf)
    top = max(abs(float(ev[0])), abs(float(ev[-1])), 1e-300)
    if ev[0] <= 1e-10 * top:
        kind = "negative" if ev[0] < -1e-8 * top else "zero"
        return False, (f"the Hessian has a {kind} eigenvalue ({ev[0]:.3g}; largest {ev[-1]:.3g}) "
                       "along the parameters off their bounds: not a strict minimum (a saddle "
                       "point, or parameters the data do not identify)"), math.inf
    z = V.T @ gf                                   # g_F' H_FF^{-1} g_F = sum_i z_i^2 / ev_i
    dec = math.sqrt(max(float((z * z) @ (1.0 / ev)), 0.0))
    if dec > tol:
        return False, (f"Newton decrement {dec:.2e} exceeds {tol:g} (max |gradient| "
                       f"{np.max(np.abs(gf)):.2e}): not at the optimum"), dec
    return True, f"Newton decrement {dec:.1e} <= {tol:g}, Hessian positive definite", dec


class _Counted:
    """An objective (and gradient) that counts evaluations and keeps the best point."""

    def __init__(self, fun: Callable[[np.ndarray], float],
                 fun_grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None):
        self.fun = fun
        self.fun_grad = fun_grad
        self.count = 0
        self.best_f = np.inf
        self.best_x: np.ndarray | None = None
        # the last point (as bytes) with its value and gradient, and with its value
        self._last: tuple[bytes, float, np.ndarray] | None = None
        self._last_value: tuple[bytes, float] | None = None

    def _keep(self, x: np.ndarray, v: float) -> float:
        v = float(v)
        if not math.isfinite(v):
            v = 1e300
        if v < self.best_f:
            self.best_f, self.best_x = v, np.array(x, dtype=float)
        return v

    def __call__(self, x: np.ndarray) -> float:
        x = np.asarray(x, dtype=float)
        key = x.tobytes()
        last = self._last_value
        if last is not None and last[0] == key:
            return last[1]                        # the same point again
        self.count += 1
        v = self._keep(x, self.fun(x))
        self._last_value = (key, v)
        return v

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.asarray(x, dtype=float)
        key = x.tobytes()
        last = self._last
        if last is not None and last[0] == key:
            return last[1], last[2].copy()        # the same point again (e.g. the verdict's)
        self.count += 1
        f, g = self.fun_grad(x)
        v = self._keep(x, f)
        g = np.array(g, dtype=float)
        if not all(map(math.isfinite, g.tolist())):
            g = np.zeros_like(x)
        self._last = (key, v, g)
        self._last_value = (key, v)
        return v, g.copy()

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.value_and_grad(x)[1]


def _bobyqa(obj: _Counted, start: np.ndarray, lower: np.ndarray, upper: np.ndarray,
            step: np.ndarray, *, ftol_abs: float, xtol_abs: float,
            maxeval: int) -> tuple[np.ndarray, float, int]:
    nlopt = require_nlopt()
    k = len(start)
    opt = nlopt.opt(nlopt.LN_BOBYQA, k)
    opt.set_min_objective(lambda x, grad: obj(x))
    opt.set_lower_bounds(lower)
    opt.set_upper_bounds(upper)
    opt.set_ftol_abs(ftol_abs)
    opt.set_xtol_abs(xtol_abs)
    opt.set_maxeval(maxeval)
    opt.set_initial_step(step)
    start = np.clip(start, lower, upper)
    try:
        x = opt.optimize(start)
        code = opt.last_optimize_result()
        f = float(opt.last_optimum_value())
    except nlopt.RoundoffLimited:
        x, f, code = (obj.best_x if obj.best_x is not None else start), obj.best_f, -4
    except (ValueError, RuntimeError):
        x, f, code = (obj.best_x if obj.best_x is not None else start), obj.best_f, -1
    # NLopt may return a point other than the best it evaluated
    if obj.best_x is not None and obj.best_f < f:
        x, f = obj.best_x, obj.best_f
    return np.asarray(x, dtype=float), float(f), int(code)


def _steps(x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, base: float) -> np.ndarray:
    """BOBYQA's initial steps: proportional to the start's magnitude (NLopt rescales by them)."""
    s = base * np.maximum(np.abs(x0), 0.2)
    room = np.where(np.isfinite(upper - lower), 0.4 * (upper - lower), np.inf)
    return np.minimum(s, room)


def _newton_step(x: np.ndarray, g: np.ndarray, H: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray) -> np.ndarray | None:
    """x - H_FF^{-1} g_F on the free parameters, clipped to the box; None without a PD H_FF."""
    at_lo = (x - lower <= _BOUND_TOL) & (g >= 0)
    at_hi = (upper - x <= _BOUND_TOL) & (g <= 0)
    free = ~(at_lo | at_hi)
    if not free.any() or not np.all(np.isfinite(H)):
        return None
    Hf = H[np.ix_(free, free)]
    try:
        np.linalg.cholesky(Hf)
        step = np.linalg.solve(Hf, g[free])
    except np.linalg.LinAlgError:
        return None
    xn = x.copy()
    xn[free] = x[free] - step
    return np.clip(xn, lower, upper)


def _newton_polish(obj: _Counted, x: np.ndarray, f: float, lower: np.ndarray,
                   upper: np.ndarray, *, tol: float, max_iter: int = 30,
                   g: np.ndarray | None = None, H: np.ndarray | None = None
                   ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Projected, eigenvalue-modified Newton iterations with backtracking.

    The Hessian (differences of the analytic gradient) is replaced by
    V |Lambda| V' (eigenvalues floored at 1e-10 of the largest), so a step
    always descends, also away from a saddle point; steps are projected on
    the box and halved until the objective decreases.  Stops when the
    verdict holds, no step decreases the objective, or after ``max_iter``.  ``g`` and
    ``H``, when given, are the gradient and Hessian at ``x`` (not computed again).
    """
    if g is None:
        g = obj.grad(x)
    if H is None:
        H = _hessian_from_gradient(obj.grad, x, lower, upper)
    for _ in range(max_iter):
        if kkt_verdict(x, g, H, lower, upper, tol=tol)[0]:
            break
        at_lo = (x - lower <= _BOUND_TOL) & (g >= 0)
        at_hi = (upper - x <= _BOUND_TOL) & (g <= 0)
        free = ~(at_lo | at_hi)
        if not free.any() or not np.all(np.isfinite(H)):
            break
        ev0, V = np.linalg.eigh(H[np.ix_(free, free)])
        top = max(float(np.max(np.abs(ev0))), 1e-300)
        ev = np.maximum(np.abs(ev0), 1e-10 * top)
        step = np.zeros_like(x)
        step[free] = -V @ ((V.T @ g[free]) / ev)
        moved = False
        for _ in range(30):
            xn = np.clip(x + step, lower, upper)
            fn = obj(xn)
            if fn < f:
                x, f, moved = xn, fn, True
                break
            step = step / 2
        if not moved and ev0[0] < 0:
            # a saddle point: move along the direction of negative curvature
            d = np.zeros_like(x)
            d[free] = V[:, 0] * max(1.0, float(np.max(np.abs(x[free]))))
            for alpha in 0.5 ** np.arange(20):
                for sign in (1.0, -1.0):
                    xn = np.clip(x + sign * alpha * d, lower, upper)
                    fn = obj(xn)
                    if fn < f:
                        x, f, moved = xn, fn, True
                        break
                if moved:
                    break
        if not moved:
            break
        g = obj.grad(x)
        H = _hessian_from_gradient(obj.grad, x, lower, upper)
    return x, f, g, H


def _projected_bfgs(obj: _Counted, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, *,
                    ftol_abs: float, gtol: float, max_iter: int = 200
                    ) -> tuple[np.ndarray, float, bool]:
    """A projected BFGS method for a few bound-constrained parameters.

    Returns ``(x, f, settled)``; ``settled`` is True when the method's own
    estimate of the squared Newton decrement, g_F' B_FF g_F, fell below 1e-8
    (below 1e-6 when a step no longer lowers the objective by ``ftol_abs``),
    or the projected gradient below ``gtol``; False when it stopped otherwise.

    Notes
    -----
    Parameters on a bound with the gradient pointing out of the box are held
    there; the others take the quasi-Newton step -B_FF g_F (B the BFGS
    approximation of the inverse Hessian), projected on the box, with a
    backtracking (Armijo) line search.  The first step is limited to about
    0.1 times the parameters' size (the objective, a profiled deviance, is far
    from quadratic away from its minimum).  g_F' B_FF g_F estimates the squared
    Newton decrement, i.e. twice the distance to the minimum: it stops the
    iterations, and the verdict (:func:`kkt_verdict`, with a Hessian from
    differences of the gradient) then decides.  The update is

        B+ = (I - rho s y') B (I - rho y s') + rho s s',   rho = 1 / s'y,

    expanded into O(k^2) operations.  The k <= ~20 parameters' algebra runs on
    Python floats (a few microseconds per iteration, several times less than
    numpy calls on arrays this small); scipy's L-BFGS-B would add ~0.1 ms.
    """
    x_arr = np.clip(np.asarray(x0, dtype=float), lower, upper)
    f, g_arr = obj.value_and_grad(x_arr)
    if not math.isfinite(f):
        return x_arr, f, False
    k = len(x_arr)
    idx = range(k)
    lo, hi = np.asarray(lower, float).tolist(), np.asarray(upper, float).tolist()
    x, g = x_arr.tolist(), g_arr.tolist()
    B: list[list[float]] | None = None
    for _ in range(max_iter):
        free = [i for i in idx if not ((x[i] - lo[i] <= _BOUND_TOL and g[i] > 0)
                                       or (hi[i] - x[i] <= _BOUND_TOL and g[i] < 0))]
        if not free or max(abs(g[i]) for i in free) <= gtol:
            return x_arr, f, True
        d = [0.0] * k
        slope = 0.0
        if B is not None:
            for i in free:
                Bi = B[i]
                d[i] = -sum(Bi[j] * g[j] for j in free)
            slope = sum(g[i] * d[i] for i in free)
            if not slope < 0:
                B = None
            elif -slope <= 1e-8:
                return x_arr, f, True
        if B is None:
            scale = 0.1 * min(max(abs(x[i]), 1.0) / max(abs(g[i]), 1e-300) for i in free)
            d = [0.0] * k
            for i in free:
                d[i] = -g[i] * scale
            slope = sum(g[i] * d[i] for i in free)
        t, moved = 1.0, False
        for _ in range(40):
            xn = [min(max(x[i] + t * d[i], lo[i]), hi[i]) for i in idx]
            xn_arr = np.array(xn)
            fn, gn_arr = obj.value_and_grad(xn_arr)
            if (math.isfinite(fn)
                    and fn <= f + 1e-4 * sum(g[i] * (xn[i] - x[i]) for i in idx)):
                moved = True
                break
            # a quadratic fit along the step, kept within [0.1 t, 0.5 t]
            denom = 2.0 * (fn - f - t * slope) if math.isfinite(fn) else math.inf
            t = min(max(-slope * t * t / denom, 0.1 * t), 0.5 * t) if denom > 0 else 0.1 * t
        if not moved:
            return x_arr, f, False
        gn = gn_arr.tolist()
        s = [xn[i] - x[i] for i in idx]
        y = [gn[i] - g[i] for i in idx]
        sy = sum(a * b for a, b in zip(s, y))
        yy = sum(b * b for b in y)
        ss = sum(a * a for a in s)
        if sy > 1e-12 * math.sqrt(ss * yy):
            if B is None:
                B = [[sy / yy if i == j else 0.0 for j in idx] for i in idx]
            rho = 1.0 / sy
            By = [sum(B[i][j] * y[j] for j in idx) for i in idx]
            yB = [sum(y[i] * B[i][j] for i in idx) for j in idx]
            c = rho * rho * sum(y[i] * By[i] for i in idx) + rho
            B = [[B[i][j] - rho * (s[i] * yB[j] + By[i] * s[j]) + c * s[i] * s[j] for j in idx]
                 for i in idx]
        decrease = f - fn
        x, f, g, x_arr = xn, fn, gn, xn_arr
        if decrease < ftol_abs:
            # no progress: settled when the decrement estimated before the step was small
            return x_arr, f, bool(B is not None and -slope <= 1e-6)
    return x_arr, f, False


def _snap_to_bounds(obj: _Counted, x: np.ndarray, f: float, lower: np.ndarray,
                    upper: np.ndarray) -> tuple[np.ndarray, float]:
    """Put parameters within rounding of a bound on it, when that does not raise the objective."""
    near_lo = (x - lower <= _BOUND_TOL) & (x != lower)
    near_hi = (upper - x <= _BOUND_TOL) & (x != upper)
    if not (near_lo.any() or near_hi.any()):
        return x, f
    xs = np.where(near_lo, lower, np.where(near_hi, upper, x))
    fs = obj(xs)
    return (xs, fs) if fs <= f + 1e-10 else (x, f)


def minimize_with_gradient(fun: Callable[[np.ndarray], float],
                           fun_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
                           x0: np.ndarray, lower: np.ndarray, upper: np.ndarray | None = None,
                           *, ftol_abs: float = 1e-8, xtol_abs: float = 1e-8,
                           maxeval: int = 100_000, names: tuple[str, ...] = (),
                           restart_points: tuple[np.ndarray, ...] = (),
                           tol: float = NEWTON_TOL, skip_bobyqa: bool = False,
                           gradient_first: bool = False) -> OptimizerRecord:
    """BOBYQA, an L-BFGS-B polish with the analytic gradient, a verdict and restarts.

    Parameters
    ----------
    fun, fun_grad
        Objective, and objective with gradient.
    x0, lower, upper
        Start and bounds.
    restart_points
        Further starts tried when the verdict fails (e.g. lme4's identity).
    tol
        Newton-decrement tolerance of the verdict (:func:`kkt_verdict`).
    skip_bobyqa
        Use L-BFGS-B alone.
    gradient_first
        Start with L-BFGS-B alone (fast from a good start) and run BOBYQA
        only when the verdict fails there.

    Notes
    -----
    1. BOBYQA from ``x0`` (initial steps proportional to the start, so that
       variance ratios from 1e-6 to 1e6 are handled alike).
    2. L-BFGS-B from there with the analytic gradient; the better point is kept.
    3. After a stop with parameters on a bound, the optimisation is restarted
       from an interior point (those parameters moved back to their start) and
       the best point is kept, since a boundary stop can hide a better
       interior optimum.
    4. The verdict: gradient and a Hessian from differences of the analytic
       gradient.  When it fails, further restarts (``restart_points``, then
       the end point with a fresh model) are tried; the best point found is
       returned with the verdict at that point.
    """
    from scipy.optimize import minimize

    x0 = np.asarray(x0, dtype=float)
    k = len(x0)
    lower = np.asarray(lower, dtype=float)
    upper = np.full(k, np.inf) if upper is None else np.asarray(upper, dtype=float)
    obj = _Counted(fun, fun_grad)
    f_start = obj(x0)
    if k == 0:
        return OptimizerRecord("none", x0, x0, f_start, f_start, obj.count, np.zeros(0), True,
                               "no covariance parameters", names)
    bounds = [(lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None)
              for lo, hi in zip(lower, upper)]
    notes: list[str] = []
    # L-BFGS-B stops once an iteration lowers the objective by less than 1e-9, or the
    # projected gradient is below 1e-10 of the objective's size (the deviance and its
    # curvature grow alike with n): the verdict's Newton steps finish from there, and the
    # line searches at rounding level that tighter rules run into are avoided
    size = max(abs(f_start), 1.0) if np.isfinite(f_start) else 1.0
    lbfgs_ftol, lbfgs_gtol = max(1e-15, 1e-9 / size), max(1e-10, 1e-10 * size)
    used_lbfgs: list[bool] = []

    def lbfgs(x: np.ndarray, f: float, ftol: float, gtol: float) -> tuple[np.ndarray, float]:
        """scipy's L-BFGS-B from x; its end point when it lowers f, else (x, f)."""
        used_lbfgs.append(True)
        res = minimize(obj.value_and_grad, x, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 500, "ftol": ftol, "gtol": gtol})
        if np.isfinite(res.fun) and res.fun < f:
            return np.clip(res.x, lower, upper), float(res.fun)
        return x, f

    def attempt(start: np.ndarray, bobyqa: bool | None = None) -> tuple[np.ndarray, float, int]:
        if not (use_bobyqa if bobyqa is None else bobyqa):
            x1, f1, code = np.clip(start, lower, upper), obj(np.clip(start, lower, upper)), 1
        else:
            x1, f1, code = _bobyqa(obj, start, lower, upper, _steps(start, lower, upper, 0.25),
                                   ftol_abs=ftol_abs, xtol_abs=xtol_abs, maxeval=maxeval)
        x2, f2, settled = _projected_bfgs(obj, x1, lower, upper, ftol_abs=1e-9,
                                          gtol=lbfgs_gtol)
        if np.isfinite(f2) and f2 < f1:
            x1, f1 = x2, f2
        if not settled:
            # the projected BFGS stalled: scipy's L-BFGS-B from where it stopped
            x1, f1 = lbfgs(x1, f1, lbfgs_ftol, lbfgs_gtol)
        return x1, f1, code

    use_bobyqa = not (skip_bobyqa or gradient_first)
    x, f, code = attempt(x0)
    n_restarts = 0
    restart_points = tuple(np.asarray(r, dtype=float) for r in restart_points)
    def boundary_restarts(x: np.ndarray, f: float, code: int, n_restarts: int):
        """Restarts from interior points after a stop on a bound, keeping the best.

        The Cholesky parametrisation has spurious boundary minima (a zero
        diagonal), so a boundary stop is checked from the point with its
        boundary coordinates moved inside, from the point with every bounded
        coordinate at least 1 and from the restart points.
        """
        tried = 0
        while tried < 4:
            on_bound = (x - lower <= _BOUND_TOL) & np.isfinite(lower)
            if not on_bound.any():
                break
            bounded = np.isfinite(lower)
            starts = [np.where(on_bound, lower + 1.0, x),
                      np.where(bounded, np.maximum(x, lower + 1.0), x),
                      *restart_points]
            improved = False
            for start in starts:
                x2, f2, code2 = attempt(np.asarray(start, dtype=float))
                n_restarts += 1
                tried += 1
                if f2 < f - 1e-9:
                    notes.append(f"a restart from an interior point improved the objective by "
                                 f"{f - f2:.3g}")
                    x, f, code = x2, f2, code2
                    improved = True
                    break
            if not improved:
                break
        return x, f, code, n_restarts

    x, f, code, n_restarts = boundary_restarts(x, f, code, n_restarts)
    if gradient_first and not skip_bobyqa and np.any((x - lower <= _BOUND_TOL) & np.isfinite(lower)):
        # a singular fit found by the gradient path: BOBYQA (and its boundary restarts) too,
        # since gradient steps from the interior can stop on a spurious boundary minimum
        use_bobyqa = True
        x2, f2, code2 = attempt(x0)
        x2, f2, code2, n_restarts = boundary_restarts(x2, f2, code2, n_restarts + 1)
        if f2 < f - 1e-9:
            notes.append(f"BOBYQA improved on the gradient path's boundary fit by {f - f2:.3g}")
            x, f, code = x2, f2, code2
    def tight_polish(x, f, g, H, ok, note, dec):
        """scipy's L-BFGS-B with tight tolerances from x, and the verdict afresh (central
        differences) when it improves: for objectives far from quadratic near their
        minimum (e.g. a variance ratio near zero), where quasi-Newton and Newton steps
        with a fixed Hessian stop short."""
        f0 = f
        x, f = lbfgs(x, f, 1e-15, 1e-10)
        if f < f0:
            x, f = _snap_to_bounds(obj, x, f, lower, upper)
            g = obj.grad(x)
            H = _hessian_from_gradient(obj.grad, x, lower, upper)
            ok, note, dec = _kkt(x, g, H, lower, upper, tol=tol)
        return x, f, g, H, ok, note, dec

    x, f = _snap_to_bounds(obj, x, f, lower, upper)
    g = obj.grad(x)
    H = _verdict_hessian(obj, x, g, lower, upper)
    ok, note, dec = _kkt(x, g, H, lower, upper, tol=tol)
    if not ok:
        x, f, g, H, ok, note, dec = tight_polish(x, f, g, H, ok, note, dec)
    if not ok and gradient_first and not skip_bobyqa and not use_bobyqa:
        # the gradient path did not settle: BOBYQA from the start, then the polish
        use_bobyqa = True
        x2, f2, code2 = attempt(x0)
        n_restarts += 1
        if f2 < f:
            x, f, code = x2, f2, code2
            x, f = _snap_to_bounds(obj, x, f, lower, upper)
            g = obj.grad(x)
            H = _verdict_hessian(obj, x, g, lower, upper)
            ok, note, dec = _kkt(x, g, H, lower, upper, tol=tol)
    if not ok:
        # a modified Newton polish: handles the ill-conditioning (variance ratios of 1e6)
        # and the saddle points that quasi-Newton and BOBYQA stop at
        x2, f2, g2, H2 = _newton_polish(obj, x, f, lower, upper, tol=tol, g=g, H=H)
        if f2 < f:
            notes.append(f"a Newton polish improved the objective by {f - f2:.3g}")
            x, f, g, H = x2, f2, g2, H2
            ok, note, dec = _kkt(x, g, H, lower, upper, tol=tol)
    if ok:
        # a last Newton step or two with the verdict's Hessian: quadratic convergence makes
        # the optimum exact to far below the verdict's tolerance at one gradient per step
        # (the Hessian barely changes over such a step)
        for _ in range(2):
            if dec * dec <= 1e-16:
                # g'H^{-1}g (twice the decrease a Newton step would bring) at most 1e-16,
                # far below the objective's rounding: nothing left a step could find
                break
            x2 = _newton_step(x, g, H, lower, upper)
            if x2 is None or np.array_equal(x2, x):
                break
            f2, g2 = obj.value_and_grad(x2)
            # a step at rounding level of the objective counts when it shrinks the gradient
            flat = (f2 <= f + 4e-16 * max(1.0, abs(f))
                    and np.max(np.abs(g2)) < 0.5 * np.max(np.abs(g)))
            if not (f2 < f or flat):
                break
            ok2, note2, dec2 = _kkt(x2, g2, H, lower, upper, tol=tol)
            if not ok2:
                break
            x, f, g, note, dec = x2, f2, g2, note2, dec2
        if dec > 1e-6:
            # the Newton steps did not settle it
            x, f, g, H, ok, note, dec = tight_polish(x, f, g, H, ok, note, dec)
    if not ok:
        for start in (*restart_points, x):
            x2, f2, code2 = attempt(np.asarray(start, dtype=float))
            n_restarts += 1
            if f2 < f:
                x, f, code = x2, f2, code2
                g = obj.grad(x)
                H = _verdict_hessian(obj, x, g, lower, upper)
                ok, note = kkt_verdict(x, g, H, lower, upper, tol=tol)
            if ok:
                break
    f = obj(x)                    # the objective at the end point (cached when just evaluated)
    if not f < 1e300:
        f = float(fun(x))         # not finite there: the objective's own value
    if code < 0 or code in (5, 6):
        notes.insert(0, f"BOBYQA stopped: {_NLOPT_MESSAGES.get(code, str(code))}")
    msg = "; ".join([("converged" if ok else "NOT converged") + f": {note}", *notes])
    method = ("BFGS" if skip_bobyqa or not use_bobyqa else "BOBYQA (NLopt) + BFGS")
    if used_lbfgs:
        method += " + L-BFGS-B"
    return OptimizerRecord(method, x0, x, f_start, f, obj.count, g, ok, msg,
                           names, H, n_restarts)


def minimize_deviance(dev, lower: np.ndarray, *, start: np.ndarray | None = None,
                      identity: np.ndarray | None = None, **options) -> OptimizerRecord:
    """Minimise a profiled deviance over theta in its working coordinates.

    ``dev`` is a :class:`sm_hlm.engine.deviance.ProfiledDeviance` built with
    ``theta_index``.  The optimiser runs on theta~ (centred and scaled
    coordinates, :meth:`~sm_hlm.engine.deviance.ProfiledDeviance.work_deviance`)
    from ``start`` (original theta; the data's moments when None), with
    lme4's ``identity`` start as a restart point; the record is mapped back
    to theta (start, end and gradient; the Hessian stays in the working
    coordinates).  ``options`` go to :func:`minimize_with_gradient`.
    """
    x0 = dev.moment_start() if start is None else dev.theta_to_work(start)
    restart = () if identity is None else (dev.theta_to_work(identity),)
    rec = minimize_with_gradient(dev.work_deviance, dev.work_gradient, x0, lower,
                                 restart_points=restart, **options)
    theta, gradient = dev.theta_and_gradient(rec.end)
    return replace(rec, start=dev.theta_from_work(rec.start), end=theta, gradient=gradient)


def minimize_bobyqa(fun: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray,
                    upper: np.ndarray | None = None, *, ftol_abs: float = 1e-8,
                    xtol_abs: float = 1e-8, maxeval: int = 100_000,
                    initial_step: float | None = None, names: tuple[str, ...] = (),
                    check: bool = True, tol: float = NEWTON_TOL) -> OptimizerRecord:
    """Minimise ``fun`` over a box with BOBYQA, with a numerical convergence verdict.

    Parameters
    ----------
    fun
        Objective of the parameter vector.
    x0, lower, upper
        Start and bounds (``upper`` defaults to +inf).
    ftol_abs, xtol_abs, maxeval
        NLopt stopping rules.
    initial_step
        BOBYQA's initial trust-region radius (0.5 by default).
    check
        Judge convergence with a finite-difference gradient and Hessian
        (:func:`kkt_verdict`); without it, ``converged`` reports only BOBYQA's
        own stopping rule.

    Notes
    -----
    When the verdict fails, BOBYQA is restarted from the end point with a
    small trust region and the better point kept; the verdict is then taken
    again at that point.  A restart that does not improve the objective does
    not make a failed verdict a success.
    """
    x0 = np.asarray(x0, dtype=float)
    k = len(x0)
    lower = np.asarray(lower, dtype=float)
    upper = np.full(k, np.inf) if upper is None else np.asarray(upper, dtype=float)
    obj = _Counted(fun)
    f_start = obj(x0)
    if k == 0:
        return OptimizerRecord("none", x0, x0, f_start, f_start, obj.count, np.zeros(0),
                               True, "no covariance parameters", names)
    step = 0.5 if initial_step is None else initial_step
    x, f, code = _bobyqa(obj, x0, lower, upper, np.full(k, step), ftol_abs=ftol_abs,
                         xtol_abs=xtol_abs, maxeval=maxeval)

    def judge(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool, str]:
        g = _gradient_extrapolated(obj, x, lower, upper)
        if not check:
            return g, None, True, "not checked"
        H = _hessian_from_values(obj, x, lower, upper)
        ok, note = kkt_verdict(x, g, H, lower, upper, tol=tol)
        return g, H, ok, note

    g, H, ok, note = judge(x)
    n_restarts = 0
    if not ok and H is not None:
        # a projected Newton step from the end point, kept when it lowers the objective
        for _ in range(3):
            xn = _newton_step(x, g, H, lower, upper)
            if xn is None:
                break
            fn = obj(xn)
            if not fn < f:
                break
            x, f = xn, fn
            g, H, ok, note = judge(x)
            if ok:
                break
    if not ok or code < 0:
        x2, f2, code2 = _bobyqa(obj, x, lower, upper, np.full(k, min(step, 0.02)),
                                ftol_abs=ftol_abs, xtol_abs=xtol_abs, maxeval=maxeval)
        n_restarts = 1
        if f2 < f:
            x, f, code = x2, f2, code2 if code2 > 0 else code
            g, H, ok, note = judge(x)
    if ok and H is not None:
        # a last Newton step with the verdict's Hessian: BOBYQA's stopping rule leaves the
        # optimum accurate to about its ftol; one step makes it exact far below that
        xn = _newton_step(x, g, H, lower, upper)
        if xn is not None and not np.array_equal(xn, x):
            fn = obj(xn)
            if fn < f:
                gn = _gradient_extrapolated(obj, xn, lower, upper)
                ok_n, note_n = kkt_verdict(xn, gn, H, lower, upper, tol=tol)
                if ok_n:
                    x, f, g, note = xn, fn, gn, note_n
    ok = ok and code > 0 and code not in (5, 6)
    msg = _NLOPT_MESSAGES.get(code, str(code)) + f"; {note}"
    return OptimizerRecord("BOBYQA (NLopt)", x0, x, f_start, f, obj.count, g, ok, msg,
                           names, H, n_restarts)
