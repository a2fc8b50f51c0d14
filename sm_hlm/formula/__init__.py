"""Formula interface: lme4-style ``(expr | group)`` terms on top of patsy."""
from __future__ import annotations

from .parse import ParsedFormula, RandomTermSpec, parse_formula

__all__ = ["ParsedFormula", "RandomTermSpec", "parse_formula"]
