"""Results of a multilevel (several grouping factors) fit, per factor in lme4's layout."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap
from statsmodels.base.model import LikelihoodResultsWrapper

from .._compat import cache_readonly
from ..engine.blocked import BlockedDeviance
from ..engine.deviance import LOG2PI
from ..results_base import MixedResultsBase
from .fit import MultilevelFit

if TYPE_CHECKING:
    from .model import MultilevelHLM

__all__ = ["MultilevelResults", "MultilevelResultsWrapper"]


class MultilevelResults(MixedResultsBase):
    """Results of :meth:`sm_hlm.multilevel.MultilevelHLM.fit`.

    ``params`` holds the fixed effects followed by the free entries of every
    factor's random-effects covariance (``Var(x | school)``,
    ``Cov(Intercept, x | school:klass)``); ``cov_params()`` is block
    diagonal: lme4's vcov for the fixed effects and the inverse observed
    information of the variance components.  Per-factor outputs are dicts
    keyed by factor, innermost first as lme4 prints them; with one factor
    ``cov_re`` is a DataFrame as for :class:`sm_hlm.HLMResults`.
    """

    def __init__(self, model: "MultilevelHLM", fit: MultilevelFit, *,
                 compute_vcomp_cov: bool = True):
        self.fit_result = fit
        self._compute_vcomp_cov = bool(compute_vcomp_cov)
        vcomp = np.concatenate([c[model._vcomp_index(t)] for t, c in
                                zip(model.re_terms, fit.cov_re)]) if model.re_terms else np.zeros(0)
        self._vcomp_values = vcomp
        params = np.concatenate([fit.fe_params, vcomp])
        super().__init__(model, params, normalized_cov_params=None, scale=fit.scale)
        p = len(fit.fe_params)
        self.use_t = False
        self.reml = fit.reml
        self.method = "REML" if fit.reml else "ML"
        self.cov_type = "model"
        self.k_fe = p
        self.k_vcomp = len(vcomp)
        self._set_fit_attributes(model, fit, model.layout.n_theta)

    # ------------------------------------------------- parameter covariance
    def _vcomp_deviance(self):
        """The deviance as a function of (vcomp, sigma^2), beta fixed (ML) or
        integrated out (REML); NaN where Psi is not positive semi-definite."""
        model, fit = self.model, self.fit_result
        if model.residual is not None:      # at the structure's estimate (whitened rows)
            X, y, terms = model.residual.whitened(fit.residual_free)
        else:
            X, y, terms = model.exog, model.endog, model.re_terms
        n, p = int(model.nobs), model.k_fe
        r = y - X @ fit.fe_params
        d_r = BlockedDeviance(terms, np.zeros((len(y), 0)), r, reml=False)
        d_full = BlockedDeviance(terms, X, y, reml=True) if fit.reml else None
        idx = [model._vcomp_index(t) for t in terms]
        sizes = [len(i[0]) for i in idx]

        def theta_of(v: np.ndarray, s: float) -> np.ndarray:
            out, pos = [], 0
            for t, (rr, cc), k in zip(terms, idx, sizes):
                cov = np.zeros((t.S, t.S))
                cov[rr, cc] = v[pos:pos + k]
                cov[cc, rr] = v[pos:pos + k]
                pos += k
                lam = np.zeros_like(cov)
                o = 0
                for b in t.block_sizes:
                    sl = slice(o, o + b)
                    lam[sl, sl] = np.linalg.cholesky(cov[sl, sl] / s)
                    o += b
                out += [lam[i, j] for i, j in t.theta_index()]
            return np.asarray(out)

        def f(x: np.ndarray) -> float:
            s = x[-1]
            if s <= 0:
                return np.nan
            try:
                th = theta_of(x[:-1], s)
            except np.linalg.LinAlgError:
                return np.nan
            if fit.reml:
                ff = d_full.factor(th)
                if ff is None:
                    return np.nan
                return float((n - p) * (LOG2PI + np.log(s)) + ff.logdet_L + ff.logdet_RX
                             + ff.pwrss / s)
            fr = d_r.factor(th)
            if fr is None:
                return np.nan
            return float(n * (LOG2PI + np.log(s)) + fr.logdet_L + fr.pwrss / s)

        return f

    @cache_readonly
    def cov_vcomp(self) -> np.ndarray:
        """Inverse observed information of the variance components (``vcomp`` order).

        A Richardson-extrapolated numerical Hessian of the deviance in
        (vcomp, sigma^2) at the estimates; NaN at a singular fit or when
        ``fit(compute_vcomp_cov=False)``... is asked for explicitly.
        """
        from ..engine.numdiff import hessian_richardson

        k = self.k_vcomp
        if k == 0:
            return np.zeros((0, 0))
        if self.singular:
            return np.full((k, k), np.nan)
        x = np.append(self._vcomp_values, self.fit_result.scale)
        try:
            H = hessian_richardson(self._vcomp_deviance(), x, d=0.01)
            cov = np.linalg.inv(0.5 * H)
        except (np.linalg.LinAlgError, ValueError):
            return np.full((k, k), np.nan)
        if not np.all(np.isfinite(cov)):
            return np.full((k, k), np.nan)
        return cov[:k, :k]

    @cache_readonly
    def bse_re(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.cov_vcomp)), index=self.model.vcomp_names(),
                         name="bse_re")

    # ------------------------------------------------------ random effects
    def _term_of(self) -> dict[str, int]:
        return {t.factor: k for k, t in enumerate(self.model.re_terms)}

    @cache_readonly
    def cov_re(self) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Psi_k, labelled: ``{factor: DataFrame}`` (a DataFrame with one factor)."""
        out = {}
        pos = self._term_of()
        for f in self.model.factor_names:
            t = self.model.re_terms[pos[f]]
            out[f] = pd.DataFrame(self.fit_result.cov_re[pos[f]], index=list(t.names),
                                  columns=list(t.names))
        return next(iter(out.values())) if len(out) == 1 else out

    @cache_readonly
    def vcomp(self) -> pd.Series:
        return pd.Series(self._vcomp_values, index=self.model.vcomp_names(), name="vcomp")

    def ranef(self, *, cond_var: bool = False) -> dict[str, pd.DataFrame]:
        """Conditional modes per factor, ``{factor: DataFrame}`` (lme4's ``ranef``).

        With ``cond_var=True`` the columns ``condvar(<effect>)`` and
        ``condsd(<effect>)`` follow (lme4's ``condVar = TRUE``: the diagonal
        of each level's conditional covariance, :attr:`random_effects_cov`).
        """
        out = {}
        pos = self._term_of()
        for f in self.model.factor_names:
            k = pos[f]
            t = self.model.re_terms[k]
            df = pd.DataFrame(self.fit_result.blups[k], index=self.model.factors[f].labels,
                              columns=list(t.names))
            df.index.name = f
            if cond_var:
                var = np.diagonal(self.fit_result.blup_cov[k], axis1=1, axis2=2)
                for i, n in enumerate(t.names):
                    df[f"condvar({n})"] = var[:, i]
                for i, n in enumerate(t.names):
                    df[f"condsd({n})"] = np.sqrt(var[:, i])
            out[f] = df
        return out

    @cache_readonly
    def random_effects(self) -> dict[str, pd.DataFrame]:
        """Conditional modes per factor: ``{factor: DataFrame}`` (one row per level)."""
        return self.ranef()

    @cache_readonly
    def random_effects_cov(self) -> dict[str, dict[Any, pd.DataFrame]]:
        """Conditional covariance of each level's effects, ``{factor: {level: DataFrame}}``."""
        out = {}
        pos = self._term_of()
        for f in self.model.factor_names:
            k = pos[f]
            names = list(self.model.re_terms[k].names)
            bc = self.fit_result.blup_cov[k]
            out[f] = {g: pd.DataFrame(bc[j], index=names, columns=names)
                      for j, g in enumerate(self.model.factors[f].labels)}
        return out

    @cache_readonly
    def group_coefficients(self) -> dict[str, pd.DataFrame]:
        """Fixed effects plus each factor's conditional modes (lme4's ``coef``)."""
        fe = self.fe_params
        out = {}
        for f, re in self.ranef().items():
            df = pd.DataFrame(np.tile(fe.to_numpy(), (len(re), 1)), index=re.index,
                              columns=fe.index)
            for c in re.columns:
                df[c] = df[c] + re[c] if c in df.columns else re[c]
            out[f] = df
        return out

    # --------------------------------------------------- fitted, residuals
    def _random_part(self) -> np.ndarray:
        out = np.zeros(len(self.model.endog))
        for t, b in zip(self.model.re_terms, self.fit_result.blups):
            out += np.einsum("ij,ij->i", t.z, b[t.refs])
        return out

    def _wrap_rows(self, values: np.ndarray, name: str) -> pd.Series | np.ndarray:
        idx = getattr(self.model, "row_index", None)
        return pd.Series(values, index=idx, name=name) if idx is not None else values

    @cache_readonly
    def fittedvalues(self) -> pd.Series | np.ndarray:
        """Conditional fitted values X beta + sum_k Z_k b_k."""
        return self._wrap_rows(self.model.exog @ self.fit_result.fe_params + self._random_part(),
                               "fitted")

    @cache_readonly
    def resid(self) -> pd.Series | np.ndarray:
        """Conditional residuals y - fitted."""
        return self._wrap_rows(self.model.endog - np.asarray(self.fittedvalues), "resid")

    @cache_readonly
    def resid_scaled(self) -> pd.Series | np.ndarray:
        """Residuals divided by sigma (lme4's scaled residuals)."""
        return self._wrap_rows(np.asarray(self.resid) / np.sqrt(self.scale), "resid_scaled")

    def predict(self, exog: Any = None, *, groups: Any = None, exog_re: Any = None,
                random: bool = True, missing: str = "raise") -> pd.Series | np.ndarray:
        """Predictions for the fitted rows or new data.

        Parameters
        ----------
        exog
            None (the fitted rows), a DataFrame of new data for a formula
            model, or a fixed-effects design array (with ``groups`` and
            ``exog_re`` as in the constructor).
        random
            Add each row's conditional modes.  A level not seen in the fit
            contributes zero for its factor only: a new class in a known
            school gets the school's effect.  ``random=False`` needs no
            grouping columns.
        missing
            ``"raise"`` (default) or ``"nan"``: NaN for new rows with a
            missing value in a variable used.
        """
        from .prediction import predict_multilevel
        return predict_multilevel(self, exog, groups=groups, exog_re=exog_re, random=random,
                                  missing=missing)

    # ------------------------------------------------------ decompositions
    def icc(self) -> pd.DataFrame:
        """The variance decomposition of the random intercepts, per level.

        ``variance``: the intercept variance of each factor and the residual
        variance; ``share``: its share of their sum (the HLM3 decomposition);
        ``icc``: for nested factors, the correlation of two rows that share
        the factor's level (its variance plus those of the factors it is
        nested in, over the total); for crossed factors the share.

        Notes
        -----
        Random slopes make the decomposition depend on the covariates; as in
        the HLM software only the intercept variances enter here.
        """
        model = self.model
        pos = self._term_of()
        rows = {}
        for f in model.factor_names:
            t = model.re_terms[pos[f]]
            name = next((n for n in t.names if n in ("Intercept", "(Intercept)")), None)
            if name is None:
                continue
            i = t.names.index(name)
            rows[f] = self.fit_result.cov_re[pos[f]][i, i]
        if not rows:
            raise ValueError("no random intercepts: the variance decomposition needs at least "
                             "one (1 | factor) term")
        total = sum(rows.values()) + self.scale
        var = pd.Series({**rows, "Residual": self.scale}, name="variance")
        out = pd.DataFrame({"variance": var, "share": var / total})
        icc = {}
        if model.nesting is not None:
            chain = [model.re_terms[k].factor for k in model.nesting]    # outer -> inner
            acc = 0.0
            for f in chain:
                acc += rows.get(f, 0.0)
                if f in rows:
                    icc[f] = acc / total
        else:
            icc = {f: v / total for f, v in rows.items()}
        out["icc"] = pd.Series(icc)
        return out

    @cache_readonly
    def residual_params(self) -> pd.Series:
        """The residual structure's parameters on their natural scale (Phi, Rho, SD
        ratios, correlations; empty for independent errors)."""
        nr = self.model.residual
        if nr is None:
            return pd.Series(dtype=float, name="residual_params")
        return nr.residual_params(self.fit_result.residual_free)

    def conf_int_profile(self, alpha: float = 0.05, *, which: Any = None) -> pd.DataFrame:
        """Profile-likelihood intervals of the SDs, correlations, sigma and fixed effects
        (lme4's ``confint(method = "profile")``); see
        :func:`sm_hlm.multilevel.profile.conf_int_profile`."""
        from .profile import conf_int_profile
        return conf_int_profile(self, alpha, which=which)

    def level_equations(self) -> dict[str, pd.DataFrame]:
        """Gamma tables of a three-level model built by ``HLM.from_levels`` (one per
        level-2 coefficient; see :func:`sm_hlm.multilevel.levels.level_equations3`)."""
        from .levels import level_equations3
        return level_equations3(self)

    def reliability(self) -> pd.DataFrame:
        """Reliability of each level's unit means (random intercepts), as HLM3 reports it.

        For a nested model with factors from innermost (level 2) to outermost:
        at the innermost factor, unit j's lambda_j = tau_2 / (tau_2 + sigma^2 / n_j);
        one level up, unit k's mean has the sampling variance
        v_k = 1 / sum_j 1 / (tau_2 + sigma^2 / n_jk) over its inner units, and
        lambda_k = tau_3 / (tau_3 + v_k); and so on outwards.  Returns a
        DataFrame indexed by factor: the mean reliability over units and the
        number of units (only factors with a random intercept; slopes are not
        included).

        Raises
        ------
        NotImplementedError
            For crossed factors, where the unit means of one factor mix the
            other factor's effects.
        """
        model = self.model
        if model.nesting is None:
            raise NotImplementedError("reliability() is defined for nested factors; with "
                                      "crossed factors a unit mean mixes the other factor's "
                                      "effects (use ranef(cond_var=True) for each level's "
                                      "conditional variances)")
        chain = [model.re_terms[k] for k in model.nesting][::-1]       # inner -> outer
        rows = {}
        var = None          # sampling variance of each unit mean at the previous level
        prev_codes = None
        for t in chain:
            k = self._term_of()[t.factor]
            name = next((n for n in t.names if n in ("Intercept", "(Intercept)")), None)
            tau = (self.fit_result.cov_re[k][t.names.index(name), t.names.index(name)]
                   if name is not None else None)
            if var is None:
                n = model.factors[t.factor].sizes.astype(float)     # rows per level
                v = self.scale / n
            else:
                # units of the previous (inner) factor within each unit of this one
                parent = np.zeros(len(var), dtype=np.intp)
                parent[prev_codes] = t.refs
                prec = np.bincount(parent, weights=1.0 / var, minlength=t.n_levels)
                v = 1.0 / prec
            if tau is not None:
                lam = tau / (tau + v)
                rows[t.factor] = {"reliability": float(np.mean(lam)), "units": t.n_levels}
                var = tau + v
            else:
                var = v
            prev_codes = t.refs
        if not rows:
            raise ValueError("no random intercepts: reliability needs a (1 | factor) term")
        return pd.DataFrame(rows).T.astype({"units": int})

    # ----------------------------------------------------------- inference
    def satterthwaite(self) -> pd.DataFrame:
        """Fixed-effects t tests with lmerTest's Satterthwaite df.

        See :func:`sm_hlm.multilevel.inference.satterthwaite`.
        """
        from .inference import satterthwaite
        return satterthwaite(self)

    def cov_robust(self, kind: str = "CR2", *, cluster: Any = None) -> pd.DataFrame:
        """Cluster-robust covariance of the fixed effects (clubSandwich's vcovCR).

        Clusters: the outermost nested factor, or ``cluster`` (required for
        crossed factors).  See :func:`sm_hlm.multilevel.inference.cov_robust`.
        """
        from .inference import cov_robust
        return cov_robust(self, kind, cluster=cluster)

    def coef_test_robust(self, cov_type: str = "CR2", *, cluster: Any = None) -> pd.DataFrame:
        """Cluster-robust t tests with Satterthwaite df (clubSandwich's coef_test).

        See :func:`sm_hlm.multilevel.inference.coef_test_robust`.
        """
        from .inference import coef_test_robust
        return coef_test_robust(self, cov_type, cluster=cluster)

    def simulate(self, nsim: int = 1, *, seed: Any = None) -> pd.DataFrame:
        """Responses simulated from the fitted model (lme4's ``simulate``), one column
        per simulation; see :func:`sm_hlm.multilevel.inference.simulate`."""
        from .inference import simulate
        return simulate(self, nsim, seed=seed)

    def refit(self, endog: Any) -> Any:
        """The same model fitted to a new response (lme4's ``refit``); see
        :func:`sm_hlm.multilevel.inference.refit`."""
        from .inference import refit
        return refit(self, endog)

    def bootstrap(self, n: int, *, seed: int | None = None, progress: bool = True,
                  alpha: float = 0.05) -> Any:
        """Parametric bootstrap: replicates and percentile intervals; see
        :func:`sm_hlm.multilevel.inference.bootstrap`."""
        from .inference import bootstrap
        return bootstrap(self, n, seed=seed, progress=progress, alpha=alpha)

    # ------------------------------------------------------------- summary
    def summary(self, *, alpha: float = 0.05, float_format: str = "%.4f",
                correlation: bool | None = None, ddf: str | None = None):
        """An lme4-style summary as a statsmodels ``summary2.Summary``: every factor in
        the random-effects table and ``groups: a:b, m1; a, m2`` after the number of rows.

        ``ddf="satterthwaite"``: t tests of the fixed effects with lmerTest's
        Satterthwaite df (:meth:`satterthwaite`) instead of z tests.
        """
        from .summary import make_multilevel_summary
        return make_multilevel_summary(self, alpha=alpha, float_format=float_format,
                                       correlation=correlation, ddf=ddf)

    summary2 = summary

    def plot_caterpillar(self, factor: str | None = None, **kwargs: Any) -> Any:
        """Caterpillar plots of the conditional modes with conditional-SD intervals.

        One Figure for ``factor``; ``{factor: Figure}`` for every factor when
        ``factor`` is None.  ``kwargs`` as :func:`sm_hlm.plots.caterpillar`
        (``term``, ``alpha``, ``sort``, ``ax``).
        """
        from ..plots import draw_caterpillar
        names = self.model.factor_names
        if factor is not None and factor not in names:
            raise KeyError(f"no grouping factor {factor!r}; the model has {names}")
        figs = {}
        for f, df in self.ranef(cond_var=True).items():
            if factor is not None and f != factor:
                continue
            effects = [c for c in df.columns if not c.startswith("cond")]
            se = df[[f"condsd({c})" for c in effects]]
            se.columns = effects
            figs[f] = draw_caterpillar(df[effects], se, f, **kwargs)
        return figs[factor] if factor is not None else figs


class MultilevelResultsWrapper(LikelihoodResultsWrapper):
    _attrs: dict[str, str] = {"bse": "columns", "params": "columns", "tvalues": "columns",
                              "pvalues": "columns"}
    _wrap_attrs = wrap.union_dicts(LikelihoodResultsWrapper._wrap_attrs, _attrs)
    _methods: dict[str, str] = {}
    _wrap_methods = wrap.union_dicts(LikelihoodResultsWrapper._wrap_methods, _methods)


wrap.populate_wrapper(MultilevelResultsWrapper, MultilevelResults)
