"""Precision weights and survey (sampling) weights: checks, scaling and sandwich SEs.

Two kinds of weights enter the model (:class:`sm_hlm.HLM`):

* **precision weights** (lme4's ``weights=``): the residual variance of row
  i is sigma^2 / w_i.  The rows of X, Z and y are scaled by sqrt(w_i) and
  the deviance gains -sum_i log w_i; the likelihood is a true likelihood.
* **survey weights** (Pfeffermann et al. 1998; Rabe-Hesketh & Skrondal
  2006): one weight per level, level 1 (rows, conditional on their group)
  first, then each grouping factor from the innermost out.  The model is
  fitted by pseudo-maximum likelihood,

      l_w = sum_j w_j log int prod_i f(y_ij | b_j)^{w_{i|j}} phi(b_j) db_j,

  with standard errors from the sandwich (linearization) estimator
  clustered at the top level.

Notes
-----
Scaling of the level-1 weights within group j (Stata's ``pwscale``; n_j rows):

* ``"size"``: w*_{i|j} = w_{i|j} n_j / sum_i w_{i|j} (they sum to n_j);
* ``"effective"``: w*_{i|j} = w_{i|j} sum_i w_{i|j} / sum_i w_{i|j}^2 (they
  sum to the effective size (sum w)^2 / sum w^2);
* ``"gk"`` (Graubard & Korn 1996): w*_j = mean_i(w_{i|j} w_j), w*_{i|j} = 1;
* ``"none"``: as given.

Higher-level weights are left as given by ``"size"``, ``"effective"`` and
``"none"``.  Each level's weights are handled by one function of the row
weights and the codes of the level above (:func:`scale_level`), so a third
level adds one more (weights, codes) pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .engine.linalg import batched_cholesky, batched_inverse_lower, group_crossprod

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["WEIGHT_SCALINGS", "SurveyWeights", "check_weights", "check_infinite",
           "unit_weights", "scale_level", "survey_weights", "sandwich_cov_fe",
           "vcomp_scores", "sandwich_cov_vcomp"]

#: Stata's pwscale() choices and "none"
WEIGHT_SCALINGS = ("size", "effective", "gk", "none")


@dataclass(frozen=True)
class SurveyWeights:
    """Survey weights of a two-level model, as given and as used.

    Attributes
    ----------
    raw : tuple of ndarray
        The weights as given, one array of row length per level (rows in the
        model's row order).
    row : ndarray (n,)
        Scaled level-1 weights w*_{i|j} (model row order).
    group : ndarray (m,)
        Scaled level-2 weights w*_j (group code order).
    scaling : str
    names : tuple of str
    """

    raw: tuple[np.ndarray, ...]
    row: np.ndarray
    group: np.ndarray
    scaling: str
    names: tuple[str, ...]


def check_infinite(values: Any, name: str) -> None:
    """Raise for infinite weights (NaN is left to the missing-value policy)."""
    w = _as_float(values, name)
    bad = np.isinf(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} infinite weight(s), first at row {i} "
                         f"(value {w[i]}); weights must be finite and positive")


def _as_float(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be numeric: {e}") from None


def check_weights(values: Any, name: str, n: int) -> np.ndarray:
    """Weights as a float array of length ``n``: finite and positive, else a clear error."""
    w = _as_float(values, name)
    if len(w) != n:
        raise ValueError(f"{name} has {len(w)} values but the data have {n} rows")
    for what, bad in (("missing (NaN)", np.isnan(w)), ("infinite", np.isinf(w)),
                      ("zero", w == 0), ("negative", w < 0)):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            hint = (" (drop those rows, or pass missing='drop' to drop rows with NaN weights)"
                    if what.startswith("missing") else
                    " (a row with weight zero carries no information: drop it)"
                    if what == "zero" else "")
            raise ValueError(f"{name}: {int(bad.sum())} {what} weight(s) of {n}, first at row "
                             f"{i} (value {w[i]}); weights must be finite and positive{hint}")
    return w


def unit_weights(values: np.ndarray, codes: np.ndarray, labels: Sequence[Any], name: str,
                 level: str) -> np.ndarray:
    """One weight per unit of a grouping factor from a row-length column.

    A weight that varies within a unit is an error naming the unit.
    """
    m = len(labels)
    first = np.full(m, np.nan)
    first[codes[::-1]] = values[::-1]                 # the first row's value of each unit
    varies = np.flatnonzero(~np.isclose(values, first[codes], rtol=1e-12, atol=0.0))
    if len(varies):
        j = int(codes[varies[0]])
        vals = np.unique(values[codes == j])
        lab = labels[j]
        lab = repr(lab) if isinstance(lab, str) else str(lab)
        raise ValueError(f"{name}: the {level} weight varies within {level} {lab} "
                         f"(values {vals[:5].tolist()}); a weight of a grouping factor must be "
                         "constant within each of its units")
    return first


def scale_level(w: np.ndarray, codes: np.ndarray, m: int, method: str) -> np.ndarray:
    """Scaled lower-level weights within the units ``codes`` of the level above.

    ``"size"``: sum to the unit's row count; ``"effective"``: sum to the
    effective size (sum w)^2 / sum w^2; ``"none"``: unchanged.
    """
    if method == "none":
        return w.copy()
    s1 = np.bincount(codes, weights=w, minlength=m)
    if method == "size":
        return w * (np.bincount(codes, minlength=m) / s1)[codes]
    if method == "effective":
        s2 = np.bincount(codes, weights=w * w, minlength=m)
        return w * (s1 / s2)[codes]
    raise ValueError(f"unknown scaling {method!r}")


def survey_weights(levels: Sequence[np.ndarray], codes: np.ndarray, labels: Sequence[Any],
                   *, scaling: str, names: Sequence[str], group_name: str) -> SurveyWeights:
    """Check and scale survey weights given per level as row-length arrays.

    Parameters
    ----------
    levels
        Row-length arrays: level-1 weights (conditional on the group), then
        the group-level weights (constant within each group).
    codes, labels
        Group code of each row and the group labels.
    scaling
        One of :data:`WEIGHT_SCALINGS`.
    """
    if scaling not in WEIGHT_SCALINGS:
        raise ValueError(f"weight_scaling={scaling!r}: use one of {list(WEIGHT_SCALINGS)}")
    if len(levels) != 2:
        raise ValueError(f"survey_weights has {len(levels)} entries; this model has two levels "
                         f"(rows and {group_name!r}): give [level-1 weights, level-2 weights]")
    n, m = len(codes), len(labels)
    w1 = check_weights(levels[0], f"survey weight {names[0]!r} (level 1)", n)
    w2_rows = check_weights(levels[1], f"survey weight {names[1]!r} (level 2)", n)
    w2 = unit_weights(w2_rows, codes, labels, f"survey weight {names[1]!r}", group_name)
    if scaling == "gk":
        w2s = w2 * np.bincount(codes, weights=w1, minlength=m) / np.bincount(codes, minlength=m)
        w1s = np.ones(n)
    else:
        w1s, w2s = scale_level(w1, codes, m, scaling), w2
    return SurveyWeights(raw=(w1, w2_rows), row=w1s, group=w2s, scaling=scaling,
                         names=tuple(names))


def sandwich_cov_fe(results: "HLMResults") -> np.ndarray:
    """Binder's linearization covariance of the fixed effects, clustered at the top level.

    Notes
    -----
    With H = -X'V^{-1}X / sigma^2 (pseudo-likelihood weights included) and the
    score of top-level unit g, s_g = w_g X_g'V_g^{-1}(y_g - X_g beta) / sigma^2
    (rows scaled by sqrt(w_{i|g}), or by sqrt(w_i) for precision weights),

        cov = H^{-1} (m / (m - 1)) sum_g s_g s_g' H^{-1},

    H^{-1} being minus lme4's model-based ``vcov``.  V_g^{-1} is applied in the
    stable form of :mod:`sm_hlm.engine.deviance`: with Z_g = Q_g R_g (per-group QR),
    V_g^{-1} = I - Q_g Q_g' + Q_g M_g^{-1} Q_g' (relative to sigma^2).
    """
    model = results.model
    fit = results.fit_result
    n, m, p, q = len(model.endog), model.n_groups, model.k_fe, model.k_re
    if m < 2:
        raise ValueError("a cluster-robust covariance needs at least two clusters")
    rw, gw = model._row_weights_sorted(), model._group_weights()
    X = model._sorted_rows(model.exog)
    r = model._sorted_rows(model.endog) - X @ fit.fe_params
    if rw is not None:
        s = np.sqrt(rw)
        X, r = X * s[:, None], r * s
    starts = model._starts
    # X_g'r_g - (Q_g'X_g)'(Q_g'r_g) + (Q_g'X_g)' M_g^{-1} (Q_g'r_g), per group (p, m)
    xr = group_crossprod(X, r[:, None], starts)[:, 0, :]
    if q:
        Q = model._work_q
        qx = group_crossprod(Q, X, starts)                     # (q, p, m)
        qr = group_crossprod(Q, r[:, None], starts)[:, 0, :]   # (q, m)
        lam_t = model._reparam.Tinv @ model.re_design.lambda_(fit.theta)
        K = np.einsum("bam,bc->acm", model._work.root, lam_t)
        M = np.einsum("acm,bcm->abm", K, K)
        M[np.arange(q), np.arange(q)] += 1.0
        Li = batched_inverse_lower(batched_cholesky(M))
        Minv = np.einsum("kim,kjm->ijm", Li, Li)
        mq = np.einsum("abm,bm->am", Minv, qr) - qr
        xr = xr + np.einsum("apm,am->pm", qx, mq)
    scores = xr / fit.scale                                     # (p, m)
    if gw is not None:
        scores = scores * gw
    meat = (m / (m - 1.0)) * (scores @ scores.T)
    bread = fit.cov_fe
    return bread @ meat @ bread


def _group_parts(results: "HLMResults") -> dict[str, Any]:
    """Per-group pieces at the estimates: scaled residuals r, Q_j'r_j, M_j^{-1}, B_j."""
    model = results.model
    fit = results.fit_result
    rw = model._row_weights_sorted()
    X = model._sorted_rows(model.exog)
    r = model._sorted_rows(model.endog) - X @ fit.fe_params
    if rw is not None:
        r = r * np.sqrt(rw)
    starts, q = model._starts, model.k_re
    Q, F = model._work_q, model._work.root
    g = group_crossprod(Q, r[:, None], starts)[:, 0, :]          # Q_j'r_j (q, m)
    lam_t = model._reparam.Tinv @ model.re_design.lambda_(fit.theta)
    K = np.einsum("bam,bc->acm", F, lam_t)
    M = np.einsum("acm,bcm->abm", K, K)
    M[np.arange(q), np.arange(q)] += 1.0
    Li = batched_inverse_lower(batched_cholesky(M))
    Minv = np.einsum("kim,kjm->ijm", Li, Li)
    # Z_j (rows scaled) = Q_j B_j with B_j = R_j T^{-1} (R_j = F_j')
    B = np.einsum("bam,bc->acm", F, model._reparam.Tinv)
    codes = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(r))))
    e = r - np.einsum("ik,ki->i", Q, g[:, codes])
    return {"r": r, "g": g, "Minv": Minv, "B": B, "ee": np.add.reduceat(e * e, starts),
            "kept": np.diagonal(F).T > 0 if q else np.zeros((0, len(starts)), bool),
            "rw": rw}


