"""Variance shares and group-level diagnostics of a fitted HLM.

- :func:`variance_components`, :func:`icc`, :func:`r2`: the variance of the
  fixed part, of the random effects and of the residuals, and the
  intraclass correlation and R^2 built from them (Nakagawa & Schielzeth
  2013; Johnson 2014; Nakagawa, Johnson & Schielzeth 2017), as R's
  ``performance::icc`` / ``performance::r2_nakagawa`` compute them;
- :func:`reliability`, :func:`mean_reliability`: reliability of each group's
  OLS coefficients (Raudenbush & Bryk 2002, eq. 3.59), as the HLM program
  reports it;
- :func:`shrinkage`, :func:`shrinkage_matrices`: the weights that pull each
  group's OLS coefficients towards the fixed part;
- :func:`group_fixed_part`, :func:`group_blup_coefficients`: each group's
  fixed part and fixed part + BLUP expressed as coefficients on the
  random-effects design (what the per-group OLS estimates estimate).

All per-group quantities are computed for every group at once with the
q-major batched kernels of :mod:`sm_hlm.engine.linalg`; nothing loops over groups.

Every function reads only ``results.model`` and ``results.fit_result``'s
``fe_params``, ``cov_re`` and ``scale`` (and ``blups`` for
:func:`group_blup_coefficients`), so it can be evaluated at other parameter
values by building results from a modified :class:`~sm_hlm.results.HLMFit`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .engine.linalg import (ALIAS_TOL, batched_back_solve, batched_cholesky, batched_forward_solve,
                     batched_inverse_lower, sequential_rank_cholesky)

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["variance_components", "icc", "r2", "reliability", "mean_reliability", "shrinkage",
           "shrinkage_matrices", "group_fixed_part", "group_blup_coefficients"]


# ------------------------------------------------------------------ helpers
def _parts(results: Any) -> tuple[Any, np.ndarray, np.ndarray, float]:
    """(model, beta, Psi, sigma^2) of a results object (or its wrapper)."""
    if getattr(results.model, "_residual_kernel", None) is not None:
        raise NotImplementedError(
            "ICC, R^2, reliability and shrinkage weights are defined here for independent "
            "residuals (sigma^2 I), not for models with a residual structure")
    fit = results.fit_result
    return (results.model, np.asarray(fit.fe_params, dtype=float),
            np.asarray(fit.cov_re, dtype=float), float(fit.scale))


def _group_gram(model: Any) -> np.ndarray:
    """Z_j'Z_j of every group, (q, q, m) in the order of ``model.group_labels``
    (the model's sufficient statistics, formed once at construction)."""
    return model._stats.ZtZ


def _masked_cholesky(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factors of each A_j restricted to its estimable columns.

    Columns are dropped in order as R's ``lm`` does (see
    :func:`sm_hlm.groupwise.group_ols`).  Returns the (q, q, m) lower factors
    of A_j with the dropped rows and columns replaced by those of the
    identity, and the (q, m) boolean mask of kept columns.
    """
    q = A.shape[0]
    _, kept = sequential_rank_cholesky(A, tol=ALIAS_TOL)
    keep2 = kept[:, None, :] & kept[None, :, :]
    A2 = np.where(keep2, A, 0.0) + np.eye(q)[:, :, None] * (~kept)[None, :, :]
    return batched_cholesky(A2), kept


def _masked_inverse_diag(A: np.ndarray) -> np.ndarray:
    """Diagonal (q, m) of the inverse of each A_j restricted to its estimable
    columns (:func:`_masked_cholesky`), NaN for dropped columns."""
    L, kept = _masked_cholesky(A)
    Li = batched_inverse_lower(L)
    diag = np.einsum("kim,kim->im", Li, Li)              # diag(A2^-1) = column norms of L^-1
    return np.where(kept, diag, np.nan)


def _psd_factor(psi: np.ndarray) -> np.ndarray:
    """F with F F' = Psi for a (possibly singular) PSD Psi."""
    w, V = np.linalg.eigh((psi + psi.T) / 2.0)
    return V * np.sqrt(np.clip(w, 0.0, None))


def _re_frame(values: np.ndarray, model: Any, name: str | None = None) -> pd.DataFrame:
    df = pd.DataFrame(values, index=model.group_labels, columns=list(model.re_design.names))
    df.columns.name = name
    return df


# --------------------------------------------------------- variance shares
def variance_components(results: "HLMResults") -> pd.Series:
    """Variances of the fixed part, the random effects and the residuals.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.

    Returns
    -------
    Series
        ``var_fixed``, ``var_random``, ``var_residual``.

    Notes
    -----
    With fixed-effects design rows x_i', random-effects design rows z_i',
    estimates beta, Psi, sigma^2 and n rows,

    .. math::

        \\sigma^2_f = \\frac{1}{n-1} \\sum_i (x_i'\\hat\\beta - \\overline{x'\\hat\\beta})^2,
        \\qquad
        \\sigma^2_\\alpha = \\frac{1}{n} \\sum_i z_i' \\Psi z_i
                        = \\frac{1}{n} \\operatorname{tr}(Z \\Psi Z'),
        \\qquad
        \\sigma^2_\\varepsilon = \\sigma^2 .

    sigma^2_f uses R's ``var`` (denominator n - 1), as
    ``insight::get_variance`` (behind ``performance::r2_nakagawa`` and
    ``performance::icc``) and ``MuMIn::r.squaredGLMM`` do.  sigma^2_alpha is
    the mean random-effect variance over the observed rows (Johnson 2014;
    Nakagawa, Johnson & Schielzeth 2017, eq. 11); for a random intercept it
    is tau^2.  Z is the model's random-effects design, all terms included:
    ``insight`` 0.19 instead takes the columns from the fixed design and
    keeps only the first term of a grouping factor split into several terms
    (``(1 | g) + (0 + x | g)``), so it reports a smaller sigma^2_alpha there.
    """
    model, beta, psi, s2 = _parts(results)
    eta = model.exog @ beta
    var_f = float(np.var(eta, ddof=1)) if len(eta) > 1 else 0.0
    # mean_i z_i' Psi z_i = tr(Psi Z'Z) / n, with Z'Z = sum_j Z_j'Z_j
    var_r = float(np.sum(psi * _group_gram(model).sum(axis=2))) / len(eta)
    return pd.Series({"var_fixed": var_f, "var_random": var_r, "var_residual": s2},
                     name="variance")


def _random_intercept_only(model: Any) -> bool:
    Z = model.exog_re
    return Z.shape[1] == 1 and bool(np.all(Z[:, 0] == 1.0))


def icc(results: "HLMResults") -> pd.Series:
    """Intraclass correlation coefficients.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.

    Returns
    -------
    Series
        ``ICC_adjusted`` and ``ICC_unadjusted`` (``performance::icc``), and
        for a random-intercept-only model also the classical ``ICC``
        tau^2 / (tau^2 + sigma^2), which then equals ``ICC_adjusted``.

    Notes
    -----
    With the variance components of :func:`variance_components`
    (Nakagawa, Johnson & Schielzeth 2017),

    .. math::

        \\mathrm{ICC}_{adj} = \\frac{\\sigma^2_\\alpha}{\\sigma^2_\\alpha + \\sigma^2_\\varepsilon},
        \\qquad
        \\mathrm{ICC}_{unadj} = \\frac{\\sigma^2_\\alpha}
              {\\sigma^2_f + \\sigma^2_\\alpha + \\sigma^2_\\varepsilon},

    where sigma^2_alpha = mean_i z_i' Psi z_i.  For a random intercept
    sigma^2_alpha = tau^2 and ICC_adj is the classical correlation of two
    observations of the same group.  With random slopes the correlation
    depends on the covariates; ICC_adj is then the share of the
    random-effects variance averaged over the observed rows.
    """
    vc = variance_components(results)
    f, a, e = vc["var_fixed"], vc["var_random"], vc["var_residual"]
    out = {"ICC_adjusted": a / (a + e), "ICC_unadjusted": a / (f + a + e)}
    if _random_intercept_only(results.model):
        tau2 = float(results.fit_result.cov_re[0, 0])
        out["ICC"] = tau2 / (tau2 + e)
    return pd.Series(out, name="icc")


def r2(results: "HLMResults") -> pd.Series:
    """Marginal and conditional R^2 (Nakagawa & Schielzeth 2013; Johnson 2014).

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.

    Returns
    -------
    Series
        ``R2_marginal`` and ``R2_conditional``, as ``performance::r2_nakagawa``
        and ``MuMIn::r.squaredGLMM`` for a Gaussian model.

    Notes
    -----
    With the variance components of :func:`variance_components`,

    .. math::

        R^2_m = \\frac{\\sigma^2_f}{\\sigma^2_f + \\sigma^2_\\alpha + \\sigma^2_\\varepsilon},
        \\qquad
        R^2_c = \\frac{\\sigma^2_f + \\sigma^2_\\alpha}
              {\\sigma^2_f + \\sigma^2_\\alpha + \\sigma^2_\\varepsilon},

    sigma^2_f = var(X beta) (denominator n - 1), sigma^2_alpha =
    tr(Z Psi Z')/n (Johnson's extension to random slopes),
    sigma^2_epsilon = sigma^2.
    """
    vc = variance_components(results)
    f, a, e = vc["var_fixed"], vc["var_random"], vc["var_residual"]
    tot = f + a + e
    return pd.Series({"R2_marginal": f / tot, "R2_conditional": (f + a) / tot}, name="r2")


# ------------------------------------------------------------- reliability
def reliability(results: "HLMResults") -> pd.DataFrame:
    """Reliability of each group's OLS coefficients.

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.

    Returns
    -------
    DataFrame
        One row per group, one column per random effect.  NaN where the
        group's OLS coefficient is not estimable (NaN in
        :meth:`HLM.group_ols`).  ``attrs["mean_reliability"]`` holds
        :func:`mean_reliability` as a dict ``{effect: mean}``.

    Notes
    -----
    Group j's OLS estimate of its coefficient vector on the random-effects
    design has sampling covariance V_j = sigma^2 (Z_j'Z_j)^{-1} around the
    group's true coefficients, whose variance across groups is Psi.  The
    reliability of coefficient k (Raudenbush & Bryk 2002, eq. 3.59) is

    .. math::

        \\lambda_{jk} = \\frac{\\Psi_{kk}}{\\Psi_{kk} + (V_j)_{kk}},
        \\qquad V_j = \\sigma^2 (Z_j'Z_j)^{-1}.

    Where a group's column of Z is aliased (too few rows, no variation) it
    is dropped in order as R's ``lm`` does and V_j is that of the reduced
    regression on the remaining columns, so each reported value is the
    reliability of the coefficient :meth:`HLM.group_ols` reports.  For a
    random intercept lambda_j = tau^2 / (tau^2 + sigma^2 / n_j).
    """
    model, _, psi, s2 = _parts(results)
    q = psi.shape[0]
    if q == 0:
        out = pd.DataFrame(index=model.group_labels)
    else:
        vdiag = _masked_inverse_diag(_group_gram(model))          # (q, m)
        d = np.diag(psi)[:, None]
        lam = d / (d + s2 * vdiag)
        out = _re_frame(lam.T, model)
    # a plain dict (not a Series): pandas compares attrs with == in concat
    out.attrs["mean_reliability"] = {str(k): float(v)
                                     for k, v in out.mean(axis=0, skipna=True).items()}
    return out


def mean_reliability(results: "HLMResults") -> pd.Series:
    """Average reliability of the groups' OLS coefficients (the HLM program's
    "reliability estimates"): the mean over groups of :func:`reliability`,
    groups whose coefficient is not estimable left out.

    Notes
    -----
    .. math:: \\bar\\lambda_k = \\frac{1}{|J_k|} \\sum_{j \\in J_k} \\lambda_{jk},

    J_k the groups whose k-th OLS coefficient is estimable.
    """
    return pd.Series(reliability(results).attrs["mean_reliability"], name="mean_reliability",
                     dtype=float)


# --------------------------------------------------------------- shrinkage
def shrinkage_matrices(results: "HLMResults") -> np.ndarray:
    """Matrix shrinkage weights W_j of every group, shape (q, q, m), q-major.

    Notes
    -----
    .. math::

        W_j = \\Psi (\\Psi + \\sigma^2 (Z_j'Z_j)^{-1})^{-1}
            = \\Psi (Z_j'Z_j \\Psi + \\sigma^2 I)^{-1} Z_j'Z_j
            = F (F' Z_j'Z_j F + \\sigma^2 I)^{-1} F' Z_j'Z_j ,

    with Psi = F F'.  The last form needs neither Z_j'Z_j nor Psi to be
    invertible and is computed with one batched Cholesky of the SPD
    matrices F'Z_j'Z_j F + sigma^2 I.  W_j = C_j Z_j'Z_j / sigma^2 with C_j
    the conditional covariance of the BLUP.  When Z_j'Z_j is invertible the
    BLUP-based coefficients are

    .. math:: \\gamma_j + \\hat b_j = W_j \\hat\\beta^{OLS}_j + (I - W_j) \\gamma_j ,

    gamma_j the group's fixed part on Z (:func:`group_fixed_part`).
    """
    model, _, psi, s2 = _parts(results)
    q, m = psi.shape[0], model.n_groups
    if q == 0:
        return np.zeros((0, 0, m))
    A = _group_gram(model)                                      # (q, q, m)
    F = _psd_factor(psi)
    FtA = np.einsum("ki,klm->ilm", F, A)                        # F' A_j
    M = np.einsum("ilm,lj->ijm", FtA, F) + s2 * np.eye(q)[:, :, None]
    L = batched_cholesky(M)
    X = batched_back_solve(L, batched_forward_solve(L, FtA))    # M_j^-1 F' A_j
    return np.einsum("ik,kjm->ijm", F, X)


def shrinkage(results: "HLMResults") -> pd.DataFrame:
    """Shrinkage weights of each group's coefficients (diagonal of W_j).

    Parameters
    ----------
    results
        A fitted :class:`~sm_hlm.HLMResults`.

    Returns
    -------
    DataFrame
        One row per group, one column per random effect: the diagonal of
        the matrix weight W_j of :func:`shrinkage_matrices` (1 = the
        group's OLS estimate is kept, 0 = fully shrunk to the fixed part).

    Notes
    -----
    .. math:: W_j = \\Psi (\\Psi + \\sigma^2 (Z_j'Z_j)^{-1})^{-1},

    extended to groups with singular Z_j'Z_j by
    W_j = Psi (Z_j'Z_j Psi + sigma^2 I)^{-1} Z_j'Z_j (finite for every
    group).  For a random intercept it is the classical

    .. math:: w_j = \\frac{n_j \\tau^2}{n_j \\tau^2 + \\sigma^2},

    which equals the reliability lambda_j.  With several random effects
    the diagonal of W_j is not the reliability: W_j mixes coefficients
    through the off-diagonals of Psi and Z_j'Z_j, and a diagonal entry can
    fall outside [0, 1] when the effects are strongly correlated.  The
    eigenvalues of W_j (those of (F'Z_j'Z_j F + sigma^2 I)^{-1} F'Z_j'Z_j F)
    always lie in [0, 1).
    """
    return _re_frame(np.einsum("iim->mi", shrinkage_matrices(results)), results.model)


# ----------------------------------------------- coefficients on Z by group
def group_fixed_part(results: "HLMResults") -> pd.DataFrame:
    """Each group's fixed part X_j beta as coefficients on its Z_j.

    Returns
    -------
    DataFrame
        gamma_j = (Z_j'Z_j)^{-1} Z_j'X_j beta, one row per group, one column
        per random effect; NaN where the column is aliased in the group (as
        :meth:`HLM.group_ols`).

    Notes
    -----
    gamma_j is what group j's OLS regression of y_j on Z_j estimates
    before adding b_j.  When X_j beta lies in the span of Z_j (Z's columns
    are in X and the other columns of X are group-level variables or their
    interactions with Z's columns, as in the notes' ``flp * ses`` model) it
    is exactly the group's model coefficients, e.g. intercept
    beta_0 + beta_flp flp_j.  Otherwise it is the projection, and
    :math:`\\gamma_j + b_j = W_j \\hat\\beta^{OLS}_j + (I - W_j)\\gamma_j`
    still holds.
    """
    model, beta, _, _ = _parts(results)
    p = len(beta)
    # Z_j'X_j beta from the model's per-group cross products Z_j'[X_j y_j]
    b = np.einsum("qpm,p->qm", model._stats.ZtW[:, :p, :], beta)[:, None, :]
    L, kept = _masked_cholesky(_group_gram(model))
    coef = batched_back_solve(L, batched_forward_solve(L, b * kept[:, None, :]))[:, 0, :]
    return _re_frame(np.where(kept, coef, np.nan).T, model)


def group_blup_coefficients(results: "HLMResults") -> pd.DataFrame:
    """gamma_j + b_j: each group's fixed part on Z plus its BLUP.

    The BLUP-based counterpart of :meth:`HLM.group_ols` (the notes'
    ``BETA.LME`` when the model has no group-level predictors, where it
    equals the Z columns of ``results.group_coefficients``).
    """
    return group_fixed_part(results) + results.ranef()
