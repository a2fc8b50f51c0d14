"""The optional compiled kernels, and whether they are in use.

sm_hlm builds small C extensions at install time (``setup.py``; optional: without a
C compiler the package installs without them).  Each replaces the numpy form of
one hot loop with a single pass over the groups and computes the same quantities
up to rounding; the numpy forms remain, and are used

- where an extension was not built (``status()`` says so), or
- when the environment variable ``SM_HLM_NUMPY_KERNELS`` is set to a non-empty
  value other than ``0`` at import time (to compare the two, or to rule the
  compiled loops out when chasing a problem).

=============  ==============================================================
extension      replaces
=============  ==============================================================
``_csmall``    :class:`sm_hlm.engine.small.SmallKernel`'s per-group loops
``_crows``     :func:`sm_hlm.engine.deviance.working_stats`'s row passes (the
               closed-form QR of :func:`~sm_hlm.engine.deviance._intercept_qr_stats`,
               the Gram pass of :func:`~sm_hlm.engine.deviance._fixed_map`,
               :func:`~sm_hlm.engine.deviance.constant_columns`)
=============  ==============================================================
"""
from __future__ import annotations

import os
from types import ModuleType

__all__ = ["crows", "csmall", "status"]

_DISABLED = os.environ.get("SM_HLM_NUMPY_KERNELS", "") not in ("", "0")

try:
    from . import _csmall as _csmall_module
except ImportError:                      # not built (no compiler at install)
    _csmall_module = None
try:
    from . import _crows as _crows_module
except ImportError:                      # not built (no compiler at install)
    _crows_module = None


def csmall() -> ModuleType | None:
    """The compiled small-kernel loops, or None where they are not in use."""
    return None if _DISABLED else _csmall_module


def crows() -> ModuleType | None:
    """The compiled row loops of the construction path, or None where they are not in use."""
    return None if _DISABLED else _crows_module


def status() -> dict[str, str]:
    """For each compiled kernel: ``"in use"``, ``"disabled"`` (by
    ``SM_HLM_NUMPY_KERNELS``) or ``"not built"``."""
    def one(mod: ModuleType | None) -> str:
        if mod is None:
            return "not built"
        return "disabled" if _DISABLED else "in use"
    return {"_csmall": one(_csmall_module),
            "_crows": one(_crows_module)}
