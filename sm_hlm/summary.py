"""lme4-style summaries as statsmodels ``summary2.Summary`` objects."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.iolib import summary2

from .kenward_roger import _kenward_roger_table
from .report import DEFAULT_WIDTH, Section, abbreviate, render_html, render_latex, render_text

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["HLMSummary", "make_summary", "random_effects_table", "fixed_effects_table", "residual_quantiles"]


class HLMSummary(summary2.Summary):
    """A ``summary2.Summary`` laid out for a report.

    ``add_df(..., title=...)``/``add_dict(..., title=...)`` record a section
    (with an optional heading); ``tables``, ``settings`` and ``extra_txt``
    are kept as statsmodels' Summary keeps them.  Rendering
    (:mod:`sm_hlm.report`): ``as_text(width=100)`` keeps every line within
    ``width`` characters with one rule width throughout; ``as_html()`` is
    one ``<div>`` of escaped tables (Jupyter's ``_repr_html_``);
    ``as_latex(label=..., caption=...)`` is one booktabs table.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[Section] = []

    @property
    def table_titles(self) -> list[str | None]:
        return [s.title for s in self.sections]

    def add_df(self, df: pd.DataFrame, index: bool = True, header: bool = True,
               float_format: str = "%.4f", align: str = "r", *, title: str | None = None,
               formats: dict[str, str] | None = None, force_align: bool = False,
               breaks: dict[int, str] | None = None) -> None:
        """Add a table; ``formats`` maps columns to printf formats, ``force_align``
        applies ``align`` to every column (otherwise text left, numbers right),
        ``breaks`` maps body row positions to sub-headings (see :class:`Section`)."""
        super().add_df(df, index=index, header=header, float_format=float_format, align=align)
        self.sections.append(Section(frame=df, title=title, index=index, header=header,
                                     float_format=float_format, formats=dict(formats or {}),
                                     align=align if force_align else None,
                                     breaks=dict(breaks or {})))

    def add_dict(self, d: dict, ncols: int = 2, align: str = "l", float_format: str = "%.4f",
                 *, title: str | None = None) -> None:
        n = len(self.sections)
        super().add_dict(d, ncols=ncols, align=align, float_format=float_format)
        # Summary.add_dict goes through add_df: replace what it recorded by one pairs section
        del self.sections[n:]
        pairs = [(str(k), summary2._formatter(v, float_format)) for k, v in d.items()]
        self.sections.append(Section(title=title, pairs=pairs))

    def as_text(self, width: int = DEFAULT_WIDTH) -> str:
        """Plain text, no line wider than ``width`` characters."""
        return render_text(self.title, self.sections, self.extra_txt, width=width)

    def as_html(self) -> str:
        return render_html(self.title, self.sections, self.extra_txt)

    def as_latex(self, label: str = "tab:hlm", caption: str | None = None) -> str:
        """One booktabs table (``\\usepackage{booktabs}``) with caption and label."""
        return render_latex(self.title, self.sections, self.extra_txt, label=label or "tab:hlm",
                            caption=caption)


def residual_quantiles(results: "HLMResults") -> pd.Series:
    """Quantiles of the scaled residuals (Min, 1Q, Median, 3Q, Max)."""
    kept = results.__dict__.get("_resid_quantiles")     # stored by remove_data()
    if kept is not None:
        return kept.copy()
    r = np.asarray(results.resid_scaled)
    q = np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0])
    return pd.Series(q, index=["Min", "1Q", "Median", "3Q", "Max"])


def random_effects_table(results: "HLMResults") -> pd.DataFrame:
    """Variances, SDs and correlations of the random effects and the residual."""
    rows = []
    for term, block, sd, corr in results.model.re_design.term_blocks(results.fit_result.cov_re):
        for i, name in enumerate(term.names):
            row = {"Groups": term.group if i == 0 else "", "Name": name,
                   "Variance": block[i, i], "Std.Dev.": sd[i]}
            for j in range(i):
                row[f"Corr.{j + 1}"] = corr[i, j]
            rows.append(row)
    rows.extend(_residual_rows(results))
    df = pd.DataFrame(rows)
    corr_cols = sorted([c for c in df.columns if c.startswith("Corr.")])
    return df[["Groups", "Name", "Variance", "Std.Dev."] + corr_cols]


def _residual_rows(results: "HLMResults") -> list[dict[str, Any]]:
    from .residual_results import residual_rows
    return residual_rows(results)