def vcomp_scores(results: "HLMResults") -> np.ndarray:
    """Per-group scores of the (pseudo-)log-likelihood in (vcomp, sigma^2), shape (m, k + 1).

    Notes
    -----
    With V_j = Z_j Psi Z_j' + sigma^2 I (rows scaled by sqrt(w_{i|j})) and
    n_wj = sum_i w_{i|j} (n_j without survey weights), group j contributes
    l_j = -w_j/2 [log|V_j| + (n_wj - n_j) log sigma^2 + r_j'V_j^{-1}r_j], so

        dl_j/dPsi_ab = -w_j/2 [A_j - c_j c_j']_ab (x 2 off the diagonal),
        dl_j/dsigma^2 = -w_j/2 [tr V_j^{-1} + (n_wj - n_j)/sigma^2 - r_j'V_j^{-2}r_j],

    A_j = Z_j'V_j^{-1}Z_j = B_j'M_j^{-1}B_j / sigma^2 and c_j = Z_j'V_j^{-1}r_j =
    B_j'M_j^{-1}Q_j'r_j / sigma^2 in the per-group QR basis (Z_j = Q_j B_j).
    """
    model = results.model
    fit = results.fit_result
    s2 = fit.scale
    q, m = model.k_re, model.n_groups
    parts = _group_parts(results)
    g, Minv, B = parts["g"], parts["Minv"], parts["B"]
    n_j = np.diff(np.append(model._starts, len(parts["r"]))).astype(float)
    rw = parts["rw"]
    n_wj = (np.add.reduceat(rw, model._starts) if model.weight_type == "survey" else n_j)
    A = np.einsum("bam,bcm,cdm->adm", B, Minv, B) / s2                 # (q, q, m)
    Mg = np.einsum("abm,bm->am", Minv, g)
    c = np.einsum("bam,bm->am", B, Mg) / s2                           # (q, m)
    D = A - c[:, None, :] * c[None, :, :]
    rr, cc = model.re_design.vcomp_index()
    sv = -0.5 * D[rr, cc] * np.where(rr == cc, 1.0, 2.0)[:, None]      # (k, m)
    kept = parts["kept"]
    tr_minv = np.einsum("kkm->km", Minv) if q else np.zeros((0, m))
    tr_vinv = (n_j - np.sum(kept * (1.0 - tr_minv), axis=0)) / s2
    Mg2 = np.einsum("abm,bm->am", Minv, Mg)
    rv2r = (parts["ee"] + np.einsum("am,am->m", g, Mg2)) / s2 ** 2
    ss = -0.5 * (tr_vinv + (n_wj - n_j) / s2 - rv2r)
    out = np.vstack([sv, ss[None, :]]).T                               # (m, k + 1)
    gw = model._group_weights()
    return out if gw is None else out * gw[:, None]


