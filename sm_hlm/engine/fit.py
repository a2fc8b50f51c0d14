"""End-to-end minimisation of the blocked profiled deviance (for tests and benchmarks)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .optimizer import OptimizerRecord, minimize_bobyqa
from .blocked import BlockedDeviance
from .terms import RETerm

__all__ = ["ThetaFit", "fit_theta"]


@dataclass(frozen=True)
class ThetaFit:
    """The optimum of the profiled deviance.

    Attributes
    ----------
    theta : ndarray
        Caller's term order.
    deviance : float
        Profiled ML deviance (-2 log-likelihood) or REML criterion at theta.
    n_evals : int
        Deviance evaluations, including the optimizer's gradient check.
    optimizer : OptimizerRecord
    deviance_function : BlockedDeviance
        The objective (for :func:`~sm_hlm.engine.solution.solve_at`).
    """

    theta: np.ndarray
    deviance: float
    n_evals: int
    optimizer: OptimizerRecord
    deviance_function: BlockedDeviance


def fit_theta(terms: Sequence[RETerm], exog: np.ndarray, endog: np.ndarray, *, reml: bool,
              start: np.ndarray | None = None, ftol_abs: float = 1e-8, xtol_abs: float = 1e-8,
              pin_blas_threads: bool = True, memory_limit: int | None = None) -> ThetaFit:
    """Minimise the profiled deviance over theta with BOBYQA.

    Parameters
    ----------
    terms, exog, endog
        As :class:`~sm_hlm.engine.blocked.BlockedDeviance`.
    reml
        REML criterion instead of -2 log-likelihood.
    start
        Starting theta (default lme4's: identity Lambda_k).
    ftol_abs, xtol_abs
        BOBYQA's stopping rules (lme4's ``nloptwrap`` defaults).
    pin_blas_threads, memory_limit
        Passed to :class:`~sm_hlm.engine.blocked.BlockedDeviance`.

    Notes
    -----
    Lower bounds are 0 for the diagonal entries of each Lambda_k and -inf
    for the off-diagonal ones, as in lme4; beta and sigma^2 are profiled out.
    """
    dev = BlockedDeviance(terms, exog, endog, reml=reml, pin_blas_threads=pin_blas_threads,
                          memory_limit=memory_limit)
    x0 = dev.theta_start() if start is None else np.asarray(start, dtype=float)
    if x0.shape != (dev.layout.n_theta,):
        raise ValueError(f"start must have {dev.layout.n_theta} entries, got shape {x0.shape}")
    rec = minimize_bobyqa(dev, x0, dev.theta_lower, ftol_abs=ftol_abs, xtol_abs=xtol_abs,
                          names=dev.layout.names)
    return ThetaFit(rec.end, rec.fun_end, rec.n_evals, rec, dev)
