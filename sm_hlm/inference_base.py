"""What the inference modules (Satterthwaite, Kenward-Roger, cluster-robust tests) share.

It imports nothing of the model or results layers, so that those modules can use
each other's pieces without importing each other in a circle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["_unwrap", "robust_kind", "cluster_factor", "refit_response", "ROBUST_KINDS"]

#: the cluster-robust covariances (clubSandwich's names); statsmodels' "cluster" is CR1S
ROBUST_KINDS = ("CR0", "CR1", "CR1S", "CR2")


def _unwrap(results: Any, what: str = "this method", *,
            structured: bool = False) -> "HLMResults":
    """The HLMResults behind a statsmodels results wrapper.

    Weighted fits are refused; so are fits with a residual structure unless
    the caller handles them (``structured=True``).
    """
    res = getattr(results, "_results", results)
    if getattr(res.model, "weight_type", None) is not None:
        raise NotImplementedError(
            f"{what} is implemented for unweighted models only, not with "
            f"{res.model.weight_type} weights (see results.cov_fe_sandwich for robust SEs)")
    if not structured and getattr(res.model, "_residual_kernel", None) is not None:
        raise NotImplementedError(
            f"{what} is implemented for independent residuals (V_j = Z_j Psi Z_j' + sigma^2 I) "
            "only, not for models with a residual structure")
    return res


def robust_kind(name: Any) -> str:
    """A cluster-robust covariance named by clubSandwich or by statsmodels' ``cov_type``.

    ``"CR0"``, ``"CR1"``, ``"CR1S"``, ``"CR2"`` (any case), and statsmodels' ``"cluster"``,
    which is CR1S: statsmodels' default small-sample correction
    G/(G - 1) (N - 1)/(N - p) (Stata's).  statsmodels' ``"HC0"``..``"HC3"`` and HAC
    choices treat rows as independent, which the rows of a group are not under a
    mixed model: they raise, naming the alternatives.
    """
    key = str(name).upper()
    if key == "CLUSTER":
        return "CR1S"
    if key in ROBUST_KINDS:
        return key
    if key.startswith("HC") or key.startswith("HAC") or key in ("NW-PANEL", "NW-GROUPSUM"):
        raise ValueError(
            f"cov_type={name!r} treats rows as independent, but the rows of a group are "
            "correlated under a mixed model; use statsmodels' 'cluster' (= CR1S, clusters = "
            "groups) or clubSandwich's 'CR2' (small-sample corrected, the default)")
    raise ValueError(f"cov_type must be one of {list(ROBUST_KINDS)} or statsmodels' 'cluster', "
                     f"got {name!r}")


def cluster_factor(kind: str, n_clusters: int, nobs: int, k_fe: int) -> float:
    """The scalar multiplying CR0: m/(m-1) for CR1, m/(m-1) (N-1)/(N-p) for CR1S."""
    m = n_clusters
    if kind == "CR1":
        return m / (m - 1)
    if kind == "CR1S":
        return m / (m - 1) * (nobs - 1) / (nobs - k_fe)
    return 1.0


def refit_response(endog: Any, nobs: int) -> np.ndarray:
    """A new response for ``refit``: one finite value per fitted row, as a float vector."""
    y = np.asarray(endog, dtype=float).reshape(-1)
    if y.shape != (nobs,):
        raise ValueError(f"endog has {y.size} values; the model has {nobs} rows")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"endog has {int((~np.isfinite(y)).sum())} missing or infinite "
                         "values; refit needs a complete response")
    return y
