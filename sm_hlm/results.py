"""Results of an HLM fit, built once from a complete :class:`HLMFit` container."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap
from statsmodels.base.model import LikelihoodResultsWrapper
from ._compat import cache_readonly

from .design import vcomp_objective
from .results_base import MixedResultsBase
from .engine.deviance import ProfiledDeviance
from .engine.optimizer import OptimizerRecord

if TYPE_CHECKING:
    from .model import HLM

__all__ = ["HLMFit", "HLMResults", "HLMResultsWrapper", "build_fit"]


@dataclass(frozen=True)
class HLMFit:
    """Everything estimated by one fit; the results object reads only this.

    Attributes
    ----------
    reml : bool
    theta : ndarray            relative covariance factor's free entries
    fe_params : ndarray        beta
    scale : float              sigma^2
    cov_re : ndarray (q, q)    Psi = scale * Lambda Lambda'
    vcomp : ndarray            free entries of Psi (``vcomp_names`` order)
    cov_fe : ndarray (p, p)    scale * (X' V^-1 X)^-1, lme4's vcov
    cov_vcomp : ndarray or None  inverse observed information of vcomp (NaN if singular;
                               None: computed when first needed, see HLMResults.cov_vcomp)
    llf : float                log-likelihood (REML criterion / -2 for REML)
    blups : ndarray (m, q)     conditional modes of b_j
    blup_cov : ndarray (q, q, m) conditional covariances (q-major)
    optimizer : OptimizerRecord
    singular_terms : tuple of str
    residual_free : ndarray    residual structure's parameters, unconstrained scale (empty
                               for independent errors; see :mod:`sm_hlm.residual`)
    residual_free_cov : ndarray  their inverse observed information
    """

    reml: bool
    theta: np.ndarray
    fe_params: np.ndarray
    scale: float
    cov_re: np.ndarray
    vcomp: np.ndarray
    cov_fe: np.ndarray
    cov_vcomp: np.ndarray | None
    llf: float
    blups: np.ndarray
    blup_cov: np.ndarray
    optimizer: OptimizerRecord
    singular_terms: tuple[str, ...]
    residual_free: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual_free_cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def _vcomp_cov(model: "HLM", dev: ProfiledDeviance, fit_beta: np.ndarray, cov_re: np.ndarray,
               scale: float) -> np.ndarray:
    """Inverse observed information of (free cov_re entries) at the optimum.

    The Hessian of the deviance in (vcomp, sigma^2), with beta fixed at its
    estimate (ML) or integrated out (REML), by Richardson-extrapolated
    central differences (plain ones are noisy on a deviance of order 1e4+).
    """
    from .engine.numdiff import hessian_richardson

    rd = model.re_design
    r, c = rd.vcomp_index()
    k = len(r)
    if k == 0:
        return np.zeros((0, 0))
    f = vcomp_objective(rd, fit_beta, lambda rest: (dev, 0.0))
    x = np.append(cov_re[r, c], scale)
    try:
        H = hessian_richardson(f, x, d=0.01)
        info = 0.5 * H
        cov = np.linalg.inv(info)
    except (np.linalg.LinAlgError, ValueError):
        return np.full((k, k), np.nan)
    if not np.all(np.isfinite(cov)):
        return np.full((k, k), np.nan)
    return cov[:k, :k]


def build_fit(model: "HLM", dev: ProfiledDeviance, record: OptimizerRecord, *, reml: bool,
              compute_vcomp_cov: bool = True, blups: bool = True) -> HLMFit:
    """Assemble every estimate at the optimum ``record.end``.

    ``blups=False`` leaves the BLUPs and their covariances (one per group) as None,
    for models whose groups live elsewhere (a Dask cluster computes them lazily).
    """
    rd = model.re_design
    theta = record.end[:rd.n_theta]   # a residual structure's parameters follow theta
    t = dev.terms(theta)
    if t is None:
        raise RuntimeError("the deviance is not defined at the optimiser's end point")
    scale = dev.scale(t)
    p = model.k_fe
    RXinv = np.linalg.inv(t.R[:p, :p])
    cov_fe = scale * (RXinv.T @ RXinv)
    cov_re = rd.cov_re(theta, scale)
    r, c = rd.vcomp_index()
    if blups:
        b, blup_rel = dev.conditional_modes(theta, t.beta)
        blup_cov = scale * blup_rel
    else:
        b = blup_cov = None
    # the numerical Hessian behind cov_vcomp costs as much as the fit: defer it
    cov_vcomp = None if compute_vcomp_cov else np.full((len(r), len(r)), np.nan)
    return HLMFit(reml=reml, theta=theta, fe_params=t.beta, scale=scale, cov_re=cov_re,
                  vcomp=cov_re[r, c], cov_fe=cov_fe, cov_vcomp=cov_vcomp,
                  llf=-0.5 * record.fun_end, blups=b, blup_cov=blup_cov,
                  optimizer=record, singular_terms=tuple(rd.singular_terms(theta)))


class HLMResults(MixedResultsBase):
    """Results of :meth:`sm_hlm.HLM.fit`.

    ``params`` holds the fixed effects followed by the free entries of the
    random-effects covariance (``Var(x | g)``, ``Cov(x, z | g)``) on their
    natural scale; ``cov_params()`` is block diagonal: lme4's
    sigma^2 (X'V^-1X)^-1 for the fixed effects and the inverse observed
    information for the variance components.  Tests use the normal
    distribution (``use_t=False``), as statsmodels' MixedLM.
    """

    def __init__(self, model: "HLM", fit: HLMFit, *, cov_type: str | None = None):
        self.fit_result = fit
        weight_type = getattr(model, "weight_type", None)
        #: "model" (lme4's vcov) or "sandwich" (clustered by group) for the fixed effects
        self.cov_type = cov_type or ("sandwich" if weight_type == "survey" else "model")
        #: None, "precision" or "survey" (pseudo-likelihood)
        self.weight_type = weight_type
        params = np.concatenate([fit.fe_params, fit.vcomp])
        # normalized_cov_params is assembled on first use (see the property below)
        super().__init__(model, params, normalized_cov_params=None, scale=fit.scale)
        p, k = len(fit.fe_params), len(fit.vcomp)
        self.use_t = False
        self.reml = fit.reml
        self.method = "REML" if fit.reml else "ML"
        self.k_fe = p
        self.k_re = model.k_re
        self.k_vcomp = k
        self._set_fit_attributes(model, fit, model.re_design.n_theta)

    # ------------------------------------------------- parameter covariance
    @cache_readonly
    def cov_vcomp(self) -> np.ndarray:
        """Covariance of the variance components: the inverse observed information.

        From a numerical Hessian of the deviance in (vcomp, sigma^2) at the
        estimates; computed when first needed (``bse``, ``cov_params()``...).
        """
        fit = self.fit_result
        if fit.cov_vcomp is not None:
            return fit.cov_vcomp
        dev = self.model.deviance_function(reml=fit.reml)
        return _vcomp_cov(self.model, dev, fit.fe_params, fit.cov_re, fit.scale)

    # ------------------------------------------------------------- scalars
    @cache_readonly
    def cov_fe_sandwich(self) -> pd.DataFrame:
        """Binder's linearization covariance of the fixed effects, clustered by group
        (:func:`sm_hlm.weights.sandwich_cov_fe`)."""
        from .weights import sandwich_cov_fe
        names = self._fe_names
        return pd.DataFrame(sandwich_cov_fe(self), index=names, columns=names)

    @cache_readonly
    def cov_vcomp_sandwich(self) -> np.ndarray:
        """Binder's sandwich covariance of the variance components (``vcomp`` order),
        clustered by group (:func:`sm_hlm.weights.sandwich_cov_vcomp`; ML fits)."""
        from .weights import sandwich_cov_vcomp
        return sandwich_cov_vcomp(self)[:self.k_vcomp, :self.k_vcomp]

    @property
    def _cov_vcomp_used(self) -> np.ndarray:
        """The sandwich for ML fits with cov_type="sandwich", else the model-based one."""
        if self.cov_type == "sandwich" and not self.reml:
            return self.cov_vcomp_sandwich
        return self.cov_vcomp

    @property
    def _cov_fe_used(self) -> np.ndarray:
        if self.cov_type == "sandwich":
            return self.cov_fe_sandwich.to_numpy()
        return self.fit_result.cov_fe

    @cache_readonly
    def bse_re(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self._cov_vcomp_used)),
                         index=self.model.re_design.vcomp_names(), name="bse_re")

    # ------------------------------------------------------ random effects
    @cache_readonly
    def cov_re(self) -> pd.DataFrame:
        """Psi, the random-effects covariance, labelled."""
        names = list(self.model.re_design.names)
        return pd.DataFrame(self.fit_result.cov_re, index=names, columns=names)

    @cache_readonly
    def vcomp(self) -> pd.Series:
        return pd.Series(self.fit_result.vcomp, index=self.model.re_design.vcomp_names(),
                         name="vcomp")

    def ranef(self, *, cond_var: bool = False) -> pd.DataFrame:
        """BLUPs as a DataFrame, one row per group (lme4's ``ranef``).

        With ``cond_var=True`` (lme4's ``condVar = TRUE``) the columns
        ``condvar(<effect>)`` and ``condsd(<effect>)`` follow: the diagonal
        of each group's conditional covariance
        sigma^2 Lambda (Lambda'Z_j'Z_j Lambda + I)^-1 Lambda' and its square
        root (full matrices: :attr:`random_effects_cov`).
        """
        names = list(self.model.re_design.names)
        out = pd.DataFrame(self.fit_result.blups, index=self.model.group_labels, columns=names)
        if cond_var:
            var = np.diagonal(self.fit_result.blup_cov, axis1=0, axis2=1)     # (m, q)
            for i, n in enumerate(names):
                out[f"condvar({n})"] = var[:, i]
            for i, n in enumerate(names):
                out[f"condsd({n})"] = np.sqrt(var[:, i])
        return out

    @cache_readonly
    def random_effects(self) -> dict[Any, pd.Series]:
        """BLUPs by group, as statsmodels' MixedLM: ``{group: Series}``."""
        df = self.ranef()
        return {g: row for g, row in df.iterrows()}

    @cache_readonly
    def random_effects_cov(self) -> dict[Any, pd.DataFrame]:
        """Conditional covariance of each group's BLUPs, ``{group: DataFrame}``.

        sigma^2 Lambda (Lambda'Z_j'Z_j Lambda + I)^-1 Lambda' (lme4's
        ``condVar``; the uncertainty of beta is not included).
        """
        names = list(self.model.re_design.names)
        bc = self.fit_result.blup_cov
        return {g: pd.DataFrame(bc[:, :, j], index=names, columns=names)
                for j, g in enumerate(self.model.group_labels)}

    @cache_readonly
    def group_coefficients(self) -> pd.DataFrame:
        """Fixed effect plus BLUP per group (lme4's ``coef``; the notes' BETA.LME)."""
        fe = self.fe_params
        out = pd.DataFrame(np.tile(fe.to_numpy(), (self.n_groups, 1)),
                           index=self.model.group_labels, columns=fe.index)
        re = self.ranef()
        for c in re.columns:
            if c in out.columns:
                out[c] = out[c] + re[c]
            else:
                out[c] = re[c]
        return out

    # --------------------------------------------------- fitted, residuals
    def _wrap_rows(self, values: np.ndarray, name: str) -> pd.Series | np.ndarray:
        labels = self.model.data.row_labels
        if labels is None:
            return values
        return pd.Series(values, index=labels, name=name)

    @cache_readonly
    def _fitted_array(self) -> np.ndarray:
        m = self.model
        fixed = m.exog @ self.fit_result.fe_params
        if m.k_re:
            fixed = fixed + np.einsum("ij,ij->i", m.exog_re, self.fit_result.blups[m.group_codes])
        return fixed

    @cache_readonly
    def fittedvalues(self) -> pd.Series | np.ndarray:
        """X beta + Z b, in the caller's row order."""
        return self._wrap_rows(self._fitted_array, "fittedvalues")

    @cache_readonly
    def resid(self) -> pd.Series | np.ndarray:
        """Conditional residuals y - X beta - Z b."""
        return self._wrap_rows(self.model.endog - self._fitted_array, "resid")

    @cache_readonly
    def resid_pearson(self) -> pd.Series | np.ndarray:
        """Pearson residuals sqrt(w_i) (y - X beta - Z b) / sigma (lme4's
        ``residuals(fit, type = "pearson", scaled = TRUE)``; w_i the precision
        weights, 1 without them)."""
        r = (self.model.endog - self._fitted_array) / np.sqrt(self.scale)
        w = getattr(self.model, "weights", None)
        return self._wrap_rows(r if w is None else r * np.sqrt(w), "resid_pearson")

    @cache_readonly
    def resid_scaled(self) -> pd.Series | np.ndarray:
        """Residuals divided by sigma (lme4's ``residuals(fit, scaled=TRUE)``)."""
        return self._wrap_rows((self.model.endog - self._fitted_array) / np.sqrt(self.scale),
                               "resid_scaled")

    def predict(self, exog: Any = None, *, exog_re: Any = None, groups: Any = None,
                random: bool = True, residual_data: Any = None,
                correlated: bool = True, missing: str = "raise") -> pd.Series | np.ndarray:
        """Predictions for the fitted or new data.

        Parameters
        ----------
        exog
            None (the fitted rows), a DataFrame of new data for a formula
            model (fixed design, random design and groups built from it), or
            a fixed-effects design array.
        exog_re, groups
            Random-effects design and group labels of new array data.
        random
            Add the BLUP of each row's group; rows of groups not seen in the
            fit get the population prediction X beta.  With ``random=False``
            the new data need no grouping column.
        residual_data, correlated
            Models with a residual structure: the new rows' time/position
            (and variance covariate) values, ``{name: values}``, when
            ``exog`` is not a DataFrame holding them; ``correlated`` adds
            the conditional mean of each new row's error given its group's
            residuals (see :func:`sm_hlm.prediction.predict_structured`).
        missing
            New rows with a missing or infinite value in a variable used:
            ``"raise"`` (default) raises :class:`~sm_hlm.MissingDataError`
            naming the columns; ``"nan"`` predicts NaN for those rows (as
            statsmodels' ``predict``).
        """
        if getattr(self.model, "_residual_kernel", None) is not None:
            from .prediction import predict_structured
            return predict_structured(self, exog, exog_re=exog_re, groups=groups, random=random,
                                      residual_data=residual_data, correlated=correlated,
                                      missing=missing)
        from .prediction import predict_new
        return predict_new(self, exog, exog_re=exog_re, groups=groups, random=random,
                           missing=missing)

    def get_prediction(self, exog: Any = None, *, exog_re: Any = None, groups: Any = None,
                       random: bool = True, residual_data: Any = None,
                       missing: str = "raise") -> Any:
        """Predictions with standard errors and intervals (statsmodels' PredictionResults).

        Parameters
        ----------
        exog, exog_re, groups, residual_data, missing
            As :meth:`predict` (None: the fitted rows).
        random
            False: the marginal (population) mean x'beta; True: the
            conditional mean x'beta + z'b_j of the row's group (groups not
            in the fit: b = 0 with its prior covariance Psi).

        Returns
        -------
        statsmodels.regression._prediction.PredictionResults
            ``summary_frame(alpha=0.05)`` has ``mean``, ``mean_se``,
            ``mean_ci_lower``/``upper`` and ``obs_ci_lower``/``upper``
            (normal quantiles); ``predicted``, ``se``, ``se_obs``,
            ``conf_int(obs=...)``.  Rows with missing values are NaN.

        Notes
        -----
        With :math:`H = \\mathrm{cov}(\\hat\\beta)` (``cov_fe``) and
        :math:`\\Psi` (``cov_re``), for a row with designs :math:`x, z`:

        * marginal: :math:`\\mathrm{Var}(x'\\hat\\beta) = x'Hx`; a new
          observation adds :math:`z'\\Psi z + \\sigma^2 R_{ii}` (the marginal
          variance of :math:`y`; :math:`R_{ii}` is 1 unless a variance
          covariate says otherwise);
        * conditional, group :math:`j` of the fit: the prediction error
          variance of :math:`x'\\hat\\beta + z'\\hat b_j` (Henderson),

          .. math::

              (x - A_j'z)' H (x - A_j'z) + z' C_j z, \\qquad
              A_j = C_j Z_j'\\tilde X_j / \\sigma^2,

          where :math:`C_j` is the conditional covariance of :math:`b_j`
          (``random_effects_cov``, lme4's condVar) and :math:`Z_j'\\tilde X_j`
          the group's (whitened) cross product; the term in :math:`A_j`
          accounts for the correlation between :math:`\\hat\\beta` and
          :math:`\\hat b_j`.  A new observation adds :math:`\\sigma^2 R_{ii}`.
          With a residual structure, the new row's error is taken as
          independent of the group's residuals (``predict(correlated=False)``).
        """
        from .prediction import get_prediction
        return get_prediction(self, exog, exog_re=exog_re, groups=groups, random=random,
                              residual_data=residual_data, missing=missing)

    # ------------------------------------------------ the notes' quantities
    def marginal_cov(self, group: Any) -> pd.DataFrame:
        """Z_j Psi Z_j' + sigma^2 R_j of one group at the estimates (R_j = I by default)."""
        if getattr(self.model, "_residual_kernel", None) is not None:
            from .residual_results import marginal_cov
            return marginal_cov(self, group)
        return self.model.marginal_cov(group, self.fit_result.cov_re, self.scale)

    def loglike_dense(self) -> float:
        """The ML log-likelihood at the estimates, group by group (slow oracle; unweighted
        models only)."""
        if getattr(self.model, "weight_type", None) is not None:
            raise NotImplementedError("loglike_dense is an oracle for unweighted models")
        if getattr(self.model, "_residual_kernel", None) is not None:
            from .residual_results import loglike_dense
            return loglike_dense(self)
        from .groupwise import marginal_loglike_dense
        return marginal_loglike_dense(self.model, self.fit_result.fe_params,
                                      self.fit_result.cov_re, self.scale)

    # ------------------------------- residual structure (sm_hlm.residual)
    @cache_readonly
    def residual_params(self) -> pd.Series:
        """Residual structure parameters on their natural scale (Phi, Rho,
        correlations ``Corr(s,t)``, ``SD ratio(by=level)``); empty for
        independent errors."""
        from .residual_results import residual_params
        return residual_params(self)

    @cache_readonly
    def bse_residual(self) -> pd.Series:
        """Standard errors of ``residual_params`` (observed information, delta method)."""
        return self.residual_table().iloc[:, 1].rename("bse_residual")

    def residual_table(self, alpha: float = 0.05) -> pd.DataFrame:
        """Estimates, standard errors and (1 - alpha) intervals of the structure parameters.

        Intervals are Wald intervals on an unconstrained scale (2 atanh(Phi),
        Fisher's z, log SD ratio), transformed back, as nlme's ``intervals``.
        """
        from .residual_results import residual_param_table
        return residual_param_table(self, alpha=alpha)

    def conf_int_residual(self, alpha: float = 0.05) -> pd.DataFrame:
        """(1 - alpha) intervals of ``residual_params`` (columns lower, upper)."""
        tab = self.residual_table(alpha=alpha)
        return pd.DataFrame({"lower": tab.iloc[:, 2], "upper": tab.iloc[:, 3]})

    @cache_readonly
    def residual_boundary(self) -> list[str]:
        """Structure parameters that ran to the edge of their range (e.g. Phi -> 1)."""
        from .residual_results import boundary_params
        return boundary_params(self)

    def residual_cov(self, group: Any, *, label: str = "row") -> pd.DataFrame:
        """Sigma_j = sigma^2 S_j R_j S_j of one group, labelled by row (or ``label="time"``)."""
        from .residual_results import residual_cov
        return residual_cov(self, group, label=label)

    @cache_readonly
    def resid_normalized(self) -> pd.Series | np.ndarray:
        """Normalized residuals U_j^{-1}(y_j - X_j beta - Z_j b_j) / sigma with
        Sigma_j = sigma^2 U_j U_j' (nlme's ``type = "normalized"``)."""
        from .residual_results import resid_normalized
        return self._wrap_rows(resid_normalized(self), "resid_normalized")

    # ---------------------------------------- inference (sm_hlm.inference)
    def satterthwaite(self) -> pd.DataFrame:
        """lmerTest's fixed-effects table with Satterthwaite degrees of freedom.

        Columns Estimate, Std. Error, df, t value, Pr(>|t|).
        """
        from .inference import satterthwaite
        return satterthwaite(self)

    def kenward_roger(self, L: Any = None, rhs: Any = 0.0, *, joint: bool = True) -> pd.DataFrame:
        """t/F tests with Kenward-Roger df and adjusted SEs (pbkrtest, lmerTest).

        Without ``L``: Estimate, Std. Error, df, t value, Pr(>|t|) per fixed
        effect.  With ``L`` (array or constraint string): t tests, or one F
        test with pbkrtest's F scaling.  See
        :func:`sm_hlm.kenward_roger.kenward_roger` (ML fits are refitted by
        REML with a warning).
        """
        from .kenward_roger import kenward_roger
        return kenward_roger(self, L, rhs, joint=joint)

    def cov_kenward_roger(self) -> pd.DataFrame:
        """Kenward-Roger adjusted covariance of the fixed effects (pbkrtest's vcovAdj)."""
        from .kenward_roger import cov_kenward_roger
        return cov_kenward_roger(self)

    def conf_int_profile(self, alpha: float = 0.05, *, which: Any = None) -> pd.DataFrame:
        """Profile-likelihood intervals (lme4's ``confint(method="profile")``)."""
        from .inference import conf_int_profile
        return conf_int_profile(self, alpha=alpha, which=which)

    def bootstrap(self, n: int, *, seed: int | None = None, progress: bool = True,
                  alpha: float = 0.05) -> Any:
        """Parametric bootstrap: replicates and percentile intervals."""
        from .inference import bootstrap
        return bootstrap(self, n, seed=seed, progress=progress, alpha=alpha)

    def cov_robust(self, kind: str = "CR2", *, full: bool = False) -> pd.DataFrame:
        """Cluster-robust covariance of the fixed effects (clubSandwich's vcovCR).

        With ``full=True`` the covariance of all ``params`` (the robust block
        for the fixed effects, the model-based one for the variance
        components).  ``t_test``/``wald_test`` accept either as ``cov_p``.
        """
        from .inference import cov_robust
        return cov_robust(self, kind=kind, full=full)

    def coef_test_robust(self, cov_type: str = "CR2") -> pd.DataFrame:
        """Cluster-robust t tests with Satterthwaite df (clubSandwich's coef_test).

        See :func:`sm_hlm.cluster_tests.coef_test_robust`.
        """
        from .cluster_tests import coef_test_robust
        return coef_test_robust(self, cov_type=cov_type)

    def wald_test_robust(self, L: Any, rhs: Any = 0.0, *, cov_type: str = "CR2",
                         test: str = "HTZ") -> pd.DataFrame:
        """Cluster-robust joint test, HTZ small-sample F or chi-square (clubSandwich's
        Wald_test).  See :func:`sm_hlm.cluster_tests.wald_test_robust`."""
        from .cluster_tests import wald_test_robust
        return wald_test_robust(self, L, rhs, cov_type=cov_type, test=test)

    def hausman(self, *, method: str = "classic", cov_type: str | None = None) -> Any:
        """Hausman test of the random-effects estimates against the within estimator.

        ``method="classic"``: Stata's ``hausman fe re``; ``"mundlak"``: the
        robust variant (group means added, cluster-robust Wald test).  See
        :func:`sm_hlm.hausman.hausman`; returns a :class:`~sm_hlm.hausman.HausmanResult`.
        """
        from .hausman import hausman
        return hausman(self, method=method, cov_type=cov_type)

    def _constraint(self, r_matrix: Any) -> Any:
        """A string constraint as (R, q), parsed by patsy over statsmodels' names.

        statsmodels parses strings with the formula engine; formulaic's parser
        rejects names with ``:`` (``"flp:ses = 0"``), so strings are parsed as the
        patsy engine does whichever engine built the design.
        """
        if not isinstance(r_matrix, str):
            return r_matrix
        from patsy import DesignInfo
        lc = DesignInfo(list(map(str, self.model.data.cov_names))).linear_constraint(r_matrix)
        return np.asarray(lc.coefs, float), np.asarray(lc.constants, float).reshape(-1)

    def _embed_cov(self, cov_p: Any) -> Any:
        """A fixed-effects-only ``cov_p`` padded to all params (model-based elsewhere)."""
        if cov_p is None:
            return None
        c = np.asarray(cov_p, dtype=float)
        if c.shape == (self.k_fe, self.k_fe) and self.k_vcomp:
            fullc = np.array(self.cov_params(), dtype=float)
            fullc[:self.k_fe, :self.k_fe] = c
            return fullc
        return c

    def t_test(self, r_matrix: Any, cov_p: Any = None, use_t: bool | None = None) -> Any:
        """statsmodels' t_test; ``cov_p`` may cover the fixed effects only
        (e.g. ``results.cov_robust("CR2")``)."""
        return super().t_test(self._constraint(r_matrix), cov_p=self._embed_cov(cov_p),
                              use_t=use_t)

    def wald_test(self, r_matrix: Any, cov_p: Any = None, invcov: Any = None,
                  use_f: bool | None = None, df_constraints: Any = None,
                  scalar: bool = True) -> Any:
        """statsmodels' wald_test (``scalar=True`` by default, as statsmodels);
        ``cov_p`` may cover the fixed effects only."""
        return super().wald_test(self._constraint(r_matrix), cov_p=self._embed_cov(cov_p),
                                 invcov=invcov,
                                 use_f=use_f, df_constraints=df_constraints, scalar=scalar)

    def wald_test_terms(self, skip_single: bool = False, extra_constraints: Any = None,
                        combine_terms: Any = None, scalar: bool = True) -> Any:
        """One joint Wald test per fixed-effects term (statsmodels' ``wald_test_terms``).

        A factor is one test with as many constraints as it has columns;
        ``flp:ses`` is one test.  Variance components are not tested.
        ``skip_single`` skips 1-df terms; ``combine_terms`` (names) adds a
        joint test of every term whose name contains the string;
        ``extra_constraints`` is a list of ``(name, r_matrix)``.  Returns
        statsmodels' ``WaldTestResults`` (``table``: statistic, pvalue,
        df_constraint; chi2 tests, as ``use_t`` is False).
        """
        from statsmodels.stats.contrast import WaldTestResults

        from .terms import fixed_terms

        identity = np.eye(len(self.params))
        rows, index = [], []
        tests: list[tuple[str, np.ndarray]] = []
        combined: dict[str, list[np.ndarray]] = {c: [] for c in (combine_terms or [])}
        for t in fixed_terms(self.model):
            r = identity[list(t.columns)]
            for c in combined:
                if c in t.name:
                    combined[c].append(r)
            if skip_single and r.shape[0] == 1:
                continue
            tests.append((t.name, r))
        for c, mats in combined.items():
            if not mats:
                raise ValueError(f"combine_terms: no term name contains {c!r}")
            tests.append((c, np.vstack(mats)))
        tests += [(str(n), np.atleast_2d(np.asarray(r, dtype=float)))
                  for n, r in (extra_constraints or [])]
        for name, r in tests:
            wt = self.wald_test(r, scalar=scalar)
            rows.append([wt.statistic, wt.pvalue, r.shape[0]])
            index.append(name)
        table = pd.DataFrame(rows, index=index, columns=["statistic", "pvalue", "df_constraint"])
        return WaldTestResults(None, "chi2", None, table=table)

    # ------------------------------------------ lme4's toolbox (sm_hlm.toolbox)
    def refit(self, endog: Any) -> Any:
        """The same model fitted to a new response (lme4's ``refit``); see
        :func:`sm_hlm.toolbox.refit`."""
        from .toolbox import refit
        return refit(self, endog)

    def simulate(self, nsim: int = 1, *, seed: Any = None, use_u: bool = False) -> pd.DataFrame:
        """Responses simulated from the fitted model (lme4's ``simulate``), one
        column per simulation; see :func:`sm_hlm.toolbox.simulate`."""
        from .toolbox import simulate
        return simulate(self, nsim, seed=seed, use_u=use_u)

    def drop1(self, *, test: str = "Chisq") -> pd.DataFrame:
        """Tests of dropping each droppable fixed-effects term (lme4's / lmerTest's
        ``drop1``); see :func:`sm_hlm.toolbox.drop1`."""
        from .toolbox import drop1
        return drop1(self, test=test)

    # ------------------------------------------------------ data and pickles
    def remove_data(self) -> None:
        """Remove the data arrays (statsmodels' ``remove_data``).

        Keeps the estimates, the designs for new data (``predict`` and
        ``get_prediction`` of a DataFrame or arrays) and what ``summary()``
        needs (the scaled-residual quantiles are computed first).  Methods
        that need the data (``fittedvalues``, ``resid``, ``satterthwaite``,
        ``refit``, ``simulate``...) raise afterwards.
        """
        from .summary import residual_quantiles
        if "_resid_quantiles" not in self.__dict__:
            self.__dict__["_resid_quantiles"] = residual_quantiles(self)
        if not hasattr(self, "_cache"):
            self._cache = {}
        self._data_attr = list(getattr(self, "_data_attr", []))
        self._data_in_cache = ["fittedvalues", "resid", "resid_scaled", "resid_pearson",
                               "_fitted_array", "resid_normalized"]
        self._data_attr_model = ["exog_re", "groups", "group_codes", "_order", "data.frame",
                                 "data.row_labels", "data.exog_re", "data.groups", "row_index"]
        super().remove_data()

    def save(self, fname: Any, remove_data: bool = False) -> None:
        """Pickle the results to ``fname`` (a path or a binary file handle).

        As statsmodels' ``save``, but the whole pickle is made in memory
        first and a path is written through a temporary file renamed into
        place: a failure leaves no truncated (or overwritten) file.  Load with
        :meth:`load` (or ``pickle``); formula models rebuild their designs for
        new data on load (:mod:`sm_hlm.formula.pickling`).
        """
        if remove_data:
            self.remove_data()
        save_atomic(self, fname)

    # --------------------------------- variance shares (sm_hlm.diagnostics)
    def icc(self) -> pd.Series:
        """Intraclass correlation(s)."""
        from .diagnostics import icc
        return icc(self)

    def r2(self) -> pd.Series:
        """Marginal and conditional R^2 (Nakagawa & Schielzeth)."""
        from .diagnostics import r2
        return r2(self)

    def reliability(self) -> pd.DataFrame:
        """Reliability of each group's OLS estimates."""
        from .diagnostics import reliability
        return reliability(self)

    def shrinkage(self) -> pd.DataFrame:
        """Shrinkage weights of the BLUPs towards the fixed effects, by group."""
        from .diagnostics import shrinkage
        return shrinkage(self)

    # ------------------------------------------------- plots (sm_hlm.plots)
    def plot_caterpillar(self, **kwargs: Any) -> Any:
        """Caterpillar plot of the BLUPs with intervals; returns a Figure."""
        from .plots import caterpillar
        return caterpillar(self, **kwargs)

    def plot_shrinkage(self, **kwargs: Any) -> Any:
        """Per-group OLS vs BLUP-based coefficients (the notes' plot); a Figure."""
        from .plots import shrinkage_plot
        return shrinkage_plot(self, **kwargs)

    def plot_residuals(self, **kwargs: Any) -> Any:
        """Residual diagnostics; returns a Figure."""
        from .plots import residual_plots
        return residual_plots(self, **kwargs)

    # ------------------------------------- two-level form (sm_hlm.levels)
    def level_equations(self, *, ddf: str | None = None, float_format: str = "%.4f") -> Any:
        """Level-1/level-2 equations and a gamma table per level-2 equation.

        Only for models built by :meth:`HLM.from_levels`.  Returns a
        :class:`sm_hlm.levels.LevelEquations` (``.tables`` dict of DataFrames,
        ``.frame`` MultiIndex DataFrame, ``.variance``, ``as_text()``); see
        :func:`sm_hlm.levels.level_equations` (``ddf`` None, "hlm" or
        "satterthwaite").
        """
        from .levels import level_equations
        return level_equations(self, ddf=ddf, float_format=float_format)

    # ------------------------------------------------------------- summary
    def summary(self, *, alpha: float = 0.05, ddf: str | None = None, **kwargs: Any):
        """An lme4-style summary as a statsmodels ``summary2.Summary``."""
        from .summary import make_summary
        return make_summary(self, alpha=alpha, ddf=ddf, **kwargs)

    summary2 = summary


def save_atomic(obj: Any, fname: Any) -> None:
    """Pickle ``obj`` in memory, then write it to a binary handle or, through a
    temporary file renamed into place, to a path (no truncated file on failure)."""
    import os
    import pickle
    import tempfile

    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if hasattr(fname, "write"):
        fname.write(payload)
        return
    path = os.fspath(fname)
    fd, tmp = tempfile.mkstemp(prefix=".sm_hlm-", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class HLMResultsWrapper(LikelihoodResultsWrapper):
    _attrs: dict[str, str] = {"bse": "columns", "params": "columns", "tvalues": "columns",
                              "pvalues": "columns"}
    _wrap_attrs = wrap.union_dicts(LikelihoodResultsWrapper._wrap_attrs, _attrs)
    _methods: dict[str, str] = {}
    _wrap_methods = wrap.union_dicts(LikelihoodResultsWrapper._wrap_methods, _methods)

    def save(self, fname: Any, remove_data: bool = False) -> None:
        """Pickle the results (see :meth:`HLMResults.save`)."""
        if remove_data:
            self.remove_data()
        save_atomic(self, fname)


wrap.populate_wrapper(HLMResultsWrapper, HLMResults)
