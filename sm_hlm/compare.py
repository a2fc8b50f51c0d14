"""Comparing fitted models: likelihood-ratio tests and side-by-side tables.

* :func:`compare` -- lme4's ``anova(fit0, fit1, ...)``: information criteria
  and sequential likelihood-ratio tests of nested fits, refitting REML fits
  by ML where needed, plus the chi-bar-square (mixture) p-value of tests that
  put a variance on the boundary of its parameter space;
* :func:`summary_table` -- the coefficients, standard errors, variance
  components and fit statistics of several fits side by side (like
  statsmodels' ``summary_col`` and linearmodels' ``compare``), rendered as
  text, HTML or LaTeX.

Both accept :class:`~sm_hlm.HLMResults` and, as fits without random
effects, statsmodels OLS results (``smf.ols(...).fit()``).  ``summary_table``
also takes statsmodels WLS results and linearmodels panel results
(``PanelOLS``, ``RandomEffects``, ``PooledOLS``, ...; linearmodels is
imported lazily, only when such a fit is passed), so random-effects, fixed-
effects and OLS estimates can be set side by side.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .summary import HLMSummary

__all__ = ["RefitMLWarning", "compare", "summary_table", "SummaryTable", "boundary_test"]

REFIT_MESSAGE = "refitting model(s) with ML (instead of REML)"


class RefitMLWarning(UserWarning):
    """REML fits were refitted by maximum likelihood to compare them (lme4's message)."""


# ---------------------------------------------------------------------------
# a uniform view of the fits
# ---------------------------------------------------------------------------

def _unwrap(fit: Any) -> Any:
    return getattr(fit, "_results", fit)


def _is_hlm(fit: Any) -> bool:
    from .results import HLMResults
    return isinstance(_unwrap(fit), HLMResults)


def _is_panel(fit: Any) -> bool:
    """A linearmodels panel result (checked without importing linearmodels)."""
    res = _unwrap(fit)
    if not type(res).__module__.startswith("linearmodels."):
        return False
    from linearmodels.panel.results import PanelResults      # lazy: optional dependency
    return isinstance(res, PanelResults)


def _is_regression(fit: Any) -> bool:
    """statsmodels OLS or WLS results (summary_table only)."""
    from statsmodels.regression.linear_model import OLS, WLS, RegressionResults
    res = _unwrap(fit)
    return isinstance(res, RegressionResults) and type(res.model) in (OLS, WLS)


def _is_ols(fit: Any) -> bool:
    from statsmodels.regression.linear_model import OLS, RegressionResults
    res = _unwrap(fit)
    return isinstance(res, RegressionResults) and type(res.model) is OLS


@dataclass
class _Fit:
    """What the comparison needs of one fit."""

    name: str
    result: Any                 # HLMResults (unwrapped) or statsmodels RegressionResults
    kind: str                   # "hlm", "ols" (OLS/WLS) or "panel" (linearmodels)
    reml: bool
    llf: float
    npar: int
    nobs: int
    endog: np.ndarray
    exog_names: tuple[str, ...]
    exog: np.ndarray
    formula: str | None
    refitted: bool = False

    @property
    def re_structure(self) -> tuple[str | None, tuple[tuple[tuple[str, ...], bool], ...]]:
        """(group, terms as (names, correlated)) -- empty for no random effects."""
        if self.kind != "hlm":
            return None, ()
        m = self.result.model
        if hasattr(m, "re_terms") and not hasattr(m, "re_design"):
            # several grouping factors: the factors, and each effect named with its factor
            return tuple(m.factor_names), tuple(
                (tuple(f"{n} | {t.factor}" for n in t.names[o:o + b]), True)
                for t in m.re_terms
                for o, b in zip(np.cumsum((0,) + tuple(t.block_sizes))[:-1], t.block_sizes))
        rd = m.re_design
        return rd.group, tuple((t.names, bool(t.correlated) or t.k == 1) for t in rd.terms)


def _view(fit: Any, name: str) -> _Fit:
    res = _unwrap(fit)
    from .multilevel.results import MultilevelResults
    if _is_hlm(res) or isinstance(res, MultilevelResults):
        m = res.model
        return _Fit(name=name, result=res, kind="hlm", reml=bool(res.reml), llf=float(res.llf),
                    npar=int(res.n_params), nobs=int(res.nobs), endog=np.asarray(m.endog),
                    exog_names=tuple(map(str, m.exog_names)), exog=np.asarray(m.exog),
                    formula=getattr(m, "formula", None))
    if _is_ols(res):
        m = res.model
        formula = getattr(m, "formula", None)
        return _Fit(name=name, result=res, kind="ols", reml=False, llf=float(res.llf),
                    npar=int(len(res.params)) + 1, nobs=int(res.nobs),
                    endog=np.asarray(m.endog, dtype=float),
                    exog_names=tuple(map(str, m.exog_names)),
                    exog=np.asarray(m.exog, dtype=float), formula=formula)
    raise TypeError(f"{name}: cannot compare a {type(res).__name__}; pass sm_hlm results "
                    "(HLM(...).fit()) or statsmodels OLS results")


#: linearmodels estimator -> the Method row of summary_table
_PANEL_METHODS = {"PanelOLS": "FE (within)", "RandomEffects": "RE (GLS)",
                  "PooledOLS": "Pooled OLS", "BetweenOLS": "Between",
                  "FirstDifferenceOLS": "First difference"}


def _table_view(fit: Any, name: str) -> _Fit:
    """:func:`_view` extended to statsmodels WLS and linearmodels panel results."""
    res = _unwrap(fit)
    if _is_regression(res) and not _is_ols(res):                  # WLS
        m = res.model
        return _Fit(name=name, result=res, kind="ols", reml=False, llf=float(res.llf),
                    npar=int(len(res.params)) + 1, nobs=int(res.nobs),
                    endog=np.asarray(m.endog, dtype=float),
                    exog_names=tuple(map(str, m.exog_names)),
                    exog=np.asarray(m.exog, dtype=float), formula=getattr(m, "formula", None))
    if _is_panel(res):
        m = res.model
        pooled = type(m).__name__ == "PooledOLS"
        return _Fit(name=name, result=res, kind="panel", reml=False,
                    llf=float(res.loglik) if pooled else float("nan"),
                    npar=int(len(res.params)) + 1, nobs=int(res.nobs),
                    endog=np.asarray(m.dependent.values2d, dtype=float).ravel(),
                    exog_names=tuple(map(str, res.params.index)),
                    exog=np.asarray(m.exog.values2d, dtype=float),
                    formula=getattr(m, "formula", None))
    try:
        return _view(res, name)
    except TypeError:
        raise TypeError(f"{name}: summary_table cannot show a {type(res).__name__}; pass sm_hlm "
                        "results, statsmodels OLS/WLS results or linearmodels panel results "
                        "(PanelOLS, RandomEffects, PooledOLS)") from None


def _panel_method(res: Any) -> str:
    m = res.model
    kind = type(m).__name__
    if kind == "PanelOLS":
        eff = [e for e, on in (("entity", getattr(m, "entity_effects", False)),
                               ("time", getattr(m, "time_effects", False))) if on]
        return "FE (" + " + ".join(eff) + ")" if eff else "PanelOLS"
    return _PANEL_METHODS.get(kind, kind)


def _panel_entity(res: Any) -> str:
    return str(res.model.dependent.index.names[0])


def _names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"fit{i}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} fits")
    if len(set(names)) != n:
        raise ValueError(f"names must be distinct, got {names}")
    return names


