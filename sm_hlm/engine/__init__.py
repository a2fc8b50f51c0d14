"""The mixed-model engine for any number of grouping factors.

A layer below the model and results: it imports only numpy, scipy,
threadpoolctl and :mod:`sm_hlm.linalg` (and :mod:`sm_hlm.optimizer` in
:func:`fit_theta`).

=========================  =====================================================
module                     role
=========================  =====================================================
``terms``                  random-effects terms, theta <-> Lambda_k, lme4's order
``structure``              term order, nesting, sparsity patterns, cross products
``blocked``                the blocked Cholesky and the profiled deviance
``solution``               beta, sigma^2, cov(beta), conditional modes and variances
``fit``                    ``fit_theta``: BOBYQA over theta
``dense``                  dense n x n reference computations (tests only)
=========================  =====================================================
"""
from __future__ import annotations

from .blocked import BlockedDeviance, BlockedFactor
from .structure import BlockedStructure
from .terms import (RETerm, ThetaLayout, codes_from_labels, interaction_codes, lme4_term_order,
                    nested_in, theta_from_lme4, theta_to_lme4)

__all__ = ["RETerm", "ThetaLayout", "BlockedStructure", "BlockedDeviance", "BlockedFactor",
           "codes_from_labels", "interaction_codes", "lme4_term_order", "nested_in",
           "theta_to_lme4", "theta_from_lme4"]
