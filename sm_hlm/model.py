"""The HLM model class: two-level linear mixed models by ML and REML.

    y_j = X_j beta + Z_j b_j + e_j,   b_j ~ N(0, Psi),   e_j ~ N(0, sigma^2 I),

for independent groups j = 1..m.  ``HLM`` follows statsmodels'
``LikelihoodModel`` conventions (and ``MixedLM``'s signature); its
``from_formula`` also accepts lme4's ``(expr | group)`` terms.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.base.model import LikelihoodModel

from . import groupwise
from .data import (check_columns, check_numeric_response, factorize_sorted, formula_variables,
                   handle_missing)
from .design import RandomEffectsDesign, RandomEffectsTerm
from .deviance import ProfiledDeviance, SufficientStats
from .exceptions import IdentificationError, SingularFitWarning, ConvergenceWarning
from .formula.parse import RandomTermSpec, parse_formula
from .linalg import group_crossprod, sequential_rank_cholesky
from .optimizer import minimize_bobyqa

__all__ = ["HLM"]


def _as_2d_frame(x: Any, default_prefix: str) -> pd.DataFrame | np.ndarray:
    if isinstance(x, pd.Series):
        return x.to_frame()
    if isinstance(x, pd.DataFrame):
        return x
    arr = np.asarray(x)
    return arr[:, None] if arr.ndim == 1 else arr


class HLM(LikelihoodModel):
    """Two-level hierarchical linear (linear mixed-effects) model.

    Parameters
    ----------
    endog : array_like, shape (n,)
        The response.
    exog : array_like, shape (n, p)
        Fixed-effects design X (include a constant column yourself, as in
        statsmodels).
    groups : array_like, shape (n,)
        Group labels (the level-2 units).
    exog_re : array_like, shape (n, q), optional
        Random-effects design Z.  Defaults to a random intercept.
    re_terms : sequence of RandomEffectsTerm, optional
        How Z's columns split into independent blocks (one correlated block
        of all columns when omitted).  Built by :meth:`from_formula`.
    missing : {"none", "raise", "drop"}
        NaN/inf handling.  "none" and "raise" raise an error naming the
        column; "drop" drops the rows and warns with their number.
    residual : ResidualStructure, optional
        Covariance of the within-group errors (:mod:`sm_hlm.residual`):
        ``AR1(time=...)``, ``ContinuousAR1``, ``Exchangeable``,
        ``Unstructured(position=...)``, ``Heteroscedastic(by=...)`` and their
        products; independent errors by default.  With this constructor its
        variables are arrays aligned with the rows (``AR1(time=t)``);
        :meth:`from_formula` also accepts column names.

    Notes
    -----
    Marginally y_j ~ N(X_j beta, V_j) with V_j = Z_j Psi Z_j' + sigma^2 R_j
    (R_j = I by default).  Writing Psi = sigma^2 Lambda Lambda' (Lambda lower
    triangular, block diagonal over terms), the optimiser works on the free
    entries theta of Lambda (and the residual structure's parameters); beta
    and sigma^2 are profiled out (see :mod:`sm_hlm.deviance` and
    :mod:`sm_hlm.whitening`).  Estimates match lme4's ``lmer`` (and nlme's
    ``lme``/``gls`` with a residual structure).
    """

    _formula_max_endog = 1

    def __init__(self, endog: Any, exog: Any, groups: Any, exog_re: Any = None, *,
                 re_terms: Sequence[RandomEffectsTerm] | None = None,
                 missing: str = "none", residual: Any = None, **kwargs: Any):
        if groups is None:
            raise TypeError("groups is required: the group label of every row")
        if isinstance(groups, str):
            raise TypeError(f"groups={groups!r} is a column name; pass the column itself, or use "
                            "HLM.from_formula(..., groups=...) with a DataFrame")
        n = len(endog) if hasattr(endog, "__len__") else 0
        if n == 0:
            raise ValueError("empty data: the response has no rows")
        if exog is None:
            raise TypeError("exog is required (use a column of ones for an intercept-only model)")
        exog = _as_2d_frame(exog, "x")
        if exog_re is None:
            exog_re = (pd.DataFrame({"Intercept": np.ones(n)}, index=getattr(exog, "index", None))
                       if isinstance(exog, pd.DataFrame) else np.ones((n, 1)))
        exog_re = _as_2d_frame(exog_re, "z")
        lengths = {"endog": n, "exog": len(exog), "groups": len(groups), "exog_re": len(exog_re)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"inputs differ in length: {lengths}")
        endog_name = getattr(endog, "name", None) or "endog"
        check_numeric_response(endog if hasattr(endog, "dtype") else np.asarray(endog), str(endog_name))
        index = getattr(endog, "index", None)
        from .residual import as_structure
        residual = as_structure(residual)
        res_vals = {} if residual is None else {
            f"residual {role}": v for role, v in residual.values(n).items()}
        keep = handle_missing({str(endog_name): endog, "exog": exog, "groups": groups,
                               "exog_re": exog_re, **res_vals}, missing, index=index)
        self.n_dropped = 0 if keep is None else int((~keep).sum())
        if keep is not None:
            def take(a: Any) -> Any:
                return a[keep] if isinstance(a, (pd.Series, pd.DataFrame)) else np.asarray(a)[keep]
            endog, exog, groups, exog_re = take(endog), take(exog), take(groups), take(exog_re)
            residual = residual.subset(keep) if residual is not None else None
            if len(endog) == 0:
                raise ValueError("empty data: no rows left after dropping missing values")
        super().__init__(endog, exog, groups=groups, exog_re=exog_re, missing="none", **kwargs)
        self.exog = np.asarray(self.exog, dtype=float)
        self.endog = np.asarray(self.endog, dtype=float)
        self.exog_re = np.asarray(self.exog_re, dtype=float)
        if isinstance(exog_re, pd.DataFrame):
            self.exog_re_names = [str(c) for c in exog_re.columns]
        else:
            # unnamed columns: a column of ones is the intercept, the others z0, z1, ...
            self.exog_re_names = ["Intercept" if np.all(col == 1.0) else f"z{i}"
                                  for i, col in enumerate(self.exog_re.T)]
        self.group_name = str(getattr(groups, "name", None) or "group")
        if re_terms is None:
            re_terms = ([RandomEffectsTerm(self.group_name, tuple(self.exog_re_names))]
                        if self.exog_re.shape[1] else [])
        self.re_design = RandomEffectsDesign(re_terms)
        if self.re_design.q != self.exog_re.shape[1]:
            raise ValueError(f"re_terms describe {self.re_design.q} columns but exog_re has "
                             f"{self.exog_re.shape[1]}")
        self.data.param_names = list(self.exog_names) + self.re_design.vcomp_names()
        codes, labels = factorize_sorted(self.groups)
        self.group_codes = codes
        self.group_labels = labels
        self.n_groups = len(labels)
        self.k_fe = self.exog.shape[1]
        self.k_re = self.re_design.q
        self.nobs = float(len(self.endog))
        self.df_model = self.k_fe - 1 if self.k_constant else self.k_fe
        self.df_resid = self.nobs - self.k_fe
        self._order = np.argsort(codes, kind="stable")
        self._sorted = bool(np.all(self._order == np.arange(len(codes))))
        counts = np.bincount(codes, minlength=self.n_groups)
        self.group_sizes = pd.Series(counts, index=labels, name="nobs")
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
        self._stats = self._sufficient_stats()
        self._check_identifiable()
        #: the residual structure (None: independent errors, the plain path)
        self.residual = None if residual is None or residual.is_independent else residual
        self._residual_kernel = None
        if self.residual is not None:
            from .whitening import ResidualKernel
            self._residual_kernel = ResidualKernel(self, self.residual)

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """patsy's DesignInfo does not pickle: the fixed design is stored as its
        plain description (:mod:`sm_hlm.formula.pickling`) and rebuilt on load."""
        from .formula.pickling import pickle_design
        d = dict(self.__dict__)
        if "fixed_design_info" in d:
            d["fixed_design_info"] = pickle_design(d["fixed_design_info"])
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        from .formula.pickling import unpickle_design
        if "fixed_design_info" in d:
            d = dict(d)
            d["fixed_design_info"] = unpickle_design(d["fixed_design_info"])
        self.__dict__.update(d)

    # ------------------------------------------------------------------ data
    def _sorted_rows(self, a: np.ndarray) -> np.ndarray:
        return a if self._sorted else a[self._order]

    def _sufficient_stats(self) -> SufficientStats:
        X = self._sorted_rows(self.exog)
        y = self._sorted_rows(self.endog)
        W = np.column_stack([X, y])
        Z = self._sorted_rows(self.exog_re)
        ZtZ = group_crossprod(Z, Z, self._starts)
        ZtW = group_crossprod(Z, W, self._starts)
        return SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=W.T @ W, nobs=len(y), k_fe=X.shape[1])

    def _check_identifiable(self) -> None:
        n, m, q, p = len(self.endog), self.n_groups, self.k_re, self.k_fe
        if q and m < 2:
            raise IdentificationError(
                f"only one group ({self.group_labels[0]!r}) in {self.group_name!r}: a random-effects "
                "variance needs at least two groups")
        if q and n <= q * m:
            raise IdentificationError(
                f"{n} observations but {q} random effects per group x {m} groups = {q * m}: the "
                "random-effects and residual variances are not identifiable (lme4 stops here too)")
        if q and m <= q:
            raise IdentificationError(
                f"{m} groups cannot identify a {q}x{q} random-effects covariance "
                f"({', '.join(self.re_design.names)}); use fewer random effects")
        if n <= p:
            raise IdentificationError(f"{n} observations for {p} fixed effects")
        WtW = self._stats.WtW[:p, :p]
        L, kept = sequential_rank_cholesky(WtW[:, :, None].copy())
        if not kept.all():
            names = [self.exog_names[i] for i in np.flatnonzero(~kept[:, 0])]
            raise IdentificationError(
                f"the fixed-effects design is rank deficient: column(s) {names} are linear "
                "combinations of the columns before them; drop them")
        from .crosslevel import warn_level2_in_random
        # columns constant over all rows are intercepts, not group-level variables
        varying = np.ptp(self.exog_re, axis=0) > 0 if len(self.exog_re) else np.zeros(q, bool)
        re_cols = [c for c, v in zip(self.re_design.names, varying) if v]
        if re_cols:
            frame = pd.DataFrame(self.exog_re[:, varying], columns=re_cols)
            gname = self.group_name if self.group_name not in re_cols else "__group__"
            frame[gname] = self.group_codes
            warn_level2_in_random(frame, re_cols, gname, stacklevel=4)

    # --------------------------------------------------------------- formula
    @classmethod
    def from_formula(cls, formula: str, data: pd.DataFrame, subset: Any = None,
                     drop_cols: Any = None, *args: Any, groups: Any = None,
                     re_formula: str | None = None, missing: str = "drop",
                     eval_env: int = 0, **kwargs: Any) -> "HLM":
        """Create a model from an lme4- or statsmodels-style formula.

        Parameters
        ----------
        formula
            ``"y ~ x + (x | g)"`` (lme4), or ``"y ~ x"`` with ``groups`` and
            ``re_formula`` (statsmodels MixedLM).  ``(a || g)`` gives
            independent variances; ``(1 | g) + (0 + x | g)`` two independent
            blocks.
        data
            DataFrame holding every variable.
        groups
            Grouping column name (or array) when the formula has no bar term.
        re_formula
            Random-effects design (``"~ x"``; ``"1"`` by default, ``"0"`` for
            none) when the formula has no bar term.
        missing
            ``"drop"`` (default, as statsmodels' formulas) drops rows with
            NaN/inf in the variables used and warns how many; ``"raise"``.
        **kwargs
            Passed to the constructor, e.g. ``residual=AR1(time="wave")``,
            whose time/position/``by`` column names are looked up in
            ``data`` (rows dropped for missing values there too).

        Returns
        -------
        HLM
        """
        from patsy import EvalEnvironment, dmatrices, dmatrix

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("empty data: the DataFrame has no rows")
        if subset is not None:
            data = data.loc[subset]
        parsed = parse_formula(formula)
        specs = list(parsed.random)
        env = EvalEnvironment.capture(eval_env + 1)
        env_names = set().union(*[set(ns) for ns in env._namespaces]) | {
            "C", "I", "Q", "center", "standardize", "scale", "bs", "cr", "cc", "te", "Treatment",
            "Sum", "Poly", "Diff", "Helmert", "np"}
        if specs:
            if re_formula is not None:
                raise ValueError("give random effects either as (expr | group) terms in the "
                                 "formula or with re_formula=, not both")
            gnames = {s.group for s in specs}
            if groups is not None and (not isinstance(groups, str) or {groups} != gnames):
                raise ValueError(f"groups={groups!r} disagrees with the formula's grouping "
                                 f"factor(s) {sorted(gnames)}")
            group_col = specs[0].group
        else:
            if groups is None:
                raise ValueError("no random effects: add an (expr | group) term to the formula "
                                 "or pass groups= (and re_formula=)")
            if isinstance(groups, str):
                group_col = groups
            else:
                garr = np.asarray(groups)
                if len(garr) != len(data):
                    raise ValueError(f"groups has {len(garr)} values but data has {len(data)} rows")
                group_col = "groups"
                data = data.assign(**{group_col: garr})
            rf = "1" if re_formula is None else re_formula.strip()
            rf = rf[1:].strip() if rf.startswith("~") else rf
            if rf not in ("0", "-1"):
                specs = [RandomTermSpec(expr=rf, group=group_col)]
        check_columns([group_col], data, what="grouping factor")
        used = formula_variables(parsed.fixed_formula)
        for s in specs:
            used |= formula_variables(s.expr)
        from .residual import resolve_structure, structure_columns
        res_cols = structure_columns(kwargs.get("residual"))
        if res_cols:
            resolve_structure(kwargs["residual"], data)     # clear error for a missing column
            used |= set(res_cols.values())
        check_columns(used, data, env_names)
        data_cols = [c for c in data.columns if c in used]
        check_numeric_response(data[parsed.response], parsed.response) \
            if parsed.response in data.columns else None
        if parsed.response in data.columns and pd.api.types.is_bool_dtype(data[parsed.response]):
            # a boolean response is the 0/1 outcome of a linear probability model, as
            # with arrays (patsy would code it as two indicator columns)
            data = data.assign(**{parsed.response: data[parsed.response].astype(float)})
        cols = {c: data[c] for c in data_cols}
        cols[group_col] = data[group_col]
        keep = handle_missing(cols, "raise" if missing == "none" else missing, index=data.index)
        frame = data if keep is None else data.loc[keep]
        if len(frame) == 0:
            raise ValueError("empty data: no rows left after dropping missing values")
        y, X = dmatrices(parsed.fixed_formula, frame, return_type="dataframe",
                         NA_action="raise", eval_env=env)
        if y.shape[1] != 1:
            raise TypeError(f"the response {parsed.response!r} must be a single numeric column, "
                            f"patsy made {y.shape[1]} columns {list(y.columns)}")
        y = y.iloc[:, 0]
        terms: list[RandomEffectsTerm] = []
        blocks = []
        for s in specs:
            Zs = dmatrix(s.expr, frame, return_type="dataframe", NA_action="raise", eval_env=env)
            if Zs.shape[1] == 0:
                raise ValueError(f"random-effects term {s} has no columns")
            if s.correlated:
                terms.append(RandomEffectsTerm(s.group, tuple(map(str, Zs.columns)), True,
                                               s.expr, Zs.design_info))
            else:
                for c in Zs.columns:
                    terms.append(RandomEffectsTerm(s.group, (str(c),), True, s.expr,
                                                   Zs.design_info))
            blocks.append(Zs)
        if blocks:
            exog_re = pd.concat(blocks, axis=1)
        else:
            exog_re = pd.DataFrame(index=frame.index)
        g = frame[group_col]
        g.name = group_col
        if res_cols:
            kwargs["residual"] = resolve_structure(kwargs["residual"], frame)
        mod = cls(y, X, g, exog_re, re_terms=terms, missing="none", **kwargs)
        mod.n_dropped = 0 if keep is None else int((~keep).sum())
        mod.formula = formula
        mod.parsed_formula = parsed
        mod.fixed_design_info = X.design_info
        mod.re_specs = tuple(specs)
        mod.data.frame = data
        mod.row_index = frame.index
        return mod

    @classmethod
    def from_levels(cls, *, level1: str, level2: dict[str, str] | None = None, groups: str,
                    random: Sequence[str] | str | None = None, data: pd.DataFrame,
                    eval_env: int = 0, **kwargs: Any) -> "HLM":
        """Create a model from level-1 and level-2 (HLM-style) equations.

        ``HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp",
        "ses": "~ flp"}, groups="school", random=["Intercept", "ses"], data=d)``
        is ``mscore ~ 1 + flp + ses + flp:ses + (1 + ses | school)``.  The model
        keeps the specification in ``model.levels``; see
        :func:`sm_hlm.levels.from_levels` for every option.
        """
        from .levels import from_levels
        return from_levels(cls, level1=level1, level2=level2, groups=groups, random=random,
                           data=data, eval_env=eval_env + 1, **kwargs)

    # ------------------------------------------------------------ likelihood
    def deviance_function(self, *, reml: bool = True,
                          residual_free: np.ndarray | None = None) -> ProfiledDeviance:
        """The profiled deviance of theta (see :mod:`sm_hlm.deviance`).

        With a residual structure the deviance depends on the structure's
        parameters too: pass ``residual_free`` (e.g. ``results.fit_result.
        residual_free``) to get the deviance of the whitened data with them
        held fixed (it then omits the constant log|R|).
        """
        if self._residual_kernel is not None:
            if residual_free is None:
                raise NotImplementedError(
                    f"this model has the residual structure {self.residual!r}: its deviance "
                    "depends on the structure's parameters, which this computation (e.g. "
                    "Satterthwaite df, profile intervals, the bootstrap) does not handle yet; "
                    "deviance_function(residual_free=...) holds them fixed")
            return self._residual_kernel.deviance(np.asarray(residual_free, float), reml=reml)[0]
        return ProfiledDeviance(self._stats, self.re_design.lambda_, reml=reml)

    def loglike(self, params: np.ndarray, *, reml: bool = False, scale: float | None = None) -> float:
        """Log-likelihood at ``params`` = fixed effects then variance components.

        ``scale`` (sigma^2) is profiled when omitted.  The variance components
        are the free entries of cov_re in the order of ``vcomp_names``.
        """
        params = np.asarray(params, dtype=float)
        p = self.k_fe
        beta, vc = params[:p], params[p:]
        cov = self.re_design.cov_from_vcomp(vc)
        dev = self.deviance_function(reml=reml)
        if scale is None:
            def f(s: float) -> float:
                return dev.deviance_at(self.re_design.theta_from_cov(cov, s), beta, s)
            from scipy.optimize import minimize_scalar
            res = minimize_scalar(lambda ls: f(np.exp(ls)), bracket=(-5, 5))
            scale = float(np.exp(res.x))
        theta = self.re_design.theta_from_cov(cov, scale)
        return -0.5 * dev.deviance_at(theta, beta, scale)

    # -------------------------------------------------------------------- fit
    def fit(self, start_params: np.ndarray | None = None, reml: bool = True, *,
            maxeval: int = 100_000, ftol_abs: float | None = None, xtol_abs: float = 1e-8,
            compute_vcomp_cov: bool = True, **kwargs: Any):
        """Fit by REML (default, as lme4 and MixedLM) or ML.

        Parameters
        ----------
        start_params
            Start for theta (the relative covariance factor's free entries,
            lme4's order); lme4's identity start when omitted.  With a
            residual structure: theta, or theta followed by the structure's
            unconstrained parameters (started from OLS residuals otherwise).
        reml
            REML when True, maximum likelihood when False.
        maxeval, ftol_abs, xtol_abs
            BOBYQA stopping rules; ``ftol_abs`` defaults to 1e-8, and to 1e-12
            with a residual structure (up to ~20 more parameters: BOBYQA's
            quadratic model otherwise stops before the gradient is small).
        compute_vcomp_cov
            Compute standard errors of the variance components from the
            observed information (a numerical Hessian).

        Returns
        -------
        HLMResultsWrapper
        """
        from .results import HLMResults, HLMResultsWrapper, build_fit

        if kwargs:
            raise TypeError(f"fit() got unexpected keyword argument(s) {sorted(kwargs)}")
        if self._residual_kernel is not None:     # (theta, structure parameters) jointly
            from .residual_fit import fit_structured
            return fit_structured(self, start_params=start_params, reml=reml, maxeval=maxeval,
                                  ftol_abs=1e-12 if ftol_abs is None else ftol_abs,
                                  xtol_abs=xtol_abs,
                                  compute_vcomp_cov=compute_vcomp_cov)
        dev = self.deviance_function(reml=reml)
        rd = self.re_design
        x0 = rd.theta_start() if start_params is None else np.asarray(start_params, float)
        if x0.shape != (rd.n_theta,):
            raise ValueError(f"start_params must have {rd.n_theta} entries {list(rd.theta_names)}")
        ftol_abs = 1e-8 if ftol_abs is None else ftol_abs
        record = minimize_bobyqa(dev, x0, rd.theta_lower, ftol_abs=ftol_abs, xtol_abs=xtol_abs,
                                 maxeval=maxeval, names=rd.theta_names)
        fit = build_fit(self, dev, record, reml=reml, compute_vcomp_cov=compute_vcomp_cov)
        if fit.singular_terms:
            warnings.warn("boundary (singular) fit: " + "; ".join(fit.singular_terms),
                          SingularFitWarning, stacklevel=2)
        if not record.converged:
            warnings.warn(f"the optimiser did not converge: {record.message}",
                          ConvergenceWarning, stacklevel=2)
        return HLMResultsWrapper(HLMResults(self, fit))

    def results_at(self, theta: np.ndarray, *, reml: bool = True,
                   compute_vcomp_cov: bool = True):
        """Results at a given theta, without optimising.

        beta and sigma^2 are profiled at ``theta`` as in :meth:`fit`.  Useful
        to evaluate the estimator at another program's optimum (e.g. lme4's
        ``getME(fit, "theta")``) or along a profile.
        """
        from .optimizer import OptimizerRecord
        from .results import HLMResults, HLMResultsWrapper, build_fit

        rd = self.re_design
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (rd.n_theta,):
            raise ValueError(f"theta must have {rd.n_theta} entries {list(rd.theta_names)}")
        if np.any(theta < rd.theta_lower):
            raise ValueError(f"theta {theta} is below its lower bounds {rd.theta_lower}")
        dev = self.deviance_function(reml=reml)
        f = dev(theta)
        record = OptimizerRecord("fixed theta", theta, theta, f, f, 1, np.full(len(theta), np.nan),
                                 True, "theta given, not optimised", rd.theta_names)
        fit = build_fit(self, dev, record, reml=reml, compute_vcomp_cov=compute_vcomp_cov)
        return HLMResultsWrapper(HLMResults(self, fit))

    # ------------------------------------------------ the notes' quantities
    def group_ols(self, *, exog: str = "re") -> pd.DataFrame:
        """Per-group OLS coefficients (the notes' BETA.OLS); see :func:`groupwise.group_ols`."""
        return groupwise.group_ols(self, exog=exog)

    def group_ols_summary(self, *, exog: str = "re") -> tuple[pd.Series, pd.DataFrame]:
        """The notes' ad-hoc estimates: mean (NaN ignored) and covariance (complete
        rows) of the per-group OLS coefficients."""
        return groupwise.group_ols_summary(self, exog=exog)

    def marginal_cov(self, group: Any, cov_re: np.ndarray, scale: float) -> pd.DataFrame:
        """Z_j Psi Z_j' + sigma^2 I for one group, labelled by row."""
        return groupwise.marginal_cov(self, group, cov_re, scale)