def _check_same_data(views: list[_Fit]) -> None:
    ref = views[0]
    sizes = {v.name: v.nobs for v in views}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{k} (nobs={n})" for k, n in sizes.items())
        raise ValueError(f"models were not all fitted to the same data: {detail}. Fit every "
                         "model to the same rows (drop missing values beforehand)")
    for v in views[1:]:
        if not np.array_equal(v.endog, ref.endog):
            n_diff = int(np.sum(v.endog != ref.endog))
            raise ValueError(
                f"models {ref.name} and {v.name} have different response values ({n_diff} of "
                f"{ref.nobs} rows differ): they were not fitted to the same data (or the "
                "same transformation of the response)")


def _same_fixed(a: _Fit, b: _Fit) -> bool:
    return a.exog_names == b.exog_names and a.exog.shape == b.exog.shape and \
        np.array_equal(a.exog, b.exog)


def _refit_ml(v: _Fit) -> _Fit:
    new = v.result.model.fit(reml=False, compute_vcomp_cov=False)
    out = _view(new, v.name)
    out.refitted = True
    return out


# ---------------------------------------------------------------------------
# the boundary (chi-bar-square) test
# ---------------------------------------------------------------------------

def boundary_test(small: Any, large: Any) -> int | None:
    """Degrees of freedom of a boundary LRT of ``small`` within ``large``, or None.

    Returns the number of parameters ``large`` adds when it is ``small``
    plus exactly one random effect (its variance and its covariances with
    the effects of its block), the fixed effects being identical;
    otherwise None.  See :func:`compare` for the test.
    """
    a = small if isinstance(small, _Fit) else _view(small, "small")
    b = large if isinstance(large, _Fit) else _view(large, "large")
    if not _same_fixed(a, b):
        return None
    ga, ta = a.re_structure
    gb, tb = b.re_structure
    if ta and ga != gb:
        return None
    names_a = [n for names, _ in ta for n in names]
    names_b = [n for names, _ in tb for n in names]
    extra = [n for n in names_b if n not in names_a]
    if len(extra) != 1 or len(names_b) != len(names_a) + 1:
        return None
    new = extra[0]
    reduced = []
    added = 0
    for names, corr in tb:
        if new in names:
            kept = tuple(n for n in names if n != new)
            added = len(names) if corr else 1
            if kept:
                reduced.append((kept, corr or len(kept) == 1))
        else:
            reduced.append((names, corr))
    if reduced != list(ta) or b.npar - a.npar != added:
        return None
    return added


