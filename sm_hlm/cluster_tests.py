"""Small-sample tests with cluster-robust covariances (clubSandwich's coef_test, Wald_test).

* :func:`coef_test_robust`: t tests of each fixed effect with a CR0/CR1/CR2
  covariance and Satterthwaite (Bell-McCaffrey) degrees of freedom, as
  ``clubSandwich::coef_test(fit, vcov = "CR2", test = "Satterthwaite")``.
* :func:`wald_test_robust`: joint tests of L beta = r with the approximate
  Hotelling T^2 "HTZ" test (Pustejovsky & Tipton 2018) or the chi-square
  Wald test, as ``clubSandwich::Wald_test(fit, C, vcov, test = ...)``.

The groups are the clusters and the working model is the fitted one
(clubSandwich's default for ``lmerMod``: target V_j, weights V_j^-1).
Everything is computed in each group's (q + p)-dimensional basis of
span[Z_j X_j] (see :func:`sm_hlm.inference.cov_robust`), with no n_j x n_j
matrix.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .inference import _cluster_pieces, _sym_power, _unwrap, cov_robust
from .inference_base import robust_kind

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["coef_test_robust", "wald_test_robust"]

def _kind(cov_type: str) -> str:
    return robust_kind(cov_type)


def _contrast_pieces(res: "HLMResults", kind: str,
                     C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group D_j = g_j'V_j g_j (m, r, r) and h_j = X_j'g_j (m, p, r), and M.

    g_j = A_j W_j X_j M C' (n_j x r) are the weights of the residuals e_j in
    C V^CR C' = sum_j (g_j'e_j)(g_j'e_j)' (up to the CR1 factor, which cancels
    in the df).
    """
    PX, WS, A, _, VS = _cluster_pieces(res, "CR2" if kind == "CR2" else "CR0")
    M = np.asarray(res.fit_result.cov_fe, float) / res.fit_result.scale
    G = WS @ PX @ (M @ C.T)                                       # (m, r0, r)
    if A is not None:
        G = A @ G
    D = np.swapaxes(G, 1, 2) @ VS @ G
    H = np.swapaxes(PX, 1, 2) @ G                                 # (m, p, r)
    return D, H, M


