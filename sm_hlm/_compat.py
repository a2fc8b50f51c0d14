"""Compatibility shims across statsmodels versions, and optional dependencies."""
from __future__ import annotations

from typing import Any

try:  # statsmodels >= 0.15
    from statsmodels.tools._decorators import cache_readonly
except ImportError:  # pragma: no cover - statsmodels 0.14
    from statsmodels.tools.decorators import cache_readonly

__all__ = ["cache_readonly", "require_nlopt", "NLOPT_MESSAGE"]

NLOPT_MESSAGE = ("sm_hlm fits with NLopt's BOBYQA optimizer (lme4's default), but the Python "
                 "package 'nlopt' is not installed: pip install nlopt")


def require_nlopt() -> Any:
    """The ``nlopt`` module, or an ImportError saying how to install it."""
    try:
        import nlopt
    except ImportError as exc:
        raise ImportError(NLOPT_MESSAGE) from exc
    return nlopt
