"""Grouping factors of a multilevel model: codes, labels, nesting and checks.

A factor is a data column or the interaction of several (lme4's ``a:b``;
``a/b`` is ``a`` and ``a:b``).  Its levels are the combinations that occur,
labelled as lme4 labels them (``"3:2"``) and sorted by the levels of the
columns.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import factorize_sorted
from ..engine.terms import RETerm, parent_levels
from ..exceptions import IdentificationError

__all__ = ["GroupingFactor", "factor_from_columns", "factor_from_labels", "check_factors",
           "nesting_chain"]


@dataclass(frozen=True, eq=False)
class GroupingFactor:
    """One grouping factor: level codes of the rows and the level labels.

    Attributes
    ----------
    name
        ``"school"`` or ``"school:klass"``.
    codes
        Level of each row, ``0 .. n_levels - 1``.
    labels
        The label of each level (``pandas.Index``).
    columns
        The data columns whose interaction the factor is.
    """

    name: str
    codes: np.ndarray
    labels: pd.Index
    columns: tuple[str, ...]

    @property
    def n_levels(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_levels)


def factor_from_labels(name: str, values: Any, columns: tuple[str, ...] | None = None
                       ) -> GroupingFactor:
    """A factor from one array of labels (any hashable values)."""
    codes, labels = factorize_sorted(values)
    return GroupingFactor(name, np.asarray(codes, dtype=np.intp), pd.Index(labels),
                          columns or (name,))


def factor_from_columns(data: pd.DataFrame, columns: Sequence[str]) -> GroupingFactor:
    """The interaction of ``columns`` of ``data`` as a factor (lme4's ``a:b``).

    Only the combinations that occur are levels; their labels join the
    columns' labels with ``":"`` as lme4 does.
    """
    columns = tuple(columns)
    name = ":".join(columns)
    if len(columns) == 1:
        return factor_from_labels(name, data[columns[0]].to_numpy(), columns)
    parts = [factorize_sorted(data[c].to_numpy()) for c in columns]
    key = np.zeros(len(data), dtype=np.int64)
    total = 1
    for codes, labels in parts:
        if total * max(len(labels), 1) >= 2 ** 62:       # keep the mixed-radix key in int64
            key = pd.factorize(key, sort=True)[0].astype(np.int64)
            total = int(key.max()) + 1
        key = key * len(labels) + np.asarray(codes, dtype=np.int64)
        total *= max(len(labels), 1)
    # hashing, then sorting only the distinct keys: levels in the order of the columns' labels
    codes, combos = pd.factorize(key, sort=True)
    codes = np.asarray(codes, dtype=np.intp)
    # the label of each combination from its first row
    first = np.empty(len(combos), dtype=np.intp)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    pieces = [np.asarray(labels)[np.asarray(c)[first]].astype(str) for c, labels in parts]
    lab = pieces[0]
    for piece in pieces[1:]:
        lab = np.char.add(np.char.add(lab, ":"), piece)
    return GroupingFactor(name, codes, pd.Index(lab.tolist()), columns)


def nesting_chain(factors: Sequence[GroupingFactor]) -> list[int] | None:
    """Indices of the factors from outermost to innermost when they are nested.

    Returns None for crossed (not strictly nested) designs.
    """
    order = sorted(range(len(factors)), key=lambda k: factors[k].n_levels)
    for a, b in zip(order[:-1], order[1:]):
        fa, fb = factors[a], factors[b]
        if fa.n_levels == fb.n_levels or parent_levels(fb.codes, fa.codes, fb.n_levels) is None:
            return None
    return order


def check_factors(factors: Mapping[str, GroupingFactor], terms: Sequence[RETerm],
                  nobs: int) -> None:
    """lme4's checks of levels and random effects per term, and confounded factors.

    Raises
    ------
    IdentificationError
        A factor with one level, a factor with as many levels as rows, a term
        with at least as many random effects as rows, or two factors with the
        same partition of the rows (completely confounded).
    """
    for t in terms:
        f = factors[t.factor]
        if f.n_levels < 2:
            raise IdentificationError(
                f"grouping factor {f.name!r} has only one level ({f.labels[0]!r}): a "
                "random-effects variance needs at least two levels (lme4: grouping factors "
                "must have > 1 sampled level)")
        if f.n_levels >= nobs:
            raise IdentificationError(
                f"grouping factor {f.name!r} has {f.n_levels} levels for {nobs} observations: "
                "the number of levels of a grouping factor must be less than the number of "
                "observations (lme4 stops here too)")
        if nobs <= t.S * f.n_levels:
            raise IdentificationError(
                f"{nobs} observations but {t.S * f.n_levels} random effects for term "
                f"{t.label()} ({t.S} x {f.n_levels} levels of {f.name!r}): the random-effects "
                "parameters and the residual variance are not identifiable (lme4 stops here "
                "too)")
    names = list(dict.fromkeys(t.factor for t in terms))
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            fa, fb = factors[names[a]], factors[names[b]]
            if fa.n_levels == fb.n_levels and parent_levels(fa.codes, fb.codes,
                                                            fa.n_levels) is not None:
                raise IdentificationError(
                    f"grouping factors {fa.name!r} and {fb.name!r} are completely confounded: "
                    f"they split the rows into the same {fa.n_levels} groups, so their "
                    "variances cannot be told apart; keep one of them (if the inner labels "
                    "are unique across the outer units, (1 | outer/inner) is (1 | outer) + "
                    "(1 | inner))")