def sandwich_cov_vcomp(results: "HLMResults") -> np.ndarray:
    """Binder's sandwich for (vcomp, sigma^2), clustered by group; ML fits only.

    The bread is the inverse of the observed (pseudo-)information in
    (vcomp, sigma^2) with beta at its estimate (a Richardson-extrapolated
    Hessian of the deviance, as for the model-based ``cov_vcomp``), the meat
    m/(m-1) sum_j s_j s_j' with s_j from :func:`vcomp_scores`.  Returns the
    (k + 1) x (k + 1) matrix; the last row/column is sigma^2.
    """
    from .engine.numdiff import hessian_richardson
    from .design import vcomp_objective

    fit = results.fit_result
    if fit.reml:
        raise ValueError("the sandwich of the variance components is for ML fits (the REML "
                         "criterion has other score equations): fit(reml=False)")
    model = results.model
    rd = model.re_design
    rr, cc = rd.vcomp_index()
    dev = model.deviance_function(reml=False)
    f = vcomp_objective(rd, fit.fe_params, lambda rest: (dev, 0.0))
    x = np.append(fit.cov_re[rr, cc], fit.scale)
    k1 = len(x)
    try:
        bread = np.linalg.inv(0.5 * hessian_richardson(f, x, d=0.01))
    except (np.linalg.LinAlgError, ValueError):
        return np.full((k1, k1), np.nan)
    S = vcomp_scores(results)
    m = S.shape[0]
    return bread @ ((m / (m - 1.0)) * (S.T @ S)) @ bread
