"""Plots of a fitted HLM: caterpillar, shrinkage, residual diagnostics.

matplotlib is an optional dependency (``pip install sm_hlm[plot]``); it is
imported when a plot is drawn.  Every function returns the matplotlib
``Figure`` it drew on; with ``ax=None`` the figure is made with
``matplotlib.pyplot`` (so ``plt.show()`` shows it, as statsmodels' plots).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["caterpillar", "shrinkage_plot", "residual_plots"]

#: groups above which the caterpillar plot drops its group tick labels
_MAX_GROUP_LABELS = 60


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised without matplotlib only
        raise ImportError("sm_hlm's plots need matplotlib: pip install sm_hlm[plot]") from exc
    return plt


def _axes_list(ax: Any, n: int, *, ncols: int | None = None,
               figsize: tuple[float, float] | None = None) -> tuple[Any, list[Any]]:
    """A figure and ``n`` axes: new ones when ``ax`` is None, else the given ones."""
    plt = _pyplot()
    if ax is None:
        ncols = min(n, 3) if ncols is None else ncols
        nrows = int(np.ceil(n / ncols))
        fig, axs = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
        axs = list(axs.ravel())
        for extra in axs[n:]:
            extra.remove()
        return fig, axs[:n]
    axs = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(ax, (Sequence, np.ndarray)) \
        else [ax]
    if len(axs) != n:
        raise ValueError(f"ax must hold {n} Axes (one per panel), got {len(axs)}")
    return axs[0].figure, axs


# ---------------------------------------------------------------- caterpillar
def caterpillar(results: "HLMResults", *, term: str | Sequence[str] | None = None,
                alpha: float = 0.05, sort: bool = True, ax: Any = None) -> Any:
    """Caterpillar plot: each group's BLUP with its conditional interval.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.
    term
        Random effect(s) to plot (names of ``results.cov_re``); all when None.
    alpha
        Intervals have coverage 1 - alpha.
    sort
        Order each panel's groups by their BLUP (lme4's ``dotplot(ranef(.))``
        sorts too); otherwise by group label.
    ax
        Axes to draw on: one per plotted term (a single Axes for one term).
        A new figure with one panel per term when None.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Group j's interval for effect k is

    .. math:: \\hat b_{jk} \\pm z_{1-\\alpha/2} \\sqrt{(C_j)_{kk}},

    C_j = sigma^2 Lambda (Lambda'Z_j'Z_j Lambda + I)^{-1} Lambda' the
    conditional covariance of the BLUP (lme4's ``condVar``), which ignores
    the uncertainty of beta and of the variance components.
    """
    re = results.ranef()
    se = np.sqrt(np.einsum("kkm->mk", results.fit_result.blup_cov))
    se = pd.DataFrame(se, index=re.index, columns=list(re.columns))
    return draw_caterpillar(re, se, results.model.group_name, term=term, alpha=alpha,
                            sort=sort, ax=ax)


def draw_caterpillar(re: pd.DataFrame, se: pd.DataFrame, group: str, *,
                     term: str | Sequence[str] | None = None, alpha: float = 0.05,
                     sort: bool = True, ax: Any = None) -> Any:
    """The caterpillar plot of conditional modes ``re`` with conditional SDs ``se``
    (one row per level of ``group``, one column per effect); see :func:`caterpillar`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = list(re.columns)
    if not names:
        raise ValueError("the model has no random effects to plot")
    terms = names if term is None else ([term] if isinstance(term, str) else list(term))
    unknown = [t for t in terms if t not in names]
    if unknown:
        raise KeyError(f"unknown random effect(s) {unknown}; the model has {names}")
    z = stats.norm.ppf(1 - alpha / 2)
    m = len(re)
    height = min(max(3.0, 0.12 * m + 1.0), 12.0)
    fig, axs = _axes_list(ax, len(terms), ncols=len(terms),
                          figsize=(3.2 * len(terms) + 1.0, height))
    for a, t in zip(axs, terms):
        vals, half = re[t].to_numpy(), z * se[t].to_numpy()
        order = np.argsort(vals, kind="stable") if sort else np.arange(m)
        pos = np.arange(m)
        a.errorbar(vals[order], pos, xerr=half[order], fmt="o", ms=3, lw=0.8,
                   color="C0", ecolor="0.55", capsize=0, label="BLUP")
        a.axvline(0.0, color="k", lw=0.8, ls="--")
        a.set_title(t)
        a.set_xlabel(f"BLUP \u00b1 {z:.2f} SD ({100 * (1 - alpha):g}%)")
        a.set_ylim(-1, m)
        if m <= _MAX_GROUP_LABELS:
            a.set_yticks(pos)
            a.set_yticklabels([str(g) for g in re.index[order]], fontsize=7)
        else:
            a.set_yticks([])
        if a is axs[0]:
            a.set_ylabel(f"{group} ({m} groups{', sorted' if sort else ''})")
    fig.suptitle(f"Random effects of {group}")
    if ax is None:
        fig.tight_layout()
    return fig



# ---------------------------------------------------------------- shrinkage
def shrinkage_plot(results: "HLMResults", *, terms: Sequence[str] | None = None,
                   ax: Any = None) -> Any:
    """Per-group OLS estimates against the BLUP-based group coefficients.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.
    terms
        Two random effects to plot against each other (x, y); the first two
        when None.  A random-intercept model plots the one coefficient
        against group size.
    ax
        An Axes to draw on; a new figure when None.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Open circles are the groups' OLS coefficients (the notes' ``BETA.OLS``,
    :meth:`HLM.group_ols`), filled dots the BLUP-based coefficients
    gamma_j + b_j (:func:`sm_hlm.diagnostics.group_blup_coefficients`), both
    sized by group size, with a segment from each OLS estimate to its BLUP
    counterpart:

    .. math:: \\gamma_j + \\hat b_j = W_j \\hat\\beta^{OLS}_j + (I - W_j)\\gamma_j .

    Groups whose OLS coefficients are not all estimable are left out (their
    number is given in the legend).  The star is the fixed part: the fixed
    effects when gamma_j is the same for every group, else the mean of
    gamma_j over the plotted groups.
    """
    from .diagnostics import group_blup_coefficients, group_fixed_part

    model = results.model
    names = list(model.re_design.names)
    if not names:
        raise ValueError("the model has no random effects to plot")
    if terms is None:
        terms = names[:2]
    terms = list(terms)
    unknown = [t for t in terms if t not in names]
    if unknown or not 1 <= len(terms) <= 2 or (len(terms) == 1 and len(names) > 1):
        raise ValueError(f"terms must name two of the random effects {names}"
                         + (f" (unknown: {unknown})" if unknown else ""))
    ols = model.group_ols()[terms]
    blup = group_blup_coefficients(results)[terms]
    gamma = group_fixed_part(results)[terms]
    ok = ols.notna().all(axis=1) & blup.notna().all(axis=1)
    if not ok.any():
        raise ValueError(f"no group of {model.group_name!r} has estimable OLS coefficients on "
                         f"{terms} (see model.group_ols()): nothing to plot")
    n_out = int((~ok).sum())
    sizes = model.group_sizes.to_numpy()[ok.to_numpy()]
    s = 8 + 60 * (sizes / sizes.max())
    O, B, G = ols[ok].to_numpy(), blup[ok].to_numpy(), gamma[ok].to_numpy()
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
    else:
        fig = ax.figure
    from matplotlib.collections import LineCollection

    if len(terms) == 2:
        xo, yo, xb, yb = O[:, 0], O[:, 1], B[:, 0], B[:, 1]
        fixed = G.mean(axis=0)
        xlabel, ylabel = terms
    else:
        xo = xb = sizes.astype(float)
        yo, yb = O[:, 0], B[:, 0]
        fixed = np.array([np.nan, G[:, 0].mean()])
        xlabel, ylabel = f"group size ({model.group_name})", terms[0]
        ax.set_xscale("log")
    segs = np.stack([np.column_stack([xo, yo]), np.column_stack([xb, yb])], axis=1)
    ax.add_collection(LineCollection(segs, colors="0.6", linewidths=0.6, zorder=1))
    ax.scatter(xo, yo, s=s, facecolors="none", edgecolors="C0", linewidths=0.8, zorder=2,
               label=f"OLS by {model.group_name}" + (f" ({n_out} not estimable)" if n_out else ""))
    ax.scatter(xb, yb, s=s, color="C3", alpha=0.8, linewidths=0, zorder=3,
               label="fixed part + BLUP")
    constant = bool(np.allclose(G, G[:1], rtol=1e-10, atol=1e-12)) if len(G) else True
    flabel = "fixed effects" if constant else "fixed part (mean over groups)"
    if len(terms) == 2:
        ax.scatter([fixed[0]], [fixed[1]], marker="*", s=260, color="k", zorder=4, label=flabel)
    else:
        ax.axhline(fixed[1], color="k", lw=1.2, zorder=4, label=flabel)
    ax.autoscale_view()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Shrinkage of the group coefficients")
    ax.legend(loc="best", fontsize=8, markerscale=0.7)
    return fig


# ---------------------------------------------------------------- residuals
def _qq(ax: Any, values: np.ndarray, *, label: str | None = None, color: str = "C0",
        line: bool = True) -> None:
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    p = (np.arange(1, n + 1) - 0.5) / n
    theo = stats.norm.ppf(p)
    ax.plot(theo, v, "o", ms=2.5, color=color, alpha=0.7, label=label)
    if line and n >= 2:
        q1, q3 = np.quantile(v, [0.25, 0.75])
        t1, t3 = stats.norm.ppf([0.25, 0.75])
        slope = (q3 - q1) / (t3 - t1)
        xs = np.array([theo[0], theo[-1]])
        ax.plot(xs, q1 + slope * (xs - t1), "-", color=color, lw=0.9)


def residual_plots(results: "HLMResults", *,
                   figsize: tuple[float, float] = (10.0, 8.0)) -> Any:
    """Residual diagnostics in a 2 x 2 figure.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.
    figsize
        Size of the new figure in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Panels: conditional residuals against fitted values; normal QQ plot
        of the scaled residuals (y - X beta - Z b) / sigma; normal QQ plot of
        each random effect's BLUPs divided by their standard deviation across
        groups; histogram of the scaled residuals with the N(0, 1) density.
        With a residual structure the QQ plot and the histogram show the
        normalized residuals instead (``results.resid_normalized``, nlme's
        ``type = "normalized"``), which are N(0, 1) under the structure; for
        independent errors the two coincide.

    Notes
    -----
    QQ plots use the plotting positions (i - 1/2)/n and a reference line
    through the quartiles (R's ``qqline``).  BLUPs are shrunk, so their
    spread is below sqrt(Psi_kk); the QQ plot checks their shape only.
    """
    plt = _pyplot()
    fitted = np.asarray(results.fittedvalues, dtype=float)
    resid = np.asarray(results.resid, dtype=float)
    std_resid = np.asarray(results.resid_normalized, dtype=float)
    kind = "scaled" if getattr(results.model, "residual", None) is None else "normalized"
    fig, axs = plt.subplots(2, 2, figsize=figsize)
    a = axs[0, 0]
    a.scatter(fitted, resid, s=4, alpha=0.5, color="C0", linewidths=0)
    a.axhline(0.0, color="k", lw=0.8, ls="--")
    a.set_xlabel("fitted values")
    a.set_ylabel("residuals")
    a.set_title("Residuals vs fitted")
    a = axs[0, 1]
    _qq(a, std_resid)
    a.set_xlabel("normal quantiles")
    a.set_ylabel(f"{kind} residuals")
    a.set_title(f"Normal QQ: {kind} residuals")
    a = axs[1, 0]
    re = results.ranef()
    for i, c in enumerate(re.columns):
        v = re[c].to_numpy()
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        _qq(a, v / sd if sd > 0 else v, label=c, color=f"C{i}")
    if len(re.columns) > 1:
        a.legend(fontsize=8)
    a.set_xlabel("normal quantiles")
    a.set_ylabel("standardised BLUPs")
    a.set_title(f"Normal QQ: BLUPs ({results.model.group_name})")
    a = axs[1, 1]
    a.hist(std_resid, bins="auto", density=True, color="C0", alpha=0.6, edgecolor="white")
    xs = np.linspace(min(std_resid.min(), -3.5), max(std_resid.max(), 3.5), 200)
    a.plot(xs, stats.norm.pdf(xs), "k-", lw=1)
    a.set_xlabel(f"{kind} residuals")
    a.set_ylabel("density")
    a.set_title(f"Histogram of {kind} residuals")
    fig.tight_layout()
    return fig
