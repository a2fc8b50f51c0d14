"""Kenward-Roger small-sample inference for the fixed effects (pbkrtest 0.5).

The computational core (:func:`kr_core`, :func:`kr_adjust`) works on
per-group statistics only (Z_j'Z_j, Z_j'X_j, the total X'X, the relative
covariance factor and sigma^2) and never forms an n x n matrix; it does not
know about results objects, so an engine with several grouping factors can
feed it its own statistics.  :func:`kenward_roger` and
:func:`cov_kenward_roger` are the results-level front ends (the methods
``HLMResults.kenward_roger()``, ``HLMResults.cov_kenward_roger()`` and
``summary(ddf="kenward-roger")``).

Notation: y_j = X_j beta + Z_j b_j + e_j, b_j ~ N(0, Psi), e_j ~ N(0, sigma^2 I),
Sigma_j = Z_j Psi Z_j' + sigma^2 I, Psi = sigma^2 Lambda Lambda'.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = [
    "KRCore",
    "KRAdjustment",
    "kr_parameter_matrices",
    "kr_core",
    "kr_adjust",
    "kenward_roger",
    "cov_kenward_roger",
]

#: pbkrtest inverts IE2 with solve() when its smallest |eigenvalue| exceeds this, else ginv().
_IE2_COND_TOL = 1e-10
#: MASS::ginv's tolerance on singular values (relative to the largest).
_GINV_TOL = math.sqrt(np.finfo(float).eps)


@dataclass(frozen=True)
class KRCore:
    """The contrast-independent pieces of the Kenward-Roger adjustment.

    Attributes
    ----------
    Phi : ndarray (p, p)
        (X' Sigma^-1 X)^-1, the model-based covariance of beta-hat.
    PhiA : ndarray (p, p)
        The adjusted covariance Phi + 2 Phi U Phi (pbkrtest's ``vcovAdj``).
    P : ndarray (R, p, p)
        P_r = -X' Sigma^-1 G_r Sigma^-1 X for the R variance parameters.
    W : ndarray (R, R)
        2 IE2^-1, the asymptotic covariance of the variance parameters
        (expected REML information inverted).
    IE2 : ndarray (R, R)
    condition : float
        Smallest |eigenvalue| of IE2 (pbkrtest's ``condi``); a generalised
        inverse is used when it is at most 1e-10.
    """

    Phi: np.ndarray
    PhiA: np.ndarray
    P: np.ndarray
    W: np.ndarray
    IE2: np.ndarray
    condition: float


@dataclass(frozen=True)
class KRAdjustment:
    """Kenward-Roger F test of L beta = L beta_H (pbkrtest's ``.KR_adjust``).

    ``Fstat`` = F.scaling x FstatU on (ndf, ddf) degrees of freedom; ``FstatU``
    is the unscaled Wald statistic / ndf with the adjusted covariance.
    """

    Fstat: float
    ndf: int
    ddf: float
    F_scaling: float
    p_value: float
    FstatU: float
    p_valueU: float
    A1: float
    A2: float
    B: float
    g: float
    c1: float
    c2: float
    c3: float
    rho: float


def kr_parameter_matrices(blocks: list[tuple[int, list[tuple[int, int]]]], q: int) -> np.ndarray:
    """The matrices E_r with Psi = sum_r psi_r E_r, one per covariance parameter.

    Parameters
    ----------
    blocks : list of (offset, [(i, j), ...])
        For each random-effects term, the offset of its block in Z's columns
        and the (row, column) positions of its free entries within the block
        (lower triangle).
    q : int
        Number of columns of Z.

    Returns
    -------
    ndarray (n_par, q, q)
        E_r = e_a e_a' for a variance, e_a e_b' + e_b e_a' for a covariance
        (pbkrtest's G_r = Z (I (x) E_r) Z').
    """
    mats = []
    for offset, entries in blocks:
        for i, j in entries:
            E = np.zeros((q, q))
            E[offset + i, offset + j] = 1.0
            E[offset + j, offset + i] = 1.0
            mats.append(E)
    return np.array(mats).reshape(len(mats), q, q)


def kr_core(ZtZ: np.ndarray, ZtX: np.ndarray, XtX: np.ndarray, nobs: int, lam: np.ndarray,
            scale: float, E: np.ndarray) -> KRCore:
    """Kenward-Roger's adjusted covariance from per-group statistics.

    Parameters
    ----------
    ZtZ : ndarray (m, q, q)
        Z_j'Z_j per group.
    ZtX : ndarray (m, q, p)
        Z_j'X_j per group.
    XtX : ndarray (p, p)
        X'X (summed over groups).
    nobs : int
    lam : ndarray (q, q)
        Relative covariance factor Lambda (Psi = scale Lambda Lambda';
        may be singular).
    scale : float
        sigma^2.
    E : ndarray (n_par, q, q)
        The covariance parameter matrices of :func:`kr_parameter_matrices`;
        sigma^2 (G = I) is appended as the last variance parameter.

    Returns
    -------
    KRCore

    Notes
    -----
    With Sigma = sum_r gamma_r G_r, G_r = Z E_r Z' (block diagonal over the
    groups) and G = I for sigma^2, Kenward & Roger (1997) set, with
    Phi = (X'Sigma^-1 X)^-1,

        P_r = -X'Sigma^-1 G_r Sigma^-1 X,
        Q_rs = X'Sigma^-1 G_r Sigma^-1 G_s Sigma^-1 X,
        IE2_rs = tr(Sigma^-1 G_r Sigma^-1 G_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s),
        W = 2 IE2^-1,   U = sum_rs W_rs (Q_rs - P_r Phi P_s),
        Phi_A = Phi + 2 Phi U Phi

    (pbkrtest's ``vcovAdj``, which drops the second-derivative terms R_rs:
    Sigma is linear in gamma).  By Woodbury, Sigma_j^-1 = N_j / sigma^2 with
    N_j = I - Z_j K_j Z_j', K_j = Lambda (I + Lambda'S_j Lambda)^-1 Lambda',
    S_j = Z_j'Z_j, T_j = Z_j'X_j.  With F_j = I - K_j S_j, N_j Z_j = Z_j F_j,
    so every term is a q x q or q x p per-group product:

        Z'N Z = F'S,   Z'N X = F'T =: B,   Z'N^2 Z = F'S F,   Z'N^2 X = F'B,
        X'N X = X'X - sum T'K T,
        X'N^2 X = X'X - sum T'(2K - K S K) T,
        X'N^3 X = X'X - sum T'(3K - 3K S K + K S K S K) T,
        tr N^2 = n - sum [2 tr(K S) - tr(K S K S)],

    whence P_r = -sum_j B_j'E_r B_j / sigma^4,
    Q_rs = sum_j B_j'E_r (F'S)_j E_s B_j / sigma^6,
    tr(Sigma^-1 G_r Sigma^-1 G_s) = sum_j tr(E_r (F'S)_j E_s (F'S)_j) / sigma^4,
    and for sigma^2: P = -X'N^2X / sigma^4, Q_r,sigma = sum_j B_j'E_r (F'B)_j / sigma^6,
    Q_sigma,sigma = X'N^3X / sigma^6, the traces tr(E_r Z'N^2Z) / sigma^4 and
    tr N^2 / sigma^4.  Cost O(m (q^3 + q^2 p + q p^2) R^2) for R variance
    parameters, vectorised over the groups.
    """
    S = np.asarray(ZtZ, float)
    T = np.asarray(ZtX, float)
    m, q, _ = S.shape
    p = T.shape[2]
    s = float(scale)
    lam = np.asarray(lam, float)
    E = np.asarray(E, float)
    E = E.reshape(E.shape[0] if E.ndim == 3 else 0, q, q)
    n_cov = E.shape[0]
    R = n_cov + 1
    if q:
        LtS = lam.T @ S                                          # (m, q, q)
        M = np.eye(q) + LtS @ lam
        K = lam @ np.linalg.solve(M, np.broadcast_to(lam.T, (m, q, q)))
        K = 0.5 * (K + np.swapaxes(K, 1, 2))
        KS = K @ S
        Ft = np.eye(q) - np.swapaxes(KS, 1, 2)                   # F' = I - S K
        A = Ft @ S                                               # Z'N Z
        A = 0.5 * (A + np.swapaxes(A, 1, 2))
        B = Ft @ T                                               # Z'N X
        ZN2Z = A - A @ KS                                        # F'S F = F'S - F'S K S
        ZN2X = Ft @ B
        KT = K @ T
        SKT = S @ KT
        TKT = np.einsum("mqa,mqb->ab", T, KT)
        TKSKT = np.einsum("mqa,mqb->ab", KT, SKT)
        TKSKSKT = np.einsum("mqa,mqb->ab", SKT, K @ SKT)
        trKS = np.einsum("mii->", KS)
        trKSKS = np.einsum("mij,mji->", KS, KS)
    else:
        A = ZN2Z = np.zeros((m, 0, 0))
        B = ZN2X = np.zeros((m, 0, p))
        TKT = TKSKT = TKSKSKT = np.zeros((p, p))
        trKS = trKSKS = 0.0
    XtX = np.asarray(XtX, float)
    XNX = XtX - TKT
    XN2X = XtX - 2.0 * TKT + TKSKT
    XN3X = XtX - 3.0 * TKT + 3.0 * TKSKT - TKSKSKT
    trN2 = float(nobs) - 2.0 * trKS + trKSKS
    XNX = 0.5 * (XNX + XNX.T)
    Phi = s * np.linalg.inv(XNX)
    Phi = 0.5 * (Phi + Phi.T)

    s2, s3 = s * s, s * s * s
    Bf = B.reshape(m * q, p)
    EB = np.einsum("rab,mbp->rmap", E, B)                        # E_r B_j
    EA = np.einsum("rab,mbc->rmac", E, A)                        # E_r (Z'NZ)_j
    P = np.empty((R, p, p))
    Q = np.empty((R, R, p, p))
    Kt = np.empty((R, R))
    for r in range(n_cov):
        P[r] = -(Bf.T @ EB[r].reshape(m * q, p)) / s2
        AEB = A @ EB[r]                                          # (m, q, p)
        for t in range(r + 1):
            # Q_tr = sum_j (E_t B_j)' A_j (E_r B_j)
            Q[t, r] = EB[t].reshape(m * q, p).T @ AEB.reshape(m * q, p) / s3
            Q[r, t] = Q[t, r].T
            Kt[r, t] = Kt[t, r] = np.einsum("mab,mba->", EA[r], EA[t]) / s2
        # Q_r,sigma = sum_j (E_r B_j)' (Z'N^2 X)_j
        Q[r, n_cov] = EB[r].reshape(m * q, p).T @ ZN2X.reshape(m * q, p) / s3
        Q[n_cov, r] = Q[r, n_cov].T
        Kt[r, n_cov] = Kt[n_cov, r] = np.einsum("ab,mba->", E[r], ZN2Z) / s2
    P[n_cov] = -0.5 * (XN2X + XN2X.T) / s2
    Q[n_cov, n_cov] = 0.5 * (XN3X + XN3X.T) / s3
    Kt[n_cov, n_cov] = trN2 / s2
    P = 0.5 * (P + np.swapaxes(P, 1, 2))

    PhiP = Phi @ P                                               # (R, p, p)
    IE2 = (Kt - 2.0 * np.einsum("ab,rsba->rs", Phi, Q)
           + np.einsum("rab,sba->rs", PhiP, PhiP))
    IE2 = 0.5 * (IE2 + IE2.T)
    condi = float(np.min(np.abs(np.linalg.eigvalsh(IE2))))
    if condi > _IE2_COND_TOL:
        W = 2.0 * np.linalg.inv(IE2)
    else:
        W = 2.0 * np.linalg.pinv(IE2, rcond=_GINV_TOL)
    W = 0.5 * (W + W.T)
    PPhiP = np.einsum("rab,sbc->rsac", P, PhiP)                  # P_r Phi P_s
    U = np.einsum("rs,rsab->ab", W, Q - PPhiP)
    U = 0.5 * (U + U.T)
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    PhiA = 0.5 * (PhiA + PhiA.T)
    return KRCore(Phi=Phi, PhiA=PhiA, P=P, W=W, IE2=IE2, condition=condi)


def _div_zero(x: float, y: float, tol: float = 1e-14) -> float:
    """pbkrtest's .divZero: 1 when both are (near) zero, else x / y."""
    if abs(x) < tol and abs(y) < tol:
        return 1.0
    return x / y


def kr_adjust(core: KRCore, L: np.ndarray, beta: np.ndarray,
              beta_h: np.ndarray | float = 0.0) -> KRAdjustment:
    """Kenward-Roger F statistic, scaling and denominator df for L beta = L beta_H.

    Parameters
    ----------
    core : KRCore
    L : ndarray (r, p)
        Contrast matrix of full row rank.
    beta : ndarray (p,)
        Estimates.
    beta_h : float or ndarray (p,)
        A point of the null hypothesis (pbkrtest's ``betaH``; the null is
        L beta = L beta_h).

    Returns
    -------
    KRAdjustment

    Notes
    -----
    pbkrtest's ``.KR_adjust``: Theta = L'(L Phi L')^-1 L, u_i = Theta Phi P_i Phi,

        A1 = sum_ij W_ij tr(u_i) tr(u_j),   A2 = sum_ij W_ij tr(u_i u_j),
        B = (A1 + 6 A2) / (2q),   g = ((q+1) A1 - (q+4) A2) / ((q+2) A2),
        c1 = g / (3q + 2(1-g)),  c2 = (q-g) / (3q + 2(1-g)),  c3 = (q+2-g) / (3q + 2(1-g)),
        rho = (1/q) ((1 - A2/q) / (1 - c2 B))^2 (1 + c1 B) / (1 - c3 B),
        ddf = 4 + (q+2) / (q rho - 1),   F.scaling = ddf (1 - A2/q) / (ddf - 2)

    (F.scaling = 1 when |ddf - 2| < 0.01), q = rank(L); the statistic is
    F = F.scaling (L b - L b_H)'(L Phi_A L')^-1 (L b - L b_H) / q.
    """
    L = np.atleast_2d(np.asarray(L, float))
    Phi, PhiA = core.Phi, core.PhiA
    q = int(np.linalg.matrix_rank(L))
    if q < L.shape[0]:
        raise ValueError(f"the contrast matrix L has {L.shape[0]} rows but rank {q}: "
                         "Kenward-Roger needs linearly independent rows")
    LPL = L @ Phi @ L.T
    Theta = L.T @ np.linalg.solve(LPL, L)
    u = Theta @ Phi @ core.P @ Phi                               # (R, p, p)
    tr = np.einsum("rii->r", u)
    W = core.W
    A1 = float(tr @ W @ tr)
    A2 = float(np.einsum("rs,rab,sba->", W, u, u))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0 = 1 + c1 * B
    V1 = 1 - c2 * B
    V2 = 1 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    rho = (1.0 / q) * _div_zero(1 - A2 / q, V1) ** 2 * V0 / V2
    ddf = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(ddf - 2) < 0.01 else ddf * (1 - A2 / q) / (ddf - 2)
    diff = L @ (np.asarray(beta, float) - np.broadcast_to(np.asarray(beta_h, float),
                                                           np.shape(beta)))
    wald = float(diff @ np.linalg.solve(L @ PhiA @ L.T, diff))
    FU = wald / q
    F = scaling * FU
    return KRAdjustment(Fstat=F, ndf=q, ddf=float(ddf), F_scaling=float(scaling),
                        p_value=float(stats.f.sf(F, q, ddf)), FstatU=FU,
                        p_valueU=float(stats.f.sf(FU, q, ddf)), A1=A1, A2=A2, B=B, g=g,
                        c1=c1, c2=c2, c3=c3, rho=float(rho))


# =====================================================================
# results-level front ends
# =====================================================================

def _reml_results(results: Any, what: str) -> tuple["HLMResults", bool]:
    """The REML fit behind ``results`` (refitted by REML for an ML fit, as pbkrtest)."""
    from .inference_base import _unwrap

    res = _unwrap(results, what)
    if res.fit_result.reml:
        return res, False
    cached = getattr(res, "_sm_hlm_kr_reml", None)
    if cached is None:
        warnings.warn(f"{what}: Kenward-Roger is defined for REML fits; this ML fit was refitted "
                      "by REML (as pbkrtest does), and the estimates, standard errors and df "
                      "reported are those of the REML fit", UserWarning, stacklevel=3)
        cached = getattr(res.model.fit(reml=True), "_results")
        try:
            object.__setattr__(res, "_sm_hlm_kr_reml", cached)
        except (AttributeError, TypeError):  # pragma: no cover - exotic results objects
            pass
    return cached, True


def _results_core(res: "HLMResults") -> KRCore:
    cached = getattr(res, "_sm_hlm_kr_core", None)
    if cached is not None:
        return cached
    model = res.model
    fit = res.fit_result
    rd = model.re_design
    st = model._stats
    p = model.k_fe
    blocks, offset = [], 0
    for term in rd.terms:
        blocks.append((offset, term.theta_index()))
        offset += term.k
    E = kr_parameter_matrices(blocks, rd.q)
    core = kr_core(np.moveaxis(st.ZtZ, -1, 0), np.moveaxis(st.ZtW[:, :p, :], -1, 0),
                   st.WtW[:p, :p], st.nobs, rd.lambda_(np.asarray(fit.theta, float)),
                   float(fit.scale), E)
    try:
        object.__setattr__(res, "_sm_hlm_kr_core", core)
    except (AttributeError, TypeError):  # pragma: no cover
        pass
    return core


def cov_kenward_roger(results: Any) -> pd.DataFrame:
    """Kenward-Roger adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj``).

    An ML fit is refitted by REML (with a warning), as pbkrtest does.

    Returns
    -------
    DataFrame (p x p), labelled by the fixed-effect names.
    """
    res, _ = _reml_results(results, "cov_kenward_roger()")
    names = list(res.model.exog_names)
    return pd.DataFrame(_results_core(res).PhiA, index=names, columns=names)


def _contrast_matrix(res: "HLMResults", L: Any, rhs: Any) -> tuple[np.ndarray, np.ndarray]:
    """L as an (r, p) array and the null values (r,); a string is parsed as statsmodels does."""
    names = list(res.model.exog_names)
    p = len(names)
    if isinstance(L, str):
        from patsy import DesignInfo
        if not (np.isscalar(rhs) and rhs == 0):
            raise ValueError("give the null values inside the string constraint "
                             "(e.g. 'flp = 1'), not through rhs")
        lc = DesignInfo(names).linear_constraint(L)
        return np.asarray(lc.coefs, float), np.asarray(lc.constants, float).reshape(-1)
    Lm = np.atleast_2d(np.asarray(L, dtype=float))
    if Lm.ndim != 2 or Lm.shape[1] != p:
        raise ValueError(f"L must have {p} columns (one per fixed effect {names}), got shape "
                         f"{Lm.shape}")
    r = Lm.shape[0]
    rhs_a = np.asarray(rhs, dtype=float)
    if rhs_a.ndim > 1 or rhs_a.size not in (1, r):
        raise ValueError(f"rhs must be a scalar or have {r} entries (one per row of L), got "
                         f"shape {rhs_a.shape}")
    return Lm, np.array(np.broadcast_to(rhs_a.reshape(-1), (r,)))


def kenward_roger(results: Any, L: Any = None, rhs: Any = 0.0, *,
                  joint: bool = True) -> pd.DataFrame:
    """t and F tests of the fixed effects with Kenward-Roger df (pbkrtest, lmerTest).

    Parameters
    ----------
    results : HLMResults
        A REML fit; an ML fit is refitted by REML with a warning (as
        pbkrtest; lmerTest refuses ML fits), and the table then reports the
        REML estimates.
    L : None, str or array_like (p,) or (r, p)
        None: one t test per fixed effect.  Otherwise contrasts, one row per
        contrast (columns in the order of the fixed effects), or a
        statsmodels/patsy constraint string such as ``"flp = 0, flp:ses = 0"``.
    rhs : float or array_like
        Null values of L beta (arrays only; a string carries its own).
    joint : bool
        Several rows: one F test of all (True, pbkrtest's ``KRmodcomp``) or
        a t test per row (False).

    Returns
    -------
    DataFrame
        t tests: ``Estimate``, ``Std. Error`` (adjusted), ``df``,
        ``t value``, ``Pr(>|t|)``, as ``summary(fit, ddf = "Kenward-Roger")``
        of lmerTest (index: fixed-effect names when ``L`` is None).  F test:
        one row with ``F value``, ``NumDF``, ``DenDF``, ``F.scaling``,
        ``Pr(>F)``, ``F unscaled`` as ``KRmodcomp``'s ``Ftest``/``FtestU``.
        ``attrs["method"]`` names the method and the REML refit if any.

    Notes
    -----
    Adjusted covariance Phi_A and, for a contrast L of rank q, the scaled
    F statistic and its denominator df: see :func:`kr_core` and
    :func:`kr_adjust`.  A single contrast l uses t = (l'b - rhs) /
    sqrt(l'Phi_A l) on the df of :func:`kr_adjust` with L = l' (pbkrtest's
    ``Lb_ddf``, lmerTest's ``contest1D``).  Everything is computed group by
    group (no n x n matrix).
    """
    res, refit = _reml_results(results, "kenward_roger()")
    core = _results_core(res)
    beta = np.asarray(res.fit_result.fe_params, float)
    names = list(res.model.exog_names)
    note = "Kenward-Roger (pbkrtest)" + (": ML fit refitted by REML" if refit else "")
    if L is None:
        Lm, rhs_v = np.eye(len(beta)), np.zeros(len(beta))
        index: Any = pd.Index(names)
        single = True
    else:
        Lm, rhs_v = _contrast_matrix(res, L, rhs)
        index = None
        single = Lm.shape[0] == 1 or not joint
    if single:
        est = Lm @ beta
        se = np.sqrt(np.einsum("ri,ij,rj->r", Lm, core.PhiA, Lm))
        df = np.array([kr_adjust(core, row, beta).ddf for row in Lm])
        t = (est - rhs_v) / se
        out = pd.DataFrame({"Estimate": est, "Std. Error": se, "df": df, "t value": t,
                            "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)}, index=index)
    else:
        beta_h = np.linalg.lstsq(Lm, rhs_v, rcond=None)[0]
        if not np.allclose(Lm @ beta_h, rhs_v, rtol=1e-10, atol=1e-12):
            raise ValueError("the null hypothesis L beta = rhs is inconsistent")
        adj = kr_adjust(core, Lm, beta, beta_h)
        out = pd.DataFrame({"F value": [adj.Fstat], "NumDF": [adj.ndf], "DenDF": [adj.ddf],
                            "F.scaling": [adj.F_scaling], "Pr(>F)": [adj.p_value],
                            "F unscaled": [adj.FstatU]})
    out.attrs["method"] = note
    return out


def _kenward_roger_table(results: "HLMResults") -> pd.DataFrame:
    """Kenward-Roger SEs and df for a summary; needs a REML fit (as lmerTest)."""
    if not results.reml:
        raise ValueError("ddf='kenward-roger' needs a REML fit: Kenward-Roger's adjustment is "
                         "defined for REML estimates (lmerTest refuses ML fits too); refit with "
                         "fit(reml=True), or call results.kenward_roger(), which refits by REML")
    return results.kenward_roger()
