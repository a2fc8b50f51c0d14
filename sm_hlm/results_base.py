"""What every mixed-model results class shares: fit criteria and the fixed effects."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from statsmodels.base.model import LikelihoodModelResults

from ._compat import cache_readonly

__all__ = ["MixedResultsBase"]


class MixedResultsBase(LikelihoodModelResults):
    """Log-likelihood, information criteria and labelled fixed effects, read from
    ``self.fit_result`` (``llf``, ``fe_params``, ``cov_fe``), ``self.n_params`` and
    ``self.k_fe``; ``_cov_fe_used`` is the covariance behind ``bse_fe`` (lme4's vcov;
    a subclass may substitute a robust one)."""

    def _set_fit_attributes(self, model: Any, fit: Any, n_theta: int) -> None:
        """The plain attributes every results object has, from the fit container."""
        self.nobs = model.nobs
        self.n_groups = model.n_groups
        self.optimizer = fit.optimizer
        self.converged = fit.optimizer.converged
        self.theta = fit.theta
        self.singular_terms = list(fit.singular_terms)
        self.singular = bool(fit.singular_terms)
        #: number of estimated parameters as lme4 counts them (beta, theta, sigma, and a
        #: residual structure's)
        self.n_params = len(fit.fe_params) + n_theta + 1 + len(fit.residual_free)
        self.df_resid = model.nobs - self.n_params
        self.df_modelwc = self.n_params

    @property
    def _cov_fe_used(self) -> np.ndarray:
        return self.fit_result.cov_fe

    @property
    def _cov_vcomp_used(self) -> np.ndarray:
        return self.cov_vcomp

    @property
    def normalized_cov_params(self) -> np.ndarray:
        """cov_params() / scale: the fixed effects' covariance and the variance
        components', block diagonal (assembled on first use)."""
        cached = self.__dict__.get("_normalized_cov_params")
        if cached is None:
            p, k = self.k_fe, self.k_vcomp
            cov = np.zeros((p + k, p + k))
            cov[:p, :p] = self._cov_fe_used
            cov[p:, p:] = self._cov_vcomp_used
            cached = cov / self.fit_result.scale
            self.__dict__["_normalized_cov_params"] = cached
        return cached

    @normalized_cov_params.setter
    def normalized_cov_params(self, value: Any) -> None:
        # statsmodels' Results.__init__ assigns it; ours is built from fit_result
        if value is not None:
            self.__dict__["_normalized_cov_params"] = value

    @cache_readonly
    def llf(self) -> float:
        return self.fit_result.llf

    @cache_readonly
    def deviance(self) -> float:
        """-2 log-likelihood (ML) or the REML criterion (REML)."""
        return -2.0 * self.llf

    @cache_readonly
    def aic(self) -> float:
        return self.deviance + 2.0 * self.n_params

    @cache_readonly
    def bic(self) -> float:
        return self.deviance + np.log(self.nobs) * self.n_params

    @property
    def _fe_names(self) -> list[str]:
        return list(self.model.exog_names)

    @cache_readonly
    def fe_params(self) -> pd.Series:
        return pd.Series(self.fit_result.fe_params, index=self._fe_names, name="fe_params")

    @cache_readonly
    def bse_fe(self) -> pd.Series:
        """Standard errors of the fixed effects (of ``cov_type``'s covariance)."""
        return pd.Series(np.sqrt(np.diag(self._cov_fe_used)), index=self._fe_names,
                         name="bse_fe")

    @cache_readonly
    def cov_fe(self) -> pd.DataFrame:
        """lme4's ``vcov``: sigma^2 (X' V^-1 X)^-1 at the estimates."""
        return pd.DataFrame(self.fit_result.cov_fe, index=self._fe_names, columns=self._fe_names)

    @cache_readonly
    def corr_fe(self) -> pd.DataFrame:
        """Correlation of the fixed-effect estimates (lme4's summary; of the robust
        covariance when that is the one used)."""
        c = self._cov_fe_used
        s = np.sqrt(np.diag(c))
        return pd.DataFrame(c / np.outer(s, s), index=self._fe_names, columns=self._fe_names)

    @cache_readonly
    def pvalues(self) -> np.ndarray:
        """Two-sided normal p-values of the fixed effects; NaN for the variance components.

        A Wald test of a variance against zero is a test on the boundary of
        its parameter space, with a wrong reference distribution; sm_hlm
        reports none (so statsmodels' ``summary_col`` puts no stars on them).
        Test variance components by :func:`sm_hlm.compare` (likelihood
        ratio, chi-bar-square) or profile intervals.
        """
        p = np.array(LikelihoodModelResults.pvalues.func(self), dtype=float)
        p[self.k_fe:] = np.nan
        return p
