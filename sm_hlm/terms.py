"""The terms of a model's fixed part: names, columns and factors.

A formula term (``flp``, ``C(urbanicity)``, ``flp:ses``) owns one or more
columns of X; a factor with k levels is one term of k - 1 columns.  Used by
``wald_test_terms`` (one joint test per term) and ``drop1`` (which terms may
be dropped while respecting marginality).  Array models have one term per
column; a column named ``"a:b"`` counts as the interaction of ``a`` and ``b``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FixedTerm", "fixed_terms", "droppable_terms"]


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part.

    Attributes
    ----------
    name
        The term's name (patsy's ``term.name()``; ``"Intercept"``).
    columns
        Positions of its columns in X (and in ``params``).
    factors
        The variables/expressions it interacts (empty for the intercept).
    """

    name: str
    columns: tuple[int, ...]
    factors: frozenset[str]


def fixed_terms(model: Any) -> list[FixedTerm]:
    """The fixed-effects terms of ``model`` in the order of its columns."""
    info = getattr(model, "fixed_design_info", None)
    if info is not None:
        from .formula.engines import spec_terms
        return [FixedTerm(name, tuple(range(sl.start, sl.stop)), factors)
                for name, sl, factors in spec_terms(info)]
    out = []
    for i, name in enumerate(model.exog_names):
        name = str(name)
        is_const = bool(getattr(model, "k_constant", 0)) and \
            getattr(model.data, "const_idx", None) == i
        factors = frozenset() if is_const else frozenset(name.split(":"))
        out.append(FixedTerm(name, (i,), factors))
    return out


def droppable_terms(terms: list[FixedTerm]) -> list[FixedTerm]:
    """Terms that can be dropped respecting marginality (R's ``drop.scope``).

    A term can be dropped when no other term contains all of its factors
    (``flp`` cannot go while ``flp:ses`` stays).  The intercept is never
    dropped.
    """
    out = []
    for t in terms:
        if not t.factors:
            continue
        if any(o is not t and t.factors < o.factors for o in terms):
            continue
        out.append(t)
    return out
