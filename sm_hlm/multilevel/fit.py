"""The container of one multilevel fit: everything the results read."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..engine.optimizer import OptimizerRecord

__all__ = ["MultilevelFit"]


@dataclasses.dataclass(frozen=True)
class MultilevelFit:
    """Everything estimated by one fit (original units); results read only this.

    Attributes
    ----------
    reml : bool
    theta : ndarray               free entries of the Lambda_k (terms in model order)
    fe_params, cov_fe : ndarray   beta and scale * (X'V^-1 X)^-1
    scale : float                 sigma^2
    cov_re : list of ndarray      Psi_k per term
    blups : list of ndarray       conditional modes b_k, (levels, S_k) per term
    blup_cov : list of ndarray    conditional covariances, (levels, S_k, S_k) per term
    llf : float                   log-likelihood (-REML criterion / 2), recomputed at the estimates
    optimizer : OptimizerRecord   theta in the model's units
    singular_terms : tuple of str
    residual_free : ndarray       the residual structure's parameters (unconstrained scale;
                                  empty for independent errors)
    """

    reml: bool
    theta: np.ndarray
    fe_params: np.ndarray
    cov_fe: np.ndarray
    scale: float
    cov_re: list
    blups: list
    blup_cov: list
    llf: float
    optimizer: OptimizerRecord
    singular_terms: tuple[str, ...]
    residual_free: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