def _mixture_sf(chisq: float, df: int) -> float:
    """P(X > chisq) for X ~ 0.5 chi2_{df-1} + 0.5 chi2_{df} (chi2_0: point mass at 0)."""
    low = (1.0 if chisq <= 0 else 0.0) if df - 1 == 0 else stats.chi2.sf(chisq, df - 1)
    return 0.5 * float(low) + 0.5 * float(stats.chi2.sf(chisq, df))


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

def compare(*fits: Any, names: Sequence[str] | None = None, refit: bool | None = None,
            mixture: bool = True) -> pd.DataFrame:
    """Likelihood-ratio comparison of nested fits, as lme4's ``anova(fit0, fit1, ...)``.

    Parameters
    ----------
    *fits
        Two or more fits to the same data: :class:`~sm_hlm.HLMResults` and/or
        statsmodels OLS results (a model without random effects).
    names
        Row labels; default ``"fit0"``, ``"fit1"``, ... in the order given.
    refit
        What to do with REML fits.  ``None`` (default): keep the REML
        likelihoods when *every* fit is REML with identical fixed effects
        (the REML likelihood ratio is then valid), refit the REML fits by ML
        otherwise.  ``True``: always refit REML fits by ML (lme4's default
        ``refit = TRUE``).  ``False``: never refit; raises if REML fits with
        different fixed effects or a mix of REML and ML fits are given.
    mixture
        Add the column ``Pr(>Chisq) mix`` (see Notes).

    Returns
    -------
    DataFrame
        One row per fit, sorted by ``npar`` (stable, as lme4), with columns
        ``npar``, ``AIC``, ``BIC``, ``logLik``, ``deviance`` (-2 logLik),
        ``Chisq``, ``Df``, ``Pr(>Chisq)`` and ``Pr(>Chisq) mix``.  The row of
        each fit compares it with the row above.  ``attrs`` holds
        ``"method"`` (``"ML"`` or ``"REML"``), ``"refitted"`` (names of the
        fits refitted by ML), ``"note"`` (lme4's message when refitting, else
        ""), ``"formulas"`` (name -> formula) and ``"boundary"`` (name ->
        Df of a boundary test, for the rows where it applies).

    Warns
    -----
    RefitMLWarning
        "refitting model(s) with ML (instead of REML)" when REML fits were
        refitted, as lme4's message.

    Raises
    ------
    ValueError
        Fewer than two fits; fits to different data (different numbers of
        observations or response values; the message names the models); REML
        fits that cannot be compared with ``refit=False``.

    Notes
    -----
    With the fits sorted by their number of parameters :math:`n_i` (lme4's
    count: fixed effects, covariance parameters and the residual variance)
    and log-likelihoods :math:`\\ell_i`, row :math:`i` reports

    .. math::

        \\mathrm{AIC}_i = -2\\ell_i + 2 n_i, \\quad
        \\mathrm{BIC}_i = -2\\ell_i + n_i \\log N, \\quad
        \\chi^2_i = 2 \\max(0, \\ell_i - \\ell_{i-1}), \\quad
        \\mathrm{Df}_i = n_i - n_{i-1},

    and :math:`\\Pr(\\chi^2_{\\mathrm{Df}_i} > \\chi^2_i)` (NaN when
    :math:`\\mathrm{Df}_i = 0`).  As in lme4, nesting is not checked: the test
    is meaningful only for nested models.

    When the null hypothesis puts a variance on the boundary of its
    parameter space the :math:`\\chi^2_{\\mathrm{Df}}` reference distribution is
    conservative.  ``Pr(>Chisq) mix`` gives the chi-bar-square p-value of
    Self & Liang (1987) and Stram & Lee (1994),

    .. math::

        p = \\tfrac12 \\Pr(\\chi^2_{\\mathrm{Df}-1} > \\chi^2) +
            \\tfrac12 \\Pr(\\chi^2_{\\mathrm{Df}} > \\chi^2)
        \\qquad (\\chi^2_0 \\equiv 0),

    **applied exactly when** the row's fit equals the fit above it plus one
    random effect: identical fixed-effects designs (same columns, same
    values), the same grouping factor, and random-effects terms that are
    those of the smaller fit with one column added (to an existing term or
    as a new one-column term), so that :math:`\\mathrm{Df}` counts that
    effect's variance and its covariances with the other effects of its
    term.  Examples: random intercept vs. no random effects (OLS or an
    ``HLM`` with ``re_formula="0"``; Df 1, 50:50 mixture of
    :math:`\\chi^2_0` and :math:`\\chi^2_1`); ``(1 | g)`` vs. ``(1 + x | g)``
    (Df 2, mixture of :math:`\\chi^2_1` and :math:`\\chi^2_2`).  Other rows
    get NaN.  Adding two or more random effects at once gives a mixture
    with other weights and is not covered.
    """
    if len(fits) < 2:
        raise ValueError(f"compare needs at least two fits, got {len(fits)}")
    labels = _names(len(fits), names)
    views = [_view(f, n) for f, n in zip(fits, labels)]
    pseudo = [v.name for v in views
              if getattr(getattr(v.result, "model", None), "weight_type", None) == "survey"]
    if pseudo:
        raise ValueError(f"{', '.join(pseudo)}: fitted with survey weights, a pseudo-likelihood; "
                         "likelihood-ratio tests between pseudo-likelihood fits are not valid "
                         "(the ratio is not chi-square). Use Wald tests with the sandwich "
                         "covariance instead: results.wald_test(...) or wald_test_terms()")
    _check_same_data(views)

    any_reml = any(v.reml for v in views)
    all_reml = all(v.reml for v in views)
    same_fixed = all(_same_fixed(views[0], v) for v in views[1:])
    method = "ML"
    if any_reml:
        if refit is None:
            do_refit = not (all_reml and same_fixed)
        elif refit:
            do_refit = True
        else:
            if not all_reml:
                raise ValueError("some fits are REML and some ML (" + ", ".join(
                    f"{v.name}: {'REML' if v.reml else 'ML'}" for v in views)
                    + "); their likelihoods are not comparable. Use refit=None or True")
            if not same_fixed:
                raise ValueError("REML likelihoods of fits with different fixed effects are not "
                                 "comparable; use refit=None or True to refit by ML")
            do_refit = False
        if do_refit:
            warnings.warn(REFIT_MESSAGE, RefitMLWarning, stacklevel=2)
            views = [_refit_ml(v) if v.reml else v for v in views]
        else:
            method = "REML"

    order = np.argsort([v.npar for v in views], kind="stable")
    views = [views[i] for i in order]
    llf = np.array([v.llf for v in views])
    npar = np.array([v.npar for v in views])
    nobs = views[0].nobs
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(llf))]
    dfs = np.r_[np.nan, np.diff(npar).astype(float)]
    p = np.where(dfs > 0, stats.chi2.sf(chisq, np.where(dfs > 0, dfs, 1)), np.nan)
    out = pd.DataFrame({
        "npar": npar,
        "AIC": -2 * llf + 2 * npar,
        "BIC": -2 * llf + np.log(nobs) * npar,
        "logLik": llf,
        "deviance": -2 * llf,
        "Chisq": chisq,
        "Df": pd.array([pd.NA] + [int(d) for d in dfs[1:]], dtype="Int64"),
        "Pr(>Chisq)": p,
    }, index=pd.Index([v.name for v in views], name="model"))
    boundary: dict[str, int] = {}
    if mixture:
        mix = np.full(len(views), np.nan)
        for i in range(1, len(views)):
            df_b = boundary_test(views[i - 1], views[i])     # None, or equal to Df
            if df_b is not None:
                boundary[views[i].name] = int(df_b)
                mix[i] = _mixture_sf(chisq[i], int(df_b))
        out["Pr(>Chisq) mix"] = mix
    refitted = [v.name for v in views if v.refitted]
    out.attrs["method"] = method
    out.attrs["refitted"] = refitted
    out.attrs["note"] = REFIT_MESSAGE if refitted else ""
    out.attrs["formulas"] = {v.name: v.formula for v in views}
    out.attrs["boundary"] = boundary
    return out