def fixed_effects_table(results: "HLMResults", *, alpha: float = 0.05,
                        ddf: str | None = None, cov_type: str | None = None) -> pd.DataFrame:
    """Estimates, SEs, z (or t with a ddf method), p-values and confidence limits.

    ``cov_type`` ("CR0", "CR1", "CR1S", "CR2", or statsmodels' "cluster" = CR1S):
    cluster-robust SEs (groups as clusters,
    :func:`sm_hlm.inference.cov_robust`) with t tests on the Bell-McCaffrey
    (Satterthwaite) small-sample df of clubSandwich's ``coef_test``
    (:func:`sm_hlm.cluster_tests.coef_test_robust`); not combinable with ``ddf``.
    """
    est = results.fe_params
    se = results.bse_fe
    lo_name, hi_name = f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"
    if cov_type is not None:
        if ddf is not None:
            raise ValueError("cov_type and ddf cannot be combined: Satterthwaite and "
                             "Kenward-Roger df belong to the model-based standard errors")
        from .cluster_tests import coef_test_robust
        tab = coef_test_robust(results, cov_type)
        se, df, stat = tab["Std. Error"], tab["df"].to_numpy(), tab["t value"]
        crit = stats.t.ppf(1 - alpha / 2, df)
        return pd.DataFrame({"Coef.": est, "Std.Err.": se, "df": df, "t": stat,
                             "P>|t|": tab["Pr(>|t|)"], lo_name: est - crit * se,
                             hi_name: est + crit * se})
    stat = est / se
    if ddf is None:
        p = 2 * stats.norm.sf(np.abs(stat))
        crit = stats.norm.ppf(1 - alpha / 2)
        return pd.DataFrame({"Coef.": est, "Std.Err.": se, "z": stat, "P>|z|": p,
                             lo_name: est - crit * se, hi_name: est + crit * se})
    if ddf.lower() == "satterthwaite":
        tab = results.satterthwaite()
        df = tab["df"].to_numpy()
        p = 2 * stats.t.sf(np.abs(stat), df)
        crit = stats.t.ppf(1 - alpha / 2, df)
        return pd.DataFrame({"Coef.": est, "Std.Err.": se, "df": df, "t": stat, "P>|t|": p,
                             lo_name: est - crit * se, hi_name: est + crit * se})
    if ddf.lower() in ("kenward-roger", "kenward_roger"):
        tab = _kenward_roger_table(results)
        se = tab["Std. Error"]
        df = tab["df"].to_numpy()
        stat = est / se
        p = 2 * stats.t.sf(np.abs(stat), df)
        crit = stats.t.ppf(1 - alpha / 2, df)
        return pd.DataFrame({"Coef.": est, "Std.Err.": se, "df": df, "t": stat, "P>|t|": p,
                             lo_name: est - crit * se, hi_name: est + crit * se})
    raise ValueError(f"ddf must be None, 'satterthwaite' or 'kenward-roger', got {ddf!r}")


#: lme4's ``getOption("lme4.summary.cor.max")``: the correlation of the fixed
#: effects is shown by default up to this many fixed effects
CORRELATION_MAX = 12


def make_summary(results: "HLMResults", *, alpha: float = 0.05, ddf: str | None = None,
                 float_format: str = "%.4f", cov_type: str | None = None,
                 correlation: bool | None = None) -> summary2.Summary:
    """Build the summary: fit criteria, scaled residuals, random and fixed effects,
    and the correlation of the fixed effects, as lme4's ``summary.merMod``.

    ``correlation``: show the correlation of the fixed effects (None: when
    there are at most 12 fixed effects, as lme4; otherwise a note says how
    to show it).  Its labels are abbreviated as lme4 abbreviates them (R's
    ``abbreviate``: rows to 11, columns to 6 characters); when the column
    labels still do not fit, columns are numbered and the rows carry the
    numbers.  No statistic of a variance component (z, p-value, star) is
    shown: a Wald test of a variance is a boundary test (use ``compare`` or
    ``conf_int_profile``).
    """
    model = results.model
    smry = HLMSummary()
    crit = "REML" if results.reml else "maximum likelihood"
    weight_type = getattr(model, "weight_type", None)
    if weight_type == "survey":
        crit = "maximum pseudo-likelihood (survey weights)"
    formula = getattr(model, "formula", None)
    smry.add_title(f"Linear mixed model fit by {crit}")
    sizes = model.group_sizes
    info = {
        "Model:": "HLM",
        "Dependent Variable:": str(model.endog_names),
        "Method:": results.method,
        "No. Observations:": f"{int(results.nobs)}",
        f"No. Groups ({model.group_name}):": f"{results.n_groups}",
        "Min. group size:": f"{int(sizes.min())}",
        "Max. group size:": f"{int(sizes.max())}",
        "Mean group size:": f"{sizes.mean():.1f}",
        "AIC:": f"{results.aic:.1f}",
        "BIC:": f"{results.bic:.1f}",
        ("Log-pseudo-likelihood:" if weight_type == "survey" else "Log-Likelihood:"):
            f"{results.llf:.1f}",
        ("REML criterion:" if results.reml else "Deviance:"): f"{results.deviance:.1f}",
        "df.resid:": f"{int(results.df_resid)}",
        "Converged:": "Yes" if results.converged else "No",
    }
    extra = _structure_info(results)
    info.update(extra)
    info.update(_weight_info(results))
    smry.add_dict(info, ncols=2, title=f"Formula: {formula}" if formula else None)
    q = residual_quantiles(results).to_frame().T
    q.index = [""]
    smry.add_df(q, float_format="%.4f", title="Scaled residuals:")
    re_tab = random_effects_table(results)
    re_tab = re_tab.astype(object).where(re_tab.notna(), "")
    smry.add_df(re_tab, index=False, float_format="%.4f", title="Random effects:")
    if cov_type is not None and str(cov_type).lower() == "nonrobust":
        cov_type = None                     # statsmodels' name of the model-based covariance
    if cov_type is not None:
        from .inference_base import robust_kind
        kind = robust_kind(cov_type)
        cov_label = kind if kind == str(cov_type).upper() else f"{cov_type} = {kind}"
    smry.add_df(fixed_effects_table(results, alpha=alpha, ddf=ddf, cov_type=cov_type),
                float_format=float_format, title="Fixed effects:")
    if cov_type is not None:
        smry.add_text(f"Fixed effects: cluster-robust ({cov_label}) standard "
                      f"errors, clusters = {model.group_name}; t tests with Bell-McCaffrey "
                      "(Satterthwaite) small-sample df, as clubSandwich's coef_test")
    elif getattr(results, "cov_type", "model") == "sandwich":
        smry.add_text("Fixed effects: sandwich (linearization) standard errors clustered by "
                      f"{model.group_name}" + (
                          "; log-likelihood, AIC and BIC are of the pseudo-likelihood: compare "
                          "models by Wald tests" if weight_type == "survey" else ""))
    if getattr(model, "levels", None) is not None:  # built by HLM.from_levels
        from .levels import add_level_tables
        add_level_tables(smry, results, ddf=ddf, float_format=float_format)
    add_closing_sections(smry, results, correlation=correlation)
    return smry


