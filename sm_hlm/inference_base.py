"""What the inference modules (Satterthwaite, Kenward-Roger, cluster-robust tests) share.

It imports nothing of the model or results layers, so that those modules can use
each other's pieces without importing each other in a circle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import HLMResults

__all__ = ["_unwrap"]


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