def _omega_terms(D: np.ndarray, H: np.ndarray,
                 M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Omega = sum_j tr P(s,t) and the pieces a_jj, S of the P array.

    See the Notes of :func:`wald_test_robust`.
    """
    a = np.swapaxes(H, 1, 2) @ M @ H                              # a_jj[s, t] = h_js' M h_jt
    S = np.einsum("mas,mbt->stab", H, H)                          # S^{st} = sum_j h_js h_jt'
    return (D - a).sum(axis=0), a, S


def coef_test_robust(results: Any, cov_type: str = "CR2") -> pd.DataFrame:
    """t tests of the fixed effects, cluster-robust SEs, Satterthwaite df (clubSandwich).

    Parameters
    ----------
    results : HLMResults
    cov_type : {"CR2", "CR1", "CR0"}
        The cluster-robust covariance (:func:`sm_hlm.inference.cov_robust`).

    Returns
    -------
    DataFrame
        Index: fixed-effect names; columns ``Estimate``, ``Std. Error``
        (robust), ``df``, ``t value``, ``Pr(>|t|)``, as
        ``clubSandwich::coef_test(fit, vcov = cov_type, test = "Satterthwaite")``
        (its ``beta``, ``SE``, ``df_Satt``, ``tstat``, ``p_Satt``).

    Notes
    -----
    For a coefficient c (a row of C = I) the variance estimate is a quadratic
    form sum_j (g_j'e_j)^2 in the residuals, g_j = A_j W_j X_j M c.  Under the
    working model e ~ N(0, V - X M X'), so its mean and variance are tr(P) and
    2 tr(P^2) with the m x m matrix

        P_jk = delta_jk g_j'V_j g_j - (X_j'g_j)' M (X_k'g_k),

    and the Satterthwaite (Bell & McCaffrey 2002) df are
    (tr P)^2 / tr(P^2) (clubSandwich's ``get_P_array``/``Satterthwaite``).
    With d_j = g_j'V_j g_j, h_j = X_j'g_j and S = sum_j h_j h_j',
    tr P = sum_j (d_j - h_j'M h_j) and
    tr(P^2) = sum_j d_j^2 - 2 sum_j d_j h_j'M h_j + tr(M S M S),
    all computed group by group.  CR1's scalar factor cancels in the df.
    """
    res = _unwrap(results, "coef_test_robust()", structured=True)
    kind = _kind(cov_type)
    names = list(res.model.exog_names)
    p = len(names)
    beta = np.asarray(res.fit_result.fe_params, float)
    se = np.sqrt(np.diag(cov_robust(res, kind).to_numpy()))
    D, H, M = _contrast_pieces(res, kind, np.eye(p))
    omega, a, S = _omega_terms(D, H, M)
    d = np.einsum("mii->mi", D)
    ad = np.einsum("mii->mi", a)
    MS = np.einsum("ab,iibc->iac", M, S)                          # M S^{ii}
    trP2 = (d ** 2).sum(0) - 2.0 * (d * ad).sum(0) + np.einsum("iab,iba->i", MS, MS)
    df = np.diag(omega) ** 2 / trP2
    t = beta / se
    return pd.DataFrame({"Estimate": beta, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)}, index=pd.Index(names))


def _constraints(res: "HLMResults", L: Any, rhs: Any) -> tuple[np.ndarray, np.ndarray]:
    from .kenward_roger import _contrast_matrix
    return _contrast_matrix(res, L, rhs)


def wald_test_robust(results: Any, L: Any, rhs: Any = 0.0, *, cov_type: str = "CR2",
                     test: str = "HTZ") -> pd.DataFrame:
    """Joint test of L beta = rhs with a cluster-robust covariance (clubSandwich's Wald_test).

    Parameters
    ----------
    results : HLMResults
    L : str or array_like (r, p)
        Constraint rows (full row rank), or a constraint string such as
        ``"flp = 0, flp:ses = 0"``.
    rhs : float or array_like
        Null values (arrays only).
    cov_type : {"CR2", "CR1", "CR0"}
    test : {"HTZ", "chi-sq"}
        ``"HTZ"``: the approximate Hotelling T^2 test with an F reference
        distribution (Pustejovsky & Tipton 2018); ``"chi-sq"``: the Wald
        statistic on chi^2(r) (reported as F = Q / r with infinite df).

    Returns
    -------
    DataFrame
        One row: ``test``, ``Fstat``, ``delta``, ``df_num``, ``df_denom``,
        ``p_val``, as clubSandwich.

    Notes
    -----
    Q = (L b - rhs)'(L V^CR L')^-1 (L b - rhs).  HTZ (clubSandwich's
    ``Wald_testing``): with g_js the weights of contrast row s (see
    :func:`coef_test_robust`), the r x r x m x m array
    P_st[j, k] = delta_jk g_js'V_j g_jt - (X_j'g_js)' M (X_k'g_kt),
    Omega_st = tr P_st, and B = Omega^-1/2 P Omega^-1/2 (applied on s, t),

        Var_st = sum_jk B_st[j,k] B_ts[j,k] + sum_jk B_ss[j,k] B_tt[j,k],
        nu = r (r + 1) / sum_st Var_st,

    F = delta Q / r on (r, nu - r + 1) df with delta = (nu - r + 1) / nu.
    The m x m sums reduce to per-group terms and traces of p x p matrices
    M S^{st}, S^{st} = sum_j h_js h_jt'.
    """
    res = _unwrap(results, "wald_test_robust()", structured=True)
    kind = _kind(cov_type)
    key = str(test)
    if key not in ("HTZ", "chi-sq"):
        raise ValueError(f"test must be 'HTZ' or 'chi-sq', got {test!r}")
    C, r_v = _constraints(res, L, rhs)
    r = C.shape[0]
    if np.linalg.matrix_rank(C) < r:
        raise ValueError(f"the constraint matrix has {r} rows but rank "
                         f"{np.linalg.matrix_rank(C)}: give linearly independent rows")
    beta = np.asarray(res.fit_result.fe_params, float)
    V = cov_robust(res, kind).to_numpy()
    diff = C @ beta - r_v
    Q = float(diff @ np.linalg.solve(C @ V @ C.T, diff))
    if key == "chi-sq":
        return pd.DataFrame({"test": ["chi-sq"], "Fstat": [Q / r], "delta": [1.0],
                             "df_num": [r], "df_denom": [np.inf],
                             "p_val": [float(stats.chi2.sf(Q, r))]})
    D, H, M = _contrast_pieces(res, kind, C)
    omega = _omega_terms(D, H, M)[0]
    Tm = _sym_power(0.5 * (omega + omega.T)[None], -0.5, 0.0)[0]
    D, H, M = _contrast_pieces(res, kind, Tm @ C)                  # B: contrasts Omega^-1/2 C
    _, a, S = _omega_terms(D, H, M)
    dD = np.einsum("mss->ms", D)
    da = np.einsum("mss->ms", a)
    first = (np.einsum("mst,mts->st", D, D) - np.einsum("mst,mts->st", D, a)
             - np.einsum("mts,mst->st", D, a)
             + np.einsum("ab,tsbc,cd,tsda->st", M, S, M, S, optimize=True))
    second = (dD.T @ dD - dD.T @ da - da.T @ dD
              + np.einsum("ab,stbc,cd,tsda->st", M, S, M, S, optimize=True))
    nu = r * (r + 1) / float(np.sum(first + second))
    delta = max((nu - r + 1) / nu, 0.0)
    df2 = nu - r + 1
    F = delta * Q / r
    pval = float(stats.f.sf(F, r, df2)) if df2 > 0 else np.nan
    return pd.DataFrame({"test": ["HTZ"], "Fstat": [F], "delta": [delta], "df_num": [r],
                         "df_denom": [df2], "p_val": [pval]})