# ---------------------------------------------------------------------------
# side-by-side table
# ---------------------------------------------------------------------------

class SummaryTable(HLMSummary):
    """Side-by-side table of several fits (``as_text``, ``as_html``, ``as_latex``).

    Attributes
    ----------
    frame : DataFrame
        The formatted table (strings), as printed.
    params, bse, pvalues : DataFrame
        Fixed effects, their standard errors and p-values (rows: effects,
        columns: models; NaN where a model lacks the effect).
    vcomp : DataFrame
        Variance components (SDs or variances, correlations, residual).
    stats : DataFrame
        N, groups, logLik, AIC, BIC, method per model.
    """

    frame: pd.DataFrame
    params: pd.DataFrame
    bse: pd.DataFrame
    pvalues: pd.DataFrame
    vcomp: pd.DataFrame
    stats: pd.DataFrame

    def __str__(self) -> str:
        return self.as_text()


#: sm_hlm's one star convention (R's significance codes): *, **, *** for p below
#: 0.05, 0.01, 0.001.  statsmodels' ``summary_col`` uses 0.1, 0.05, 0.01 and says so
#: under its table.
STAR_LEVELS: tuple[float, ...] = (0.05, 0.01, 0.001)


def star_note(levels: Sequence[float] = STAR_LEVELS) -> str:
    """The legend of the stars, e.g. ``"* p<0.05, ** p<0.01, *** p<0.001"``."""
    return ", ".join(f"{'*' * (i + 1)} p<{lv:g}" for i, lv in enumerate(levels))


