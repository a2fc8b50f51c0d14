"""The optional compiled kernels (sm_hlm.engine.compiled) against their numpy forms.

The numpy forms stay in the package (used where an extension was not built, or
with SM_HLM_NUMPY_KERNELS set); each compiled loop must give the same numbers
up to rounding.  CI sets SM_HLM_REQUIRE_COMPILED=1, so that an extension that
failed to build (the build is optional) fails there instead of passing on the
numpy forms.
"""
from __future__ import annotations

import os

import pytest

from sm_hlm.engine import compiled


@pytest.mark.parametrize("name", sorted(compiled.status()))
def test_compiled_kernels_in_use_where_required(name) -> None:
    """With SM_HLM_REQUIRE_COMPILED set (CI), every extension is built and in use."""
    status = compiled.status()[name]
    assert status in ("in use", "disabled", "not built")
    if os.environ.get("SM_HLM_REQUIRE_COMPILED", "") not in ("", "0"):
        assert status == "in use", f"{name} is {status}"
