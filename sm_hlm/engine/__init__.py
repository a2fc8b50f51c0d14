"""The mixed-model engine for any number of grouping factors.

A layer below the model and results: it imports only numpy, scipy,
threadpoolctl, :mod:`sm_hlm.engine.linalg` and (in :func:`fit_theta`)
:mod:`sm_hlm.engine.optimizer`.

Usage::

    from sm_hlm.engine import RETerm, BlockedDeviance, solve_at, fit_theta
    terms = [RETerm("school", school_codes, n_schools, np.column_stack([ones, x]),
                    ("(Intercept)", "x")),
             RETerm("school:klass", class_codes, n_classes, np.column_stack([ones, x]),
                    ("(Intercept)", "x"))]
    fit = fit_theta(terms, X, y, reml=False)          # theta, deviance, evaluations
    sol = solve_at(fit.deviance_function, fit.theta)  # beta, sigma^2, b, condvar

=========================  =====================================================
module                     role
=========================  =====================================================
``terms``                  random-effects terms, theta <-> Lambda_k, lme4's order
``structure``              term order, nesting, sparsity patterns, cross products
``blocked``                the blocked Cholesky and the profiled deviance
``solution``               beta, sigma^2, cov(beta), conditional modes and variances
``gradient``               analytic gradient of the profiled deviance
``fit``                    ``fit_theta``: BOBYQA over theta
``dense``                  dense n x n reference computations (tests only)
=========================  =====================================================
"""
from __future__ import annotations

from .blocked import BlockedDeviance, BlockedFactor
from .fit import ThetaFit, fit_theta
from .gradient import deviance_gradient
from .solution import Solution, solve_at
from .structure import BlockedStructure
from .terms import (RETerm, ThetaLayout, codes_from_labels, interaction_codes, lme4_term_order,
                    nested_in, theta_from_lme4, theta_to_lme4)

__all__ = ["RETerm", "ThetaLayout", "BlockedStructure", "BlockedDeviance", "BlockedFactor",
           "Solution", "solve_at", "ThetaFit", "fit_theta", "deviance_gradient",
           "codes_from_labels", "interaction_codes", "lme4_term_order", "nested_in",
           "theta_to_lme4", "theta_from_lme4"]