def add_closing_sections(smry: HLMSummary, results: Any, *,
                         correlation: bool | None = None) -> None:
    """The correlation of the fixed effects (lme4's rule: shown up to 12 of them), then
    the singular-fit and convergence messages, as lme4's summary ends."""
    k_fe = results.model.k_fe
    show_corr = k_fe <= CORRELATION_MAX if correlation is None else bool(correlation)
    if k_fe > 1 and show_corr:
        smry.add_df(correlation_table(results), title="Correlation of fixed effects:")
    elif k_fe > 1 and correlation is None:
        smry.add_text(f"Correlation matrix not shown by default, as p = {k_fe} > "
                      f"{CORRELATION_MAX}; use summary(correlation=True) or results.corr_fe.")
    if results.singular:
        smry.add_text("boundary (singular) fit: " + "; ".join(results.singular_terms))
    if not results.converged:
        smry.add_text(f"Convergence warning: {results.optimizer.message}")


def correlation_table(results: "HLMResults", *, width: int = DEFAULT_WIDTH) -> pd.DataFrame:
    """Lower triangle of the fixed effects' correlation as printed (strings).

    Rows abbreviated to 11 and columns to 6 characters as lme4 does (R's
    ``abbreviate``); if the abbreviated column labels would make the table
    wider than ``width``, the columns are numbered and each row label starts
    with its number, e.g. ``(2) flp``.
    """
    corr = results.corr_fe
    names = [str(c) for c in corr.columns]
    p = len(names)
    tri = corr.where(np.tril(np.ones(corr.shape, dtype=bool), k=-1)).iloc[1:, :-1]
    cells = tri.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    rows = abbreviate(names, 11)[1:]
    cols = abbreviate(names, 6)[:-1]
    row_w = max(len(r) for r in rows)
    col_w = sum(max(len(c), 6) + 2 for c in cols)
    if row_w + col_w > width:
        cols = [f"({i + 1})" for i in range(p - 1)]
        rows = [f"({i + 2}) {n}" for i, n in enumerate(names[1:])]
    cells.index, cells.columns = rows, cols
    return cells


def _weight_info(results: "HLMResults") -> dict[str, str]:
    """Lines naming the weights, their scaling and the standard errors."""
    model = results.model
    kind = getattr(model, "weight_type", None)
    if kind is None:
        return {}
    se = ("sandwich (clustered)" if getattr(results, "cov_type", "model") == "sandwich"
          else "model-based")
    if kind == "precision":
        return {"Weights:": "precision", "Std. errors:": se}
    return {"Weights:": "survey (pseudo-likelihood)",
            "Weight scaling:": str(model.weight_scaling), "Std. errors:": se}


def _structure_info(results: "HLMResults") -> dict[str, str]:
    """Extra lines for a residual structure (none for independent errors)."""
    from .residual_results import structure_info
    return structure_info(results)
