"""Fitting models with a structured residual covariance (results: :mod:`sm_hlm.residual_results`).

Notes
-----
The optimiser works on x = (theta, u): the relative covariance factor of the
random effects and the residual structure's parameters on an unconstrained
scale (Phi = tanh(u), log SD ratios, canonical partial correlations), with
beta and sigma^2 profiled out (:mod:`sm_hlm.whitening`).

Standard errors come from the observed information: the numerical Hessian
of the deviance in (free entries of Psi, sigma^2, u), with beta fixed at its
estimate (ML) or integrated out (REML), inverted; on the natural scale by the
delta method, J cov(u) J' with J = d nat / d u.  Wald intervals are formed on
a scale that maps the parameter's range onto the real line (logit of the
rescaled value for a bounded parameter: 2 atanh(Phi) for AR(1), Fisher's z
for correlations; log for SD ratios) and transformed back, as nlme's
``intervals``; they always lie inside the valid range.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import ConvergenceWarning, SingularFitWarning
from .engine.optimizer import minimize_bobyqa
from .residual import external_stacklevel
from .residual_results import _boundary
from .results import HLMResults, HLMResultsWrapper, build_fit, vcomp_objective

if TYPE_CHECKING:
    from .model import HLM
    from .whitening import ResidualKernel

__all__ = ["fit_structured"]

#: distance (unconstrained scale) from the box edge that counts as "ran to the boundary"
_BOUNDARY_TOL = 0.05
#: distance from a finite natural bound, relative to the range, that counts as the boundary
_BOUNDARY_REL = 1e-5


# ====================================================================== fit
def fit_structured(model: "HLM", *, start_params: np.ndarray | None, reml: bool, maxeval: int,
                   ftol_abs: float, xtol_abs: float, compute_vcomp_cov: bool):
    """Fit (theta, u) jointly by BOBYQA; see :meth:`sm_hlm.HLM.fit`."""
    kern: ResidualKernel = model._residual_kernel
    rd = model.re_design
    nt, r = rd.n_theta, kern.n_params
    if start_params is None:
        x0 = np.concatenate([rd.theta_start(), kern.start_free(model)])
    else:
        sp = np.asarray(start_params, dtype=float)
        if sp.shape == (nt,):
            x0 = np.concatenate([sp, kern.start_free(model)])
        elif sp.shape == (nt + r,):
            x0 = sp
        else:
            raise ValueError(f"start_params must have {nt} entries (theta) or {nt + r} (theta "
                             f"then the residual structure's unconstrained parameters)")
    lower = np.concatenate([rd.theta_lower, kern.free_lower])
    upper = np.concatenate([np.full(nt, np.inf), kern.free_upper])
    names = tuple(rd.theta_names) + tuple(f"residual.{n}" for n in kern.param_names)
    f = kern.objective(nt, reml=reml)
    record = minimize_bobyqa(f, x0, lower, upper, ftol_abs=ftol_abs, xtol_abs=xtol_abs,
                             maxeval=maxeval, names=names)
    u = record.end[nt:]
    dev, _ = kern.deviance(u, reml=reml)
    fit = build_fit(model, dev, record, reml=reml, compute_vcomp_cov=False)
    k = len(fit.vcomp)
    if compute_vcomp_cov and not kern.confounded:
        cov_vcomp, cov_u = _joint_cov(model, kern, fit, u, reml=reml)
    else:
        cov_vcomp, cov_u = np.full((k, k), np.nan), np.full((r, r), np.nan)
    fit = dataclasses.replace(fit, cov_vcomp=cov_vcomp, residual_free=u, residual_free_cov=cov_u)
    level = external_stacklevel()
    if fit.singular_terms:
        warnings.warn("boundary (singular) fit: " + "; ".join(fit.singular_terms),
                      SingularFitWarning, stacklevel=level)
    bnd = _boundary(kern, u)
    if bnd:
        warnings.warn("residual structure at its boundary: " + "; ".join(bnd.values()),
                      SingularFitWarning, stacklevel=level)
    if not record.converged:
        warnings.warn(f"the optimiser did not converge: {record.message}", ConvergenceWarning,
                      stacklevel=level)
    return HLMResultsWrapper(HLMResults(model, fit))


def _inverse_information(H: np.ndarray) -> np.ndarray | None:
    """Inverse of the observed information H/2 (H: Hessian of the deviance), or None."""
    info = 0.25 * (H + H.T)
    if not np.all(np.isfinite(info)):
        return None
    d = np.sqrt(np.abs(np.diag(info)))
    if np.any(d == 0):
        return None
    w = np.linalg.eigvalsh(info / np.outer(d, d))
    if w.min() <= 1e-9 * max(w.max(), 1.0):
        return None
    return np.linalg.inv(info)


def _joint_cov(model: "HLM", kern: "ResidualKernel", fit: Any, u: np.ndarray, *,
               reml: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inverse observed information of (vcomp, sigma^2, u); blocks for vcomp and u."""
    from statsmodels.tools.numdiff import approx_hess3

    rd = model.re_design
    r_idx, c_idx = rd.vcomp_index()
    k, r = len(r_idx), len(u)
    beta = fit.fe_params

    f = vcomp_objective(rd, beta, lambda rest: kern.deviance(rest, reml=reml))

    x = np.concatenate([fit.cov_re[r_idx, c_idx], [fit.scale], u])
    cov = None
    with np.errstate(all="ignore"):
        try:
            cov = _inverse_information(approx_hess3(x, f))
        except (np.linalg.LinAlgError, ValueError):
            cov = None
    if cov is not None:
        return cov[:k, :k], cov[k + 1:, k + 1:]
    # singular random effects: Psi cannot be perturbed; use the profiled deviance of
    # (theta, u) for u (theta's sign is free, so the Hessian exists)
    nt = rd.n_theta
    fprof = kern.objective(nt, reml=reml)
    xt = np.concatenate([fit.theta, u])
    with np.errstate(all="ignore"):
        try:
            covp = _inverse_information(approx_hess3(xt, fprof))
        except (np.linalg.LinAlgError, ValueError):
            covp = None
    cu = covp[nt:, nt:] if covp is not None else np.full((r, r), np.nan)
    return np.full((k, k), np.nan), cu
