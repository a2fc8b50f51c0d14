"""Lowercase formula constructors, as ``statsmodels.formula.api``."""
from __future__ import annotations

from typing import Any

from ..model import HLM

__all__ = ["hlm"]


def hlm(formula: str, data: Any, *args: Any, eval_env: int = 0, **kwargs: Any) -> HLM:
    """``HLM.from_formula``: ``hlm("y ~ x + (x | g)", data).fit()``."""
    return HLM.from_formula(formula, data, *args, eval_env=eval_env + 1, **kwargs)