def _stars(p: float, levels: Sequence[float]) -> str:
    if not np.isfinite(p):
        return ""
    return "*" * sum(p < lv for lv in levels)


def _fe_table(res: Any, kind: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    if kind == "hlm":
        est, se = res.fe_params, res.bse_fe
    elif kind == "panel":
        return (res.params.astype(float), res.std_errors.astype(float),
                res.pvalues.astype(float))
    else:
        est = pd.Series(np.asarray(res.params), index=res.model.exog_names)
        se = pd.Series(np.asarray(res.bse), index=res.model.exog_names)
    p = pd.Series(2 * stats.norm.sf(np.abs(est / se)), index=est.index) if kind == "hlm" \
        else pd.Series(np.asarray(res.pvalues), index=est.index)
    return est, se, p


def _vcomp_rows(res: Any, kind: str, vcomp: str) -> dict[str, float]:
    rows: dict[str, float] = {}
    lab = "SD" if vcomp == "sd" else "Var"
    if kind == "hlm" and not hasattr(res.model, "re_design"):       # several factors
        for t, cov in zip(res.model.re_terms, res.fit_result.cov_re):
            sd = np.sqrt(np.diag(cov))
            for i, n in enumerate(t.names):
                rows[f"{lab}({n} | {t.factor})"] = sd[i] if vcomp == "sd" else cov[i, i]
            block = np.repeat(np.arange(len(t.block_sizes)), t.block_sizes)
            for j in range(t.S):
                for i in range(j + 1, t.S):
                    if block[i] == block[j]:
                        den = sd[i] * sd[j]
                        rows[f"Corr({t.names[j]}, {t.names[i]} | {t.factor})"] = (
                            cov[i, j] / den if den > 0 else np.nan)
    elif kind == "hlm":
        for t, block, sd, corr in res.model.re_design.term_blocks(res.fit_result.cov_re):
            for i, n in enumerate(t.names):
                rows[f"{lab}({n} | {t.group})"] = sd[i] if vcomp == "sd" else block[i, i]
            if t.correlated:
                for j in range(t.k):
                    for i in range(j + 1, t.k):
                        rows[f"Corr({t.names[j]}, {t.names[i]} | {t.group})"] = corr[i, j]
    if kind == "panel":
        if type(res.model).__name__ == "RandomEffects":
            vd = res.variance_decomposition                      # Effects, Residual
            eff, resid = float(vd["Effects"]), float(vd["Residual"])
            rows[f"{lab}(Intercept | {_panel_entity(res)})"] = \
                np.sqrt(eff) if vcomp == "sd" else eff
        else:
            resid = float(res.s2)
        rows[f"{lab}(Residual)"] = np.sqrt(resid) if vcomp == "sd" else resid
        return rows
    scale = float(res.scale)
    rows[f"{lab}(Residual)"] = np.sqrt(scale) if vcomp == "sd" else scale
    return rows


def _group_names(res: Any) -> list[str]:
    """The grouping factors of an HLM fit with random effects (several for a
    multilevel fit; none without random effects)."""
    model = res.model
    if hasattr(model, "factor_names"):             # MultilevelHLM
        return list(model.factor_names)
    return [model.group_name] if model.k_re else []


def summary_table(*fits: Any, names: Sequence[str] | None = None, stars: bool = True,
                  float_format: str = "%.3f", vcomp: str = "sd",
                  star_levels: Sequence[float] = STAR_LEVELS,
                  title: str | None = None) -> SummaryTable:
    """Coefficients, SEs, variance components and fit statistics of fits side by side.

    Parameters
    ----------
    *fits
        :class:`~sm_hlm.HLMResults`, statsmodels OLS/WLS results and/or
        linearmodels panel results (``PanelOLS`` -- method ``FE (entity)``,
        ``RandomEffects`` -- ``RE (GLS)``, with its variance decomposition as
        ``SD(Intercept | entity)``, ``PooledOLS``; linearmodels is imported
        only when such a fit is passed).
    names
        Column labels; default ``"fit0"``, ``"fit1"``, ...
    stars
        Append significance stars to the fixed effects (``*``, ``**``,
        ``***`` for p below each of ``star_levels``; normal-theory p-values
        for HLM fits, as the summary; OLS fits use their own t-test
        p-values).  Variance components never get stars.  The legend under
        the table states the convention.
    float_format
        Number format of estimates, SEs and variance components.
    vcomp
        ``"sd"`` (default, lme4's Std.Dev.) or ``"var"``: how the random
        effects and the residual are shown; correlations are shown either way.
    star_levels
        p-value thresholds of one, two, three stars; default
        :data:`STAR_LEVELS` (0.05, 0.01, 0.001: R's significance codes,
        sm_hlm's one convention).
    title
        Table title.

    Returns
    -------
    SummaryTable
        A statsmodels ``summary2.Summary`` (``as_text()``, ``as_html()``,
        ``as_latex()``) with the numbers in ``.params``, ``.bse``,
        ``.pvalues``, ``.vcomp``, ``.stats`` and the printed table in
        ``.frame``.

    Notes
    -----
    Each fixed effect takes two rows: the estimate :math:`\\hat\\beta` (with
    stars for :math:`p = 2\\Phi(-|\\hat\\beta/\\mathrm{SE}|)`; an OLS fit's
    ``pvalues``) and its standard error in parentheses.  AIC is
    :math:`-2\\ell + 2 n_{par}` with lme4's parameter count (OLS: coefficients
    plus the residual variance, as R's ``AIC(lm)``), so the column of an OLS
    fit is comparable with the others.
    """
    if not fits:
        raise ValueError("summary_table needs at least one fit")
    if vcomp not in ("sd", "var"):
        raise ValueError(f"vcomp must be 'sd' or 'var', got {vcomp!r}")
    labels = _names(len(fits), names)
    views = [_table_view(f, n) for f, n in zip(fits, labels)]
    est_d, se_d, p_d, vc_d, st_d = {}, {}, {}, {}, {}
    for v in views:
        e, s, p = _fe_table(v.result, v.kind)
        est_d[v.name], se_d[v.name], p_d[v.name] = e, s, p
        vc_d[v.name] = pd.Series(_vcomp_rows(v.result, v.kind, vcomp), dtype=float)
        groups = ""
        if v.kind == "hlm" and _group_names(v.result):
            ng = v.result.n_groups
            groups = f"{ng}" if not isinstance(ng, dict) else "; ".join(
                f"{k} {n}" for k, n in ng.items())
        elif v.kind == "panel" and type(v.result.model).__name__ != "PooledOLS":
            groups = f"{int(v.result.entity_info['total'])}"
        if v.kind == "hlm":
            method = "REML" if v.reml else "ML"
        elif v.kind == "panel":
            method = _panel_method(v.result)
        else:
            method = type(v.result.model).__name__                 # OLS or WLS
        finite = np.isfinite(v.llf)                                # FE/RE: not comparable
        st_d[v.name] = {
            "N": f"{v.nobs}",
            "Groups": groups,
            "logLik": f"{v.llf:.1f}" if finite else "",
            "AIC": f"{-2 * v.llf + 2 * v.npar:.1f}" if finite else "",
            "BIC": f"{-2 * v.llf + np.log(v.nobs) * v.npar:.1f}" if finite else "",
            "Method": method,
        }
    fe_order: list[str] = []
    for v in views:
        fe_order += [n for n in est_d[v.name].index if n not in fe_order]
    params = pd.DataFrame(est_d).reindex(fe_order)
    bse = pd.DataFrame(se_d).reindex(fe_order)
    pvalues = pd.DataFrame(p_d).reindex(fe_order)
    residual = f"{'SD' if vcomp == 'sd' else 'Var'}(Residual)"     # last row
    vc_order: list[str] = []
    for v in views:
        vc_order += [n for n in vc_d[v.name].index if n not in vc_order and n != residual]
    vc_order.append(residual)
    vc = pd.DataFrame(vc_d).reindex(vc_order)
    group_names = sorted({g for v in views if v.kind == "hlm" for g in _group_names(v.result)} |
                         {_panel_entity(v.result) for v in views
                          if v.kind == "panel" and st_d[v.name]["Groups"]})
    st = pd.DataFrame(st_d)
    if group_names:
        st = st.rename(index={"Groups": f"Groups ({', '.join(group_names)})"})

    ff = float_format
    rows: list[list[str]] = []
    index: list[str] = []
    for n in fe_order:
        r_est, r_se = [], []
        for c in labels:
            e, s, p = params.loc[n, c], bse.loc[n, c], pvalues.loc[n, c]
            if pd.isna(e):
                r_est.append("")
                r_se.append("")
                continue
            r_est.append(ff % e + (_stars(p, star_levels) if stars else ""))
            r_se.append(f"({ff % s})")
        rows += [r_est, r_se]
        index += [n, ""]
    for n in vc_order:
        rows.append(["" if pd.isna(vc.loc[n, c]) else ff % vc.loc[n, c] for c in labels])
        index.append(n)
    for n in st.index:
        rows.append([str(st.loc[n, c]) for c in labels])
        index.append(n)
    frame = pd.DataFrame(rows, index=index, columns=labels)

    out = SummaryTable()
    n_fe, n_vc = 2 * len(fe_order), len(vc_order)
    out.add_df(frame, float_format=ff, align="r", force_align=True, title="Fixed effects:",
               breaks={n_fe: "Variance components (not tested):", n_fe + n_vc: "Fit:"})
    if title:
        out.add_title(title)
    note = "Standard errors in parentheses."
    if stars:
        note += " " + star_note(star_levels) + " (two-sided; z tests for HLM fits, each " \
                "statsmodels or linearmodels fit's own p-values otherwise; variance components " \
                "are not tested)."
    if any(v.kind == "panel" and not np.isfinite(v.llf) for v in views):
        note += (" logLik, AIC and BIC are not shown for linearmodels fixed- and random-effects "
                 "fits: their likelihoods (of the within or quasi-demeaned regression) are not "
                 "comparable with the others.")
    out.add_text(note)
    out.frame = frame
    out.params, out.bse, out.pvalues = params, bse, pvalues
    out.vcomp, out.stats = vc, st
    return out
