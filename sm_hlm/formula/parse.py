"""Parsing of lme4-style model formulas.

``"y ~ x + (x | g) + (1 | h)"`` is split into the fixed-effects formula
``"y ~ x"`` (handed to patsy) and a list of :class:`RandomTermSpec` objects,
one per bar term.  ``(x || g)`` (lme4's double bar) asks for uncorrelated
random effects: each column of the term's design gets its own variance.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ..exceptions import FormulaSyntaxError

__all__ = ["RandomTermSpec", "ParsedFormula", "parse_formula", "split_top_level"]

_IDENT = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")
#: patsy's quoting of a column name that is not a Python name: Q('sch id')
_QUOTED = re.compile(r"""^Q\(\s*(?P<q>['"])(?P<name>.+?)(?P=q)\s*\)$""")


def quote_name(name: str) -> str:
    """``name`` as a formula can refer to it: itself, or ``Q('name')``."""
    if _IDENT.match(name) and name.isidentifier():
        return name
    q = "'" if "'" not in name else '"'
    return f"Q({q}{name}{q})"


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(expr | group)`` of a formula.

    Attributes
    ----------
    expr
        The left of the bar as a patsy right-hand side, e.g. ``"1 + ses"``
        or ``"0 + ses"``.
    group
        Name of the grouping factor: a column name, or ``"a:b"`` for the
        interaction of columns (lme4's ``(x | a:b)``; ``(x | a/b)`` gives
        two terms, on ``a`` and on ``a:b``).
    correlated
        False for lme4's ``||`` (independent variances, no covariances).
    columns
        The data columns whose interaction is the factor (``(group,)`` for a
        plain column).
    """

    expr: str
    group: str
    correlated: bool = True
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.columns is None:
            object.__setattr__(self, "columns", (self.group,))

    def __str__(self) -> str:
        bar = "|" if self.correlated else "||"
        return f"({self.expr} {bar} {':'.join(quote_name(c) for c in self.columns)})"


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its fixed part and its random terms."""

    response: str
    fixed_rhs: str
    random: tuple[RandomTermSpec, ...]

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed_rhs}"


def _check_balanced(text: str, what: str) -> None:
    depth = 0
    for pos, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaSyntaxError(
                    f"unbalanced parentheses in {what} {text!r}: ')' at position {pos} "
                    "has no matching '('")
    if depth:
        raise FormulaSyntaxError(
            f"unbalanced parentheses in {what} {text!r}: {depth} '(' not closed")


def split_top_level(rhs: str, sep: str = "+") -> list[str]:
    """Split ``rhs`` at ``sep`` characters that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for pos, ch in enumerate(rhs):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(rhs[start:pos])
            start = pos + 1
    parts.append(rhs[start:])
    return [p.strip() for p in parts]


def _strip_outer(term: str) -> str | None:
    """The inside of ``term`` when the whole term is one parenthesised group."""
    if not (term.startswith("(") and term.endswith(")")):
        return None
    depth = 0
    for pos, ch in enumerate(term):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and pos != len(term) - 1:
                return None
    return term[1:-1]


def _bar_position(inner: str) -> tuple[int, int] | None:
    """Position and width of the top-level ``|`` or ``||`` in ``inner``."""
    depth = 0
    for pos, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            width = 2 if inner[pos:pos + 2] == "||" else 1
            rest = inner[pos + width:]
            if "|" in rest:
                raise FormulaSyntaxError(
                    f"random-effects term ({inner}) has more than one bar")
            return pos, width
    return None


def _parse_bar(inner: str, formula: str) -> list[RandomTermSpec]:
    pos, width = _bar_position(inner)  # type: ignore[misc]
    expr, group = inner[:pos].strip(), inner[pos + width:].strip()
    if not expr:
        raise FormulaSyntaxError(
            f"random-effects term ({inner}) in {formula!r} has nothing left of the bar; "
            "write (1 | g) for a random intercept")
    if not group:
        raise FormulaSyntaxError(
            f"random-effects term ({inner}) in {formula!r} names no grouping column "
            "right of the bar")
    nest = split_top_level(group, "/")
    if any(not part for part in nest):
        raise FormulaSyntaxError(f"empty grouping factor in ({inner}) of {formula!r}")
    out: list[RandomTermSpec] = []
    outer: list[str] = []
    for part in nest:           # (x | a/b/c) = (x | a) + (x | a:b) + (x | a:b:c)
        cols = []
        for piece in split_top_level(part, ":"):
            quoted = _QUOTED.match(piece)
            if quoted:          # (1 | Q('sch id')): a column name with spaces etc.
                cols.append(quoted.group("name"))
            elif _IDENT.match(piece):
                cols.append(piece)
            else:
                raise FormulaSyntaxError(
                    f"grouping factor {piece!r} in ({inner}) must be a column name, an "
                    "interaction a:b of column names or a nesting a/b; quote a name that is "
                    "not a Python name as Q('name')")
        outer = outer + [c for c in cols if c not in outer]
        columns = tuple(outer)
        out.append(RandomTermSpec(expr=expr, group=":".join(columns), correlated=(width == 1),
                                  columns=columns))
    return out


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4-style formula into its fixed part and random terms.

    Parameters
    ----------
    formula
        ``"response ~ fixed terms + (expr | group) + ..."``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaSyntaxError
        For a missing ``~``, unbalanced parentheses, an empty side of a bar,
        or a bar outside parentheses.
    """
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    return _parse(formula)


@functools.lru_cache(maxsize=256)
def _parse(formula: str) -> ParsedFormula:
    """:func:`parse_formula` of a string, cached (the result is immutable)."""
    _check_balanced(formula, "formula")
    if formula.count("~") != 1:
        raise FormulaSyntaxError(
            f"formula {formula!r} must have exactly one '~' between response and predictors")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if not lhs:
        raise FormulaSyntaxError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaSyntaxError(f"formula {formula!r} has no predictors right of '~'")
    fixed: list[str] = []
    random: list[RandomTermSpec] = []
    for term in split_top_level(rhs):
        if not term:
            raise FormulaSyntaxError(f"empty term (stray '+') in formula {formula!r}")
        inner = _strip_outer(term)
        if inner is not None and _bar_position(inner) is not None:
            random.extend(_parse_bar(inner, formula))
        elif "|" in term:
            raise FormulaSyntaxError(
                f"term {term!r} of {formula!r} uses '|' outside a parenthesised "
                "random-effects term (expr | group)")
        else:
            fixed.append(term)
    fixed_rhs = " + ".join(fixed) if fixed else "1"
    if fixed and all(t in ("0", "-1") for t in fixed):
        fixed_rhs = "0"
    return ParsedFormula(response=lhs, fixed_rhs=fixed_rhs, random=tuple(random))
