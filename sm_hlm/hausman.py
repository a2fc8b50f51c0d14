"""The Hausman (1978) test of random effects against the within (fixed-effects) estimator.

* method ``"classic"``: Stata's ``hausman fe re``: the within estimator
  (group dummies, i.e. OLS on group-demeaned data, sigma^2 on n - m - k df)
  against the fitted HLM's estimates, each with its own covariance.
* method ``"mundlak"``: the robust (Mundlak 1978; Wooldridge 2010, 10.7.3)
  variant: the HLM refitted with the group means of the within-varying
  columns added, and a cluster-robust Wald test that their coefficients are
  zero (valid without the random-effects model being efficient, e.g. with
  random slopes or heteroscedasticity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .crosslevel import _group_means
from .engine.linalg import ALIAS_TOL, sequential_rank_cholesky

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["HausmanResult", "hausman"]

#: Eigenvalues of V_FE - V_RE below this share of the largest |eigenvalue| count as zero.
_RANK_TOL = 1e-10


@dataclass(frozen=True)
class HausmanResult:
    """Result of :func:`hausman`.

    Attributes
    ----------
    statistic : float
        chi^2 statistic (negative possible for ``"classic"``; see ``note``).
    df : int
    pvalue : float
        NaN when the statistic is negative.
    method : str
        ``"classic"`` or ``"mundlak"``.
    table : DataFrame
        classic: ``FE (within)``, ``RE``, ``Difference``, ``S.E.`` (sqrt of
        the diagonal of V_FE - V_RE, NaN where negative) per within-varying
        coefficient.  mundlak: ``Coef.``, ``Std.Err.`` (cluster-robust),
        ``z`` of the group-mean coefficients.
    description : str
        What was compared, in words.
    note : str or None
        Warnings about the test's assumptions (e.g. V_FE - V_RE not positive
        definite), or the columns dropped.
    details : dict
        classic: ``sigma2_fe``, ``df_resid_fe``, ``cov_fe`` (within), ``cov_re``;
        mundlak: ``cov_type``, ``results`` (the augmented fit), ``htz`` (the
        clubSandwich HTZ test of the same hypothesis).
    """

    statistic: float
    df: int
    pvalue: float
    method: str
    table: pd.DataFrame
    description: str
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """A short text report (Stata's layout: coefficients, then the test)."""
        lines = [f"Hausman test ({self.method}): {self.description}",
                 self.table.to_string(float_format=lambda v: f"{v:.6g}"),
                 f"chi2({self.df}) = {self.statistic:.4f}    Prob > chi2 = "
                 + ("n/a" if np.isnan(self.pvalue) else f"{self.pvalue:.4g}")]
        if self.note:
            lines.append(f"Note: {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _within_columns(res: "HLMResults") -> tuple[list[int], np.ndarray, list[str]]:
    """Indices of the fixed-effect columns that vary within groups, their group means
    (m, k) expanded to rows (n, k), and the names of the non-varying ones."""
    model = res.model
    X = model.exog
    codes = model.group_codes
    m = model.n_groups
    means = np.column_stack([_group_means(X[:, i], codes, m) for i in range(X.shape[1])])
    Xbar = means[codes]
    ss_w = np.sum((X - Xbar) ** 2, axis=0)
    ss = np.sum(X ** 2, axis=0)
    varying = ss_w > ALIAS_TOL * np.maximum(ss, np.finfo(float).tiny)
    idx = [int(i) for i in np.flatnonzero(varying)]
    if not idx:
        raise ValueError("no fixed-effect column varies within the groups: the within "
                         "(fixed-effects) estimator has nothing to compare")
    names = list(model.exog_names)
    constant = [names[i] for i in np.flatnonzero(~varying)]
    return idx, Xbar[:, idx], constant


def _drop_aliased(Xt: np.ndarray, idx: list[int], names: list[str]) -> tuple[list[int], list[str]]:
    """Drop within-varying columns whose demeaned values are collinear with earlier ones."""
    G = Xt.T @ Xt
    _, kept = sequential_rank_cholesky(G[:, :, None].copy())
    kept = kept[:, 0]
    dropped = [names[i] for i, k in zip(idx, kept) if not k]
    return [i for i, k in zip(idx, kept) if k], dropped


def hausman(results: Any, *, method: str = "classic",
            cov_type: str | None = None) -> HausmanResult:
    """Hausman test of the random-effects (HLM) estimates against the within estimator.

    Parameters
    ----------
    results : HLMResults
        An ML or REML fit (independent residuals).
    method : {"classic", "mundlak"}
        ``"classic"``: Stata's ``hausman fe re``.  ``"mundlak"``: the robust
        variant (group means added, cluster-robust Wald test).
    cov_type : {"CR2", "CR1", "CR0"}, optional
        Cluster-robust covariance of the ``"mundlak"`` test (default CR2);
        an error with ``"classic"``, which uses model-based covariances.

    Returns
    -------
    HausmanResult

    Notes
    -----
    The compared coefficients are those of the fixed-effect columns x_k that
    vary within groups (their within sum of squares exceeds 1e-12 of their
    sum of squares; the intercept and group-level columns are not identified
    by the within estimator).  Classic: with x~ = x - xbar_j and y~ = y - ybar_j,

        b_FE = (X~'X~)^-1 X~'y~,   s^2 = |y~ - X~ b_FE|^2 / (n - m - k),
        V_FE = s^2 (X~'X~)^-1,

    (``lm(y ~ x + factor(g))``, Stata's ``xtreg, fe``); b_RE and V_RE are the
    fit's estimates and model-based covariance sigma^2 (X'V^-1X)^-1 for the
    same columns, and

        H = (b_FE - b_RE)'(V_FE - V_RE)^-1 (b_FE - b_RE) ~ chi^2(k)

    under H0 (no correlation of the random effects with x).  When
    V_FE - V_RE is singular a Moore-Penrose inverse is used and df = its
    rank (eigenvalues above 1e-10 of the largest); when it is not positive
    definite the note says so, and a negative H gets no p-value (Stata:
    "chi2<0 ==> model fitted on these data fails to meet the asymptotic
    assumptions of the Hausman test").  With random slopes V_RE includes
    the slope variance and the classic test is not valid: prefer "mundlak".

    Mundlak: refit y ~ X + Xbar_w (same random part, same ML/REML) and test
    gamma = 0 for the coefficients of the group means Xbar_w by the Wald
    statistic gamma'V_CR^-1 gamma ~ chi^2(k) with the cluster-robust
    covariance ``cov_type`` (:func:`sm_hlm.inference.cov_robust`);
    ``details["htz"]`` holds clubSandwich's HTZ small-sample F test of the
    same hypothesis (:func:`sm_hlm.cluster_tests.wald_test_robust`).
    """
    from .inference import _unwrap

    res = _unwrap(results, "hausman()")
    key = str(method).lower()
    if key not in ("classic", "mundlak"):
        raise ValueError(f"method must be 'classic' or 'mundlak', got {method!r}")
    if key == "classic" and cov_type is not None:
        raise ValueError("cov_type applies to method='mundlak' only; the classic test uses each "
                         "estimator's model-based covariance")
    kind = "CR2" if cov_type is None else str(cov_type).upper()
    if kind not in ("CR0", "CR1", "CR2"):
        raise ValueError(f"cov_type must be one of ['CR0', 'CR1', 'CR2'], got {cov_type!r}")
    model = res.model
    names = list(model.exog_names)
    idx, Xbar, constant = _within_columns(res)
    X = model.exog
    Xt = X[:, idx] - Xbar
    idx_kept, dropped = _drop_aliased(Xt, idx, names)
    if dropped:
        keep = [idx.index(i) for i in idx_kept]
        Xt, Xbar = Xt[:, keep], Xbar[:, keep]
    idx = idx_kept
    wnames = [names[i] for i in idx]
    notes = []
    if dropped:
        notes.append(f"within-collinear column(s) {dropped} dropped")
    if key == "mundlak":
        return _mundlak(res, idx, Xbar, wnames, kind, notes)

    y = model.endog
    m = model.n_groups
    n = len(y)
    k = len(idx)
    yt = y - _group_means(y, model.group_codes, m)[model.group_codes]
    G = Xt.T @ Xt
    b_fe = np.linalg.solve(G, Xt.T @ yt)
    e = yt - Xt @ b_fe
    df_resid = n - m - k
    if df_resid <= 0:
        raise ValueError(f"the within estimator has {df_resid} residual df (n - m - k with "
                         f"n={n}, m={m}, k={k})")
    s2 = float(e @ e) / df_resid
    V_fe = s2 * np.linalg.inv(G)
    b_re = np.asarray(res.fit_result.fe_params, float)[idx]
    V_re = np.asarray(res.fit_result.cov_fe, float)[np.ix_(idx, idx)]
    d = b_fe - b_re
    Vd = 0.5 * ((V_fe - V_re) + (V_fe - V_re).T)
    w, U = np.linalg.eigh(Vd)
    nz = np.abs(w) > _RANK_TOL * np.max(np.abs(w))
    rank = int(nz.sum())
    H = float(((U.T @ d)[nz] ** 2 / w[nz]).sum())
    if np.any(w[nz] < 0):
        notes.append("V_FE - V_RE is not positive definite")
    if rank < k:
        notes.append(f"V_FE - V_RE has rank {rank} < {k}: generalised inverse, df = {rank}")
    if H < 0:
        notes.append("chi2 < 0: the model fitted on these data fails to meet the asymptotic "
                     "assumptions of the Hausman test (e.g. random slopes); use "
                     "method='mundlak'")
        pval = np.nan
    else:
        pval = float(stats.chi2.sf(H, rank))
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.where(np.diag(Vd) >= 0, np.diag(Vd), np.nan))
    table = pd.DataFrame({"FE (within)": b_fe, "RE": b_re, "Difference": d, "S.E.": se},
                         index=pd.Index(wnames))
    desc = (f"within (fixed-effects) estimator vs {res.method} random-effects fit, "
            f"coefficients varying within {model.group_name}; each estimator's own covariance, "
            f"within sigma^2 on n - m - k = {df_resid} df")
    if constant:
        desc += f" (not compared, constant within groups: {', '.join(constant)})"
    return HausmanResult(statistic=H, df=rank, pvalue=pval, method="classic", table=table,
                         description=desc, note="; ".join(notes) or None,
                         details={"sigma2_fe": s2, "df_resid_fe": df_resid,
                                  "cov_fe": pd.DataFrame(V_fe, index=wnames, columns=wnames),
                                  "cov_re": pd.DataFrame(V_re, index=wnames, columns=wnames)})


def _mundlak(res: "HLMResults", idx: list[int], Xbar: np.ndarray, wnames: list[str],
             cov_type: str, notes: list[str]) -> HausmanResult:
    from .cluster_tests import wald_test_robust
    from .inference import cov_robust
    HLM = type(res.model)     # the model's own class (no import of the model layer)

    model = res.model
    mnames = [f"mean({nm})" for nm in wnames]
    clash = [nm for nm in mnames if nm in model.exog_names]
    if clash:
        raise ValueError(f"the model already has column(s) {clash}")
    exog = pd.DataFrame(np.column_stack([model.exog, Xbar]),
                        columns=list(model.exog_names) + mnames)
    exog_re = pd.DataFrame(model.exog_re, columns=list(model.re_design.names))
    groups = pd.Series(np.asarray(model.group_labels)[model.group_codes], name=model.group_name)
    endog = pd.Series(model.endog, name=str(model.endog_names))
    aug_model = HLM(endog, exog, groups, exog_re, re_terms=model.re_design.terms)
    aug = aug_model.fit(reml=bool(res.fit_result.reml))
    aug_res = getattr(aug, "_results", aug)
    p = model.k_fe
    V = cov_robust(aug_res, cov_type).to_numpy()[p:, p:]
    gam = np.asarray(aug_res.fit_result.fe_params, float)[p:]
    k = len(gam)
    stat = float(gam @ np.linalg.solve(V, gam))
    L = np.zeros((k, p + k))
    L[:, p:] = np.eye(k)
    htz = wald_test_robust(aug_res, L, cov_type=cov_type, test="HTZ")
    se = np.sqrt(np.diag(V))
    table = pd.DataFrame({"Coef.": gam, "Std.Err.": se, "z": gam / se}, index=pd.Index(mnames))
    desc = (f"{res.method} random-effects fit with the group means of the within-varying "
            f"columns {wnames} added; Wald test of their coefficients = 0 with the "
            f"cluster-robust ({cov_type}) covariance, clusters = {model.group_name}")
    return HausmanResult(statistic=stat, df=k, pvalue=float(stats.chi2.sf(stat, k)),
                         method="mundlak", table=table, description=desc,
                         note="; ".join(notes) or None,
                         details={"cov_type": cov_type, "results": aug, "htz": htz})
