"""lme4-style summaries of multilevel fits (every factor, ``groups: a:b, m; a, k``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from ..summary import HLMSummary, add_closing_sections

if TYPE_CHECKING:
    from .results import MultilevelResults

__all__ = ["make_multilevel_summary", "random_effects_table", "groups_line"]


def random_effects_table(results: "MultilevelResults") -> pd.DataFrame:
    """Variance, SD and correlations of every factor's effects, then the residual."""
    model = results.model
    pos = {t.factor: k for k, t in enumerate(model.re_terms)}
    rows = []
    for f in model.factor_names:
        k = pos[f]
        t = model.re_terms[k]
        cov = results.fit_result.cov_re[k]
        sd = np.sqrt(np.diag(cov))
        den = np.outer(sd, sd)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(den > 0, cov / np.where(den > 0, den, 1.0), np.nan)
        # correlations only within a block (several bar terms on one factor are independent)
        block = np.repeat(np.arange(len(t.block_sizes)), t.block_sizes)
        for i, name in enumerate(t.names):
            row = {"Groups": f if i == 0 else "", "Name": name, "Variance": cov[i, i],
                   "Std.Dev.": sd[i]}
            for j in range(i):
                row[f"Corr.{j + 1}"] = corr[i, j] if block[i] == block[j] else np.nan
            rows.append(row)
    rows.append({"Groups": "Residual", "Name": "", "Variance": results.scale,
                 "Std.Dev.": np.sqrt(results.scale)})
    nr = model.residual
    if nr is not None:
        for name, v in results.residual_params.items():
            rows.append({"Groups": f"Residual ({type(nr.structure).__name__} within "
                                   f"{nr.inner})", "Name": name, "Variance": v,
                         "Std.Dev.": np.nan})
    df = pd.DataFrame(rows)
    corr_cols = sorted(c for c in df.columns if c.startswith("Corr."))
    return df[["Groups", "Name", "Variance", "Std.Dev."] + corr_cols]


def groups_line(results: "MultilevelResults") -> str:
    """lme4's ``Number of obs: 7230, groups: schoolid:childid, 1721; schoolid, 60``."""
    ng = results.model.n_groups
    return (f"Number of obs: {int(results.nobs)}, groups: "
            + "; ".join(f"{k}, {v}" for k, v in ng.items()))


def make_multilevel_summary(results: "MultilevelResults", *, alpha: float = 0.05,
                            float_format: str = "%.4f", correlation: bool | None = None,
                            ddf: str | None = None):
    """Fit criteria, scaled residuals, random effects of every factor, fixed effects
    (z tests), the correlation of the fixed effects and any convergence or singular-fit
    message, as lme4's ``summary.merMod``."""
    model = results.model
    smry = HLMSummary()
    smry.add_title(f"Linear mixed model fit by {'REML' if results.reml else 'maximum likelihood'}")
    info = {
        "Model:": "HLM (multilevel)",
        "Dependent Variable:": str(model.endog_names),
        "Method:": results.method,
        "No. Observations:": f"{int(results.nobs)}",
        **{f"No. Groups ({k}):": f"{v}" for k, v in model.n_groups.items()},
        "Design:": ("nested" if model.is_nested else "crossed"),
        "AIC:": f"{results.aic:.1f}",
        "BIC:": f"{results.bic:.1f}",
        "Log-Likelihood:": f"{results.llf:.1f}",
        ("REML criterion:" if results.reml else "Deviance:"): f"{results.deviance:.1f}",
        "df.resid:": f"{int(results.df_resid)}",
        "Converged:": "Yes" if results.converged else "No",
    }
    formula = getattr(model, "formula", None)
    smry.add_dict(info, ncols=2, title=f"Formula: {formula}" if formula else None)
    if getattr(results, "rows_in_memory", True):     # not for fits from cell statistics
        r = np.asarray(results.resid_scaled)
        q = pd.DataFrame([np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0])],
                         columns=["Min", "1Q", "Median", "3Q", "Max"], index=[""])
        smry.add_df(q, float_format="%.4f", title="Scaled residuals:")
    re_tab = random_effects_table(results)
    re_tab = re_tab.astype(object).where(re_tab.notna(), "")
    smry.add_df(re_tab, index=False, float_format="%.4f", title="Random effects:")
    smry.add_text(groups_line(results))
    if ddf is not None and str(ddf).lower() != "satterthwaite":
        raise ValueError(f"ddf must be None or 'satterthwaite' with several grouping factors, "
                         f"got {ddf!r}")
    est, se = results.fe_params, results.bse_fe
    z = est / se
    if ddf is None:
        crit = stats.norm.ppf(1 - alpha / 2)
        fe = pd.DataFrame({"Coef.": est, "Std.Err.": se, "z": z,
                           "P>|z|": 2 * stats.norm.sf(np.abs(z)),
                           f"[{alpha / 2:g}": est - crit * se,
                           f"{1 - alpha / 2:g}]": est + crit * se})
    else:
        df = results.satterthwaite()["df"].to_numpy()
        crit = stats.t.ppf(1 - alpha / 2, df)
        fe = pd.DataFrame({"Coef.": est, "Std.Err.": se, "df": df, "t": z,
                           "P>|t|": 2 * stats.t.sf(np.abs(z), df),
                           f"[{alpha / 2:g}": est - crit * se,
                           f"{1 - alpha / 2:g}]": est + crit * se})
    smry.add_df(fe, float_format=float_format, title="Fixed effects:")
    from .levels import ThreeLevelSpec, level_equations3
    if isinstance(getattr(model, "levels", None), ThreeLevelSpec):
        for name, tab in level_equations3(results).items():
            smry.add_df(tab.drop(columns="fixed effect"), float_format=float_format,
                        title=f"Level-3 equation of {name}:")
    add_closing_sections(smry, results, correlation=correlation)
    return smry
