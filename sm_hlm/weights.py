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

from .linalg import batched_cholesky, batched_inverse_lower, group_crossprod

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["WEIGHT_SCALINGS", "SurveyWeights", "check_weights", "check_infinite",
           "unit_weights", "scale_level", "survey_weights", "sandwich_cov_fe"]

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
    stable form of :mod:`sm_hlm.deviance`: with Z_g = Q_g R_g (per-group QR),
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
