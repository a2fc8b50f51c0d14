"""Two-level (HLM-style) model specification.

Raudenbush & Bryk write a two-level model as one regression per level::

    level 1:  y_ij    = beta_0j + beta_1j x_1ij + ... + r_ij,       r_ij ~ N(0, sigma^2)
    level 2:  beta_kj = gamma_k0 + gamma_k1 w_1j + ... + u_kj,      u_j ~ N(0, T)

:func:`from_levels` (``HLM.from_levels``) takes the two levels separately,
composes the single mixed-model formula lme4 would use (each level-2
predictor ``w`` of ``beta_kj`` becomes the cross-level interaction
``w:x_k``) and builds the :class:`~sm_hlm.HLM` from it.  The model keeps a
:class:`LevelsSpec` (``model.levels``) mapping every fixed effect back to
its gamma, so that results can be reported equation by equation
(:func:`level_equations`, ``results.level_equations()`` and the summary).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .crosslevel import Level2Error, check_constant_within
from .data import formula_variables, nonfinite_rows
from .residual import structure_columns

if TYPE_CHECKING:
    from .model import HLM
    from .results import HLMResults

__all__ = ["LevelSpecError", "Level2Equation", "Gamma", "LevelsSpec", "LevelEquations",
           "from_levels", "level_equations", "add_level_tables"]

_INTERCEPT_ALIASES = frozenset({"Intercept", "(Intercept)", "1", "intercept"})


class LevelSpecError(ValueError):
    """An inconsistent two-level specification (unknown coefficient, bad equation)."""


# ---------------------------------------------------------------------------
# specification objects
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Level2Equation:
    """The level-2 equation of one level-1 coefficient ``beta_kj``.

    Attributes
    ----------
    coefficient
        The level-1 coefficient (a level-1 design column: ``"Intercept"``, ``"ses"``).
    k
        Its index in ``beta_kj`` (0 for the intercept, then 1, 2, ...).
    rhs
        The level-2 right-hand side as given (``"1"`` when no equation was
        given: the coefficient is then fixed, only ``gamma_k0``).
    given
        Whether the caller supplied the equation.
    has_intercept
        Whether the equation has ``gamma_k0``.
    predictors
        Names of the level-2 design columns (``"Intercept"`` included when
        present), in the order of the gammas.
    random
        Whether ``beta_kj`` has a random effect ``u_kj``.
    term
        The level-1 term holding the coefficient (the key of its level-2
        equation); equals ``coefficient`` except for the columns of a factor
        (``coefficient="C(sex)[T.M]"``, ``term="C(sex)"``).
    """

    coefficient: str
    k: int
    rhs: str
    given: bool
    has_intercept: bool
    predictors: tuple[str, ...]
    random: bool
    term: str = ""


@dataclass(frozen=True)
class Gamma:
    """One fixed effect of the composed model seen as a level-2 coefficient.

    Attributes
    ----------
    label
        ``"gamma_01"`` style label (``"gamma_1,10"`` when an index exceeds 9).
    coefficient
        The level-1 coefficient whose equation holds it.
    k, s
        Indices of ``gamma_ks``.
    predictor
        The level-2 predictor (``"Intercept"`` for ``gamma_k0``).
    fe_name
        The fixed-effect (column) name in the composed model, e.g. ``"flp:ses"``.
    """

    label: str
    coefficient: str
    k: int
    s: int
    predictor: str
    fe_name: str


@dataclass(frozen=True)
class LevelsSpec:
    """A two-level specification and its composed mixed model (``model.levels``).

    Attributes
    ----------
    response
        The response (level-1 left-hand side).
    level1
        The level-1 formula as given.
    coefficients
        The level-1 terms (the keys ``level2`` and ``random`` accept), in order.
    equations
        One :class:`Level2Equation` per level-1 coefficient (design column:
        a factor term has one per column).
    group
        The grouping column (the level-2 units).
    random
        Level-1 coefficients with a random effect ``u_kj``.
    correlated
        Whether the random effects are correlated (``|``) or not (``||``).
    formula
        The composed lme4-style formula.
    gammas
        One :class:`Gamma` per fixed effect of the composed model.
    """

    response: str
    level1: str
    coefficients: tuple[str, ...]
    equations: tuple[Level2Equation, ...]
    group: str
    random: tuple[str, ...]
    correlated: bool
    formula: str
    gammas: tuple[Gamma, ...] = field(default=())

    def equation(self, coefficient: str) -> Level2Equation:
        """The level-2 equation of ``coefficient``."""
        for eq in self.equations:
            if coefficient in (eq.coefficient, eq.term):
                return eq
        raise KeyError(f"no level-1 coefficient {coefficient!r}; level-1 coefficients: "
                       f"{list(self.coefficients)}")

    def gamma_frame(self) -> pd.DataFrame:
        """The gammas as a labelled DataFrame (index: gamma label)."""
        rows = [{"gamma": g.label, "coefficient": g.coefficient, "k": g.k, "s": g.s,
                 "predictor": g.predictor, "fe_name": g.fe_name} for g in self.gammas]
        return pd.DataFrame(rows).set_index("gamma")

    # ------------------------------------------------------------- rendering
    def level1_equation(self) -> str:
        """``mscore_ij = beta_0j + beta_1j*ses_ij + r_ij``."""
        parts = []
        for eq in self.equations:
            b = f"beta_{eq.k}j"
            parts.append(b if eq.k == 0 and eq.coefficient == "Intercept"
                         else f"{b}*{_sub(eq.coefficient, 'ij')}")
        return f"{_sub(self.response, 'ij')} = " + " + ".join(parts) + " + r_ij"

    def level2_equations(self) -> list[str]:
        """``beta_0j = gamma_00 + gamma_01*flp_j + u_0j``, one per coefficient."""
        out = []
        for eq in self.equations:
            gs = [g for g in self.gammas if g.coefficient == eq.coefficient]
            parts = [g.label if g.predictor == "Intercept"
                     else f"{g.label}*{_sub(g.predictor, 'j')}" for g in gs]
            if eq.random:
                parts.append(f"u_{eq.k}j")
            out.append(f"beta_{eq.k}j = " + (" + ".join(parts) if parts else "0"))
        return out

    def describe(self) -> str:
        """The level-1 and level-2 equations and the composed formula, as text."""
        lines = ["Level-1 model", "    " + self.level1_equation(), "Level-2 model"]
        lines += ["    " + e for e in self.level2_equations()]
        lines += ["Mixed model", "    " + self.formula]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _sub(name: str, index: str) -> str:
    """``ses`` -> ``ses_ij``; names that are not identifiers get parentheses."""
    simple = name.replace(".", "").replace("_", "").isalnum()
    return f"{name}_{index}" if simple else f"({name})_{index}"


def _gamma_label(k: int, s: int) -> str:
    return f"gamma_{k}{s}" if k < 10 and s < 10 else f"gamma_{k},{s}"


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

def _term_codes(term: Any) -> tuple[str, ...]:
    return tuple(f.name() for f in term.factors)


def _term_name(codes: tuple[str, ...]) -> str:
    return ":".join(codes) if codes else "Intercept"


def _normalise_name(name: str, what: str) -> str:
    """A user's coefficient name in patsy's normal form (``I(x**2)`` -> ``I(x ** 2)``)."""
    from patsy import ModelDesc, PatsyError

    if not isinstance(name, str):
        raise TypeError(f"{what} names must be strings, got {name!r}")
    if name.strip() in _INTERCEPT_ALIASES:
        return "Intercept"
    try:
        terms = ModelDesc.from_formula("~ 0 + " + name).rhs_termlist
    except PatsyError:
        return name.strip()
    if len(terms) != 1:
        return name.strip()
    return _term_name(_term_codes(terms[0]))


def _parse_level2(coefficient: str, value: Any) -> tuple[str, list[tuple[str, ...]], bool]:
    """The right-hand side, its terms (as factor codes) and its intercept flag."""
    from patsy import INTERCEPT, ModelDesc, PatsyError

    if not isinstance(value, str):
        raise TypeError(f"the level-2 equation for {coefficient!r} must be a formula string "
                        f"such as '~ flp' or '~ 1', got {type(value).__name__}")
    text = value.strip()
    if "|" in text:
        raise LevelSpecError(
            f"the level-2 equation for {coefficient!r} ({value!r}) contains '|': random effects "
            "are chosen with random=[...], not in the level-2 equations")
    if "~" in text:
        lhs, rhs = (p.strip() for p in text.split("~", 1))
        if lhs and _normalise_name(lhs, "level-2 left-hand side") != coefficient:
            raise LevelSpecError(
                f"the level-2 equation given for {coefficient!r} has left-hand side {lhs!r}; "
                f"write it as '~ {rhs}' (or '{coefficient} ~ {rhs}')")
    else:
        rhs = text
    if not rhs:
        raise LevelSpecError(f"the level-2 equation for {coefficient!r} ({value!r}) is empty; "
                             "use '~ 1' for a coefficient with only gamma_k0")
    try:
        desc = ModelDesc.from_formula("~ " + rhs)
    except PatsyError as exc:
        raise LevelSpecError(f"cannot parse the level-2 equation for {coefficient!r} "
                             f"({value!r}): {exc}") from exc
    terms = list(desc.rhs_termlist)
    has_icpt = INTERCEPT in terms
    codes = [_term_codes(t) for t in terms]
    if not codes:
        raise LevelSpecError(
            f"the level-2 equation for {coefficient!r} ({value!r}) has no terms, which would "
            f"fix {coefficient!r} at 0; drop {coefficient!r} from the level-1 formula instead")
    # the intercept first, as gamma_k0
    codes.sort(key=lambda c: len(c) != 0)
    return rhs, codes, has_icpt


# ---------------------------------------------------------------------------
# building the model
# ---------------------------------------------------------------------------

def from_levels(cls: type["HLM"], *, level1: str, level2: Mapping[str, str] | None = None,
                groups: str, random: Sequence[str] | str | None = None, data: pd.DataFrame,
                correlated: bool = True, missing: str = "drop", eval_env: int = 0,
                **kwargs: Any) -> "HLM":
    """Build an :class:`~sm_hlm.HLM` from level-1 and level-2 equations.

    Parameters
    ----------
    cls
        The model class (``HLM``); called through ``HLM.from_levels``.
    level1
        The level-1 formula, ``"mscore ~ ses"`` (patsy syntax; ``"~ 0 + ses"``
        drops the level-1 intercept).  No ``(x | g)`` terms.
    level2
        ``{coefficient: "~ predictors"}``, one equation per level-1
        coefficient that depends on level-2 predictors, e.g.
        ``{"Intercept": "~ flp", "ses": "~ flp"}``.  Keys are level-1 term
        names (``"Intercept"``/``"(Intercept)"`` for the intercept).  A
        coefficient without an equation has only ``gamma_k0``; ``"~ 1"``
        says so explicitly; ``"~ 0 + w"`` omits ``gamma_k0``.  Predictors may
        be transformations (``"~ np.log(enroll) + C(sector)"``) and must be
        constant within groups.  A level-1 factor (``C(sex)``) has one
        ``beta_kj`` per design column, all with the factor's equation; its
        level-2 predictors must then also be in the intercept's equation
        (otherwise patsy would code the cross-level term in full and add
        coefficients; a :class:`LevelSpecError` says so).
    groups
        Name of the grouping column (the level-2 units).
    random
        Level-1 coefficients with a random effect ``u_kj``.  Default: the
        intercept only (when level 1 has one); ``[]`` for none.
    data
        The level-1 data (one row per level-1 unit), holding the level-2
        predictors as columns constant within groups.
    correlated
        Correlated random effects (lme4's ``|``, the default) or independent
        ones (``||``).
    missing, eval_env, **kwargs
        Passed to :meth:`HLM.from_formula`.

    Returns
    -------
    HLM
        With ``model.levels`` (a :class:`LevelsSpec`) and ``model.formula``
        the composed formula.

    Raises
    ------
    LevelSpecError
        A level-2 equation or ``random`` entry names a coefficient level 1
        lacks, a level-2 equation cannot be parsed, two equations produce
        the same fixed effect, or patsy's coding of the composed model adds
        coefficients or random effects the two-level model lacks (a factor
        in ``random`` without the intercept, a level-1 factor whose level-2
        predictor is missing from the intercept's equation).
    Level2Error
        A level-2 predictor varies within groups (the message names the
        predictor, its equation and the offending groups), checked on the
        rows the model keeps.

    Notes
    -----
    Substituting the level-2 equations into level 1 gives

    .. math::

        y_{ij} = \\sum_k \\Big(\\sum_s \\gamma_{ks} w_{sj}\\Big) x_{kij}
                 + \\sum_{k \\in R} u_{kj} x_{kij} + r_{ij},

    with :math:`w_{0j} = 1` and :math:`x_{0ij} = 1`: every pair (level-1
    coefficient :math:`k`, level-2 predictor :math:`s`) is one fixed effect,
    the cross-level interaction ``w_s:x_k`` (``w_s`` alone for the
    intercept's equation, ``x_k`` alone for :math:`\\gamma_{k0}`), and the
    coefficients in ``random`` (the set :math:`R`) make the random part
    ``(x_k ... | g)``.  ``HLM.from_levels(level1="mscore ~ ses", level2=
    {"Intercept": "~ flp", "ses": "~ flp"}, groups="school", random=
    ["Intercept", "ses"], data=d)`` is
    ``mscore ~ 1 + flp + ses + flp:ses + (1 + ses | school)``.
    """
    from patsy import INTERCEPT, EvalEnvironment, ModelDesc, PatsyError, dmatrix

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if not isinstance(level1, str) or "~" not in level1:
        raise TypeError(f"level1 must be a formula string 'response ~ predictors', got {level1!r}")
    if not isinstance(groups, str):
        raise TypeError("groups must be the name of the grouping column of data, got "
                        f"{type(groups).__name__}")
    if groups not in data.columns:
        raise KeyError(f"grouping column {groups!r} is not in the data (columns: "
                       f"{', '.join(map(str, data.columns[:30]))})")
    if "|" in level1:
        raise LevelSpecError(f"level1 ({level1!r}) contains '|': give random effects with "
                             "random=[...] (names of level-1 coefficients)")
    env = EvalEnvironment.capture(eval_env + 1)
    try:
        desc1 = ModelDesc.from_formula(level1)
    except PatsyError as exc:
        raise LevelSpecError(f"cannot parse level1 {level1!r}: {exc}") from exc
    if len(desc1.lhs_termlist) != 1:
        raise LevelSpecError(f"level1 ({level1!r}) needs exactly one response left of '~'")
    response = ":".join(_term_codes(desc1.lhs_termlist[0]))
    l1_terms = list(desc1.rhs_termlist)
    if not l1_terms:
        raise LevelSpecError(f"level1 ({level1!r}) has no coefficients")
    l1_codes = [_term_codes(t) for t in l1_terms]
    # intercept first (beta_0j), then the other terms in the order given
    l1_codes.sort(key=lambda c: len(c) != 0)
    coefs = [_term_name(c) for c in l1_codes]
    has_l1_icpt = INTERCEPT in l1_terms

    def unknown(name: str, what: str) -> LevelSpecError:
        return LevelSpecError(
            f"{what} names {name!r}, which is not a level-1 coefficient; the level-1 "
            f"coefficients of {level1!r} are {coefs}")

    # ---- level-2 equations
    level2 = {} if level2 is None else level2
    if not isinstance(level2, Mapping):
        raise TypeError("level2 must be a dict {level-1 coefficient: '~ level-2 predictors'}, "
                        f"got {type(level2).__name__}")
    given: dict[str, tuple[str, list[tuple[str, ...]], bool]] = {}
    for key, value in level2.items():
        name = _normalise_name(key, "level2")
        if name not in coefs:
            raise unknown(key, "a level-2 equation")
        if name in given:
            raise LevelSpecError(f"two level-2 equations for {name!r}")
        given[name] = _parse_level2(name, value)

    # ---- random effects
    if random is None:
        rand = ["Intercept"] if has_l1_icpt else []
    else:
        rand_in = [random] if isinstance(random, str) else list(random)
        rand = []
        for r in rand_in:
            name = _normalise_name(r, "random")
            if name not in coefs:
                raise unknown(r, "random")
            if name in rand:
                raise LevelSpecError(f"random lists {name!r} twice")
            rand.append(name)
    rand = [c for c in coefs if c in rand]          # level-1 order

    # ---- compose the fixed part
    pieces: list[tuple[str, int, tuple[str, ...]]] = []   # (coef, level-2 term #, codes)
    eq_info: dict[str, tuple[str, list[tuple[str, ...]], bool, bool]] = {}
    seen: dict[frozenset[str], str] = {}
    for codes, coef in zip(l1_codes, coefs):
        rhs, l2_codes, icpt = given.get(coef, ("1", [()], True))
        eq_info[coef] = (rhs, l2_codes, icpt, coef in given)
        for t, c2 in enumerate(l2_codes):
            combined = tuple(c2) + tuple(c for c in codes if c not in c2)
            key = frozenset(combined)
            where = f"{_term_name(c2)} in the equation for {coef!r}"
            if key in seen:
                raise LevelSpecError(
                    f"the fixed effect {_term_name(combined)!r} arises twice ({seen[key]} and "
                    f"{where}); each level-1 coefficient x level-2 predictor pair must be "
                    "distinct")
            if set(c2) & set(codes):
                raise LevelSpecError(
                    f"level-2 predictor {_term_name(c2)!r} in the equation for {coef!r} "
                    "repeats a level-1 variable")
            seen[key] = where
            pieces.append((coef, t, combined))
    fixed = [_term_name(c) if c else "1" for (_, _, c) in pieces]
    if not any(len(c) == 0 for (_, _, c) in pieces):
        fixed.insert(0, "0")
    fixed_formula = f"{response} ~ " + " + ".join(fixed)
    formula = fixed_formula
    from_formula_kw: dict[str, Any] = {}
    if rand:
        re_parts = ["1" if c == "Intercept" else c for c in rand]
        if "Intercept" not in rand:
            re_parts.insert(0, "0")
        bar = "|" if correlated else "||"
        from .formula.parse import quote_name
        formula += f" + ({' + '.join(re_parts)} {bar} {quote_name(groups)})"
    else:
        from_formula_kw.update(groups=groups, re_formula="0")

    # ---- level-2 predictors must be constant within groups, on the rows the model keeps
    # (from_formula's: the subset, without NaN/inf in the variables used)
    subset = kwargs.pop("subset", None)
    if subset is not None:
        data = data.loc[subset]
    used = formula_variables(fixed_formula) | {groups}
    used |= set(structure_columns(kwargs.get("residual")).values())
    bad = nonfinite_rows({c: data[c] for c in used if c in data.columns})
    frame = data.reset_index(drop=True).loc[~np.logical_or.reduce(list(bad.values()))]
    l2_designs: dict[str, pd.DataFrame] = {}
    for coef, (rhs, l2_codes, icpt, was_given) in eq_info.items():
        if not was_given:
            continue
        X2 = dmatrix(("~ " + rhs), frame, return_type="dataframe", NA_action="raise",
                     eval_env=env)
        l2_designs[coef] = X2
        gcol = groups if groups not in X2.columns else "__group__"
        check = X2.assign(**{gcol: frame[groups].to_numpy()})
        for col in X2.columns:
            if col == "Intercept":
                continue
            try:
                check_constant_within(check, col, gcol, atol=1e-10)
            except Level2Error as exc:
                msg = str(exc)
                raise Level2Error(
                    f"level-2 predictor {col!r} in the equation for {coef!r} (~ {rhs}) must "
                    f"be constant within each group of {groups!r}, but it is not: {msg}",
                    column=col, group_ids=exc.group_ids, n_groups=exc.n_groups) from None

    # ---- the model
    from .formula.engines import using_engine
    with using_engine("patsy"):     # the gamma mapping reads patsy's term objects
        model = cls.from_formula(formula, data, missing=missing, eval_env=eval_env + 1,
                                 **from_formula_kw, **kwargs)

    # ---- map every fixed effect back to its gamma
    X1 = dmatrix("~ " + level1.split("~", 1)[1], frame, return_type="dataframe",
                 NA_action="raise", eval_env=env)
    l1_columns = {frozenset(_term_codes(term)): [str(c) for c in X1.columns[sl]]
                  for term, sl in X1.design_info.term_slices.items()}
    gammas, equations = _map_gammas(
        fe_names=list(model.exog_names),
        fe_slices={frozenset(_term_codes(term)): sl
                   for term, sl in model.fixed_design_info.term_slices.items()},
        l1_codes=l1_codes, coefs=coefs, l1_columns=l1_columns, has_l1_icpt=has_l1_icpt,
        pieces=pieces, eq_info=eq_info, l2_designs=l2_designs, rand=rand)
    re_expected = [eq.coefficient for eq in equations if eq.random]
    if set(model.re_design.names) != set(re_expected):
        raise LevelSpecError(
            f"random={rand} gives the random-effects columns {list(model.re_design.names)}, "
            f"not one u_kj per random level-1 coefficient {re_expected}: without the "
            "intercept in the random part patsy codes a factor in full, which would add "
            "random effects the two-level model does not have. Add 'Intercept' to random, "
            "or code the factor as numeric dummy columns in the data")
    model.levels = LevelsSpec(response=response, level1=level1, coefficients=tuple(coefs),
                              equations=tuple(equations), group=groups, random=tuple(rand),
                              correlated=correlated, formula=formula, gammas=tuple(gammas))
    return model


def _map_gammas(*, fe_names: list[str], fe_slices: dict[frozenset[str], slice],
                l1_codes: list[tuple[str, ...]], coefs: list[str],
                l1_columns: dict[frozenset[str], list[str]], has_l1_icpt: bool,
                pieces: list[tuple[str, int, tuple[str, ...]]],
                eq_info: dict[str, tuple[str, list[tuple[str, ...]], bool, bool]],
                l2_designs: dict[str, pd.DataFrame], rand: list[str],
                ) -> tuple[list[Gamma], list[Level2Equation]]:
    """Gammas and equations: one level-1 coefficient per level-1 design column.

    A level-1 term with several columns (a factor) has one ``beta_kj`` per
    column, all with the term's level-2 equation.  The composed column
    ``w:x`` is matched by name to (level-1 column ``x``, level-2 column
    ``w``).  Raises :class:`LevelSpecError` when patsy codes the composed
    term with other columns (a factor ``x`` whose level-2 predictor ``w``
    has no main effect gets full dummy coding in ``w:x``), as the composed
    model would then not be the two-level model.
    """
    # level-1 coefficients (design columns), numbered beta_0j (intercept), beta_1j, ...
    k_of: dict[str, int] = {}
    term_of: dict[str, str] = {}
    k = 0 if has_l1_icpt else 1
    for codes, term in zip(l1_codes, coefs):
        for c in l1_columns.get(frozenset(codes), [term]):
            k_of[c], term_of[c] = k, term
            k += 1
    assigned: dict[str, list[tuple[str, str]]] = {c: [] for c in k_of}   # coef -> (pred, fe)
    for (term, t, combined) in pieces:
        c2 = eq_info[term][1][t]
        cols = fe_names[fe_slices[frozenset(combined)]]
        C = [c for c in k_of if term_of[c] == term]
        if c2:      # a level-2 predictor: its columns in the equation's design
            X2 = l2_designs[term]
            l2_sl = {frozenset(_term_codes(tm)): sl
                     for tm, sl in X2.design_info.term_slices.items()}
            D = [str(x) for x in X2.columns[l2_sl[frozenset(c2)]]]
        else:       # gamma_k0
            D = ["Intercept"]
        expected = {}
        for c in C:
            for d in D:
                name = c if d == "Intercept" else (d if c == "Intercept" else f"{d}:{c}")
                expected[name] = (c, d)
        if set(cols) == set(expected):
            for col in cols:
                c, d = expected[col]
                assigned[c].append((d, col))
        elif len(C) == 1 and len(D) == len(cols):     # same columns, other names
            for col, d in zip(cols, D):
                assigned[C[0]].append((d, col))
        else:
            raise LevelSpecError(
                f"the cross-level term {_term_name(combined)!r} (level-2 predictor "
                f"{_term_name(c2)!r} in the equation for {term!r}) gets columns {list(cols)} "
                f"from patsy, not the products of level-1 columns {C} and level-2 columns "
                f"{D}: patsy codes a factor in full when the lower-order term is absent, "
                f"which would add coefficients the two-level model does not have. Add "
                f"{_term_name(c2)!r} to the intercept's level-2 equation, or code the factor "
                "as numeric dummy columns in the data")
    gammas: list[Gamma] = []
    equations: list[Level2Equation] = []
    for c, items in assigned.items():
        term = term_of[c]
        rhs, _, icpt, was_given = eq_info[term]
        kk = k_of[c]
        s_next = 1
        preds = []
        for d, col in items:
            if d == "Intercept":
                s = 0
            else:
                s, s_next = s_next, s_next + 1
            gammas.append(Gamma(label=_gamma_label(kk, s), coefficient=c, k=kk, s=s,
                                predictor=d, fe_name=col))
            preds.append(d)
        if items:
            equations.append(Level2Equation(coefficient=c, k=kk, rhs=rhs, given=was_given,
                                            has_intercept=icpt, predictors=tuple(preds),
                                            random=term in rand, term=term))
    return gammas, equations


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

class LevelEquations:
    """The fitted level-1 and level-2 equations (``results.level_equations()``).

    Attributes
    ----------
    spec : LevelsSpec
    tables : dict of str to DataFrame
        One gamma table per level-2 equation, keyed ``"beta_0j (Intercept)"``;
        index: gamma labels; columns ``Predictor``, ``Fixed effect``,
        ``Coef.``, ``Std.Err.``, the test statistic, (``df``) and p-value.
    frame : DataFrame
        All tables stacked, MultiIndex (equation, gamma).
    variance : DataFrame
        The variance components: ``tau`` (random effects ``u_kj``) and
        ``sigma^2`` (``r_ij``), with SDs.
    """

    def __init__(self, spec: LevelsSpec, tables: dict[str, pd.DataFrame],
                 variance: pd.DataFrame, *, estimated: list[str], method: str,
                 ddf: str | None, float_format: str = "%.4f"):
        self.spec = spec
        self.tables = tables
        self.frame = pd.concat(tables, names=["equation", "gamma"])
        self.variance = variance
        self.estimated = estimated
        self.method = method
        self.ddf = ddf
        self.float_format = float_format

    def as_text(self) -> str:
        """Plain-text rendering: equations, estimated equations, gamma tables."""
        ff = self.float_format
        lines = [self.spec.describe(), "", f"Estimated equations ({self.method})"]
        lines += ["    " + e for e in self.estimated]
        lines += ["", "Fixed effects by level-2 equation"
                  + ("" if self.ddf is None else f" (ddf: {self.ddf})")]
        for eq, tab in self.tables.items():
            lines.append(eq)
            txt = tab.to_string(float_format=lambda v: ff % v)
            lines += ["    " + t for t in txt.split("\n")]
        lines += ["", "Variance components"]
        txt = self.variance.to_string(float_format=lambda v: ff % v, na_rep="")
        lines += ["    " + t for t in txt.split("\n")]
        return "\n".join(lines)

    def as_html(self) -> str:
        ff = self.float_format
        parts = [f"<pre>{self.spec.describe()}</pre>",
                 "<pre>" + "\n".join(self.estimated) + "</pre>"]
        for eq, tab in self.tables.items():
            parts.append(f"<h4>{eq}</h4>" + tab.to_html(float_format=lambda v: ff % v))
        parts.append("<h4>Variance components</h4>"
                     + self.variance.to_html(float_format=lambda v: ff % v, na_rep=""))
        return "\n".join(parts)

    _repr_html_ = as_html

    def __str__(self) -> str:
        return self.as_text()

    def __repr__(self) -> str:
        return self.as_text()


def _spec_of(results: "HLMResults") -> LevelsSpec:
    spec = getattr(results.model, "levels", None)
    if spec is None:
        raise ValueError("the model was not built by HLM.from_levels: it has no level-1/level-2 "
                         "specification (model.levels)")
    return spec


def _stat_columns(results: "HLMResults", spec: LevelsSpec, ddf: str | None) -> pd.DataFrame:
    """Estimate, SE, statistic, df and p-value of every fixed effect."""
    est = results.fe_params
    se = results.bse_fe
    stat = est / se
    if ddf is None:
        return pd.DataFrame({"Coef.": est, "Std.Err.": se, "z": stat,
                             "P>|z|": 2 * stats.norm.sf(np.abs(stat))})
    key = ddf.lower()
    if key == "hlm":
        m, n, p = results.model.n_groups, results.nobs, results.model.k_fe
        df = pd.Series(float(n - p), index=est.index)
        for eq in spec.equations:
            if not eq.random:
                continue
            n_pred = sum(1 for g in spec.gammas if g.coefficient == eq.coefficient
                         and g.predictor != "Intercept")
            for g in spec.gammas:
                if g.coefficient == eq.coefficient:
                    df[g.fe_name] = float(m - n_pred - 1)
    elif key == "satterthwaite":
        df = results.satterthwaite()["df"].reindex(est.index)
    elif key in ("kenward-roger", "kenward_roger"):
        from .kenward_roger import _kenward_roger_table
        tab = _kenward_roger_table(results)
        df = tab["df"].reindex(est.index)
        se = tab["Std. Error"].reindex(est.index)
        stat = est / se
    else:
        raise ValueError(f"ddf must be None, 'hlm', 'satterthwaite' or 'kenward-roger', got "
                         f"{ddf!r}")
    return pd.DataFrame({"Coef.": est, "Std.Err.": se, "t-ratio": stat, "df": df,
                         "P>|t|": 2 * stats.t.sf(np.abs(stat), df)})


def level_equations(results: "HLMResults", *, ddf: str | None = None,
                    float_format: str = "%.4f") -> LevelEquations:
    """Gamma tables, estimated equations and variance components of a two-level fit.

    Parameters
    ----------
    results
        Results of a model built by ``HLM.from_levels``.
    ddf
        ``None`` (default): normal-theory z tests, as the summary's fixed
        effects.  ``"hlm"``: t-ratios with the HLM program's approximate
        degrees of freedom (see Notes).  ``"satterthwaite"``: lmerTest's
        Satterthwaite degrees of freedom.  ``"kenward-roger"``: pbkrtest's
        Kenward-Roger df with the adjusted standard errors (REML fits).
    float_format
        Number format of the text rendering.

    Returns
    -------
    LevelEquations

    Notes
    -----
    The estimate of :math:`\\gamma_{ks}` is the fixed effect of the composed
    model's column ``w_s:x_k``, with its standard error
    :math:`\\sqrt{[\\hat\\sigma^2 (X'V^{-1}X)^{-1}]_{ii}}`.  With
    ``ddf="hlm"``, as Raudenbush & Bryk's HLM program, a gamma in the
    equation of a randomly varying :math:`\\beta_{kj}` with :math:`S_k`
    level-2 predictors gets :math:`J - S_k - 1` degrees of freedom
    (:math:`J` groups); gammas of non-random coefficients get the level-1
    residual degrees of freedom :math:`N - p` (:math:`p` fixed effects).
    """
    spec = _spec_of(results)
    ff = float_format
    st = _stat_columns(results, spec, ddf)
    tables: dict[str, pd.DataFrame] = {}
    estimated: list[str] = []
    for eq in spec.equations:
        gs = [g for g in spec.gammas if g.coefficient == eq.coefficient]
        rows = []
        terms = []
        for g in gs:
            row = {"gamma": g.label, "Predictor": g.predictor, "Fixed effect": g.fe_name}
            row.update(st.loc[g.fe_name].to_dict())
            rows.append(row)
            val = float(st.loc[g.fe_name, "Coef."])
            if g.predictor == "Intercept":
                terms.append(ff % val)
            else:
                sign = "-" if val < 0 else "+"
                terms.append(f"{sign} {ff % abs(val)}*{_sub(g.predictor, 'j')}")
        tab = pd.DataFrame(rows).set_index("gamma")
        tables[f"beta_{eq.k}j ({eq.coefficient})"] = tab
        rhs = " ".join(terms) if terms else "0"
        if rhs.startswith("+ "):
            rhs = rhs[2:]
        elif rhs.startswith("- "):
            rhs = "-" + rhs[2:]
        if eq.random:
            rhs += f" + u_{eq.k}j"
        estimated.append(f"beta_{eq.k}j = {rhs}")
    # variance components: tau (row by row: covariances, then the variance) and sigma^2
    rows = []
    k_of = {eq.coefficient: eq.k for eq in spec.equations}   # from_levels checked the names
    for t, block, sd, corr in results.model.re_design.term_blocks(results.fit_result.cov_re):
        for i, a in enumerate(t.names):
            ka = k_of[a]
            for j in range(i if t.correlated else 0):
                b, kb = t.names[j], k_of[t.names[j]]
                rows.append({"component": f"tau_{kb}{ka}",
                             "random effect": f"u_{kb}j, u_{ka}j ({b}, {a})",
                             "Variance": block[i, j], "Std.Dev.": np.nan, "Corr.": corr[i, j]})
            rows.append({"component": f"tau_{ka}{ka}", "random effect": f"u_{ka}j ({a})",
                         "Variance": block[i, i], "Std.Dev.": sd[i], "Corr.": np.nan})
    rows.append({"component": "sigma^2", "random effect": "r_ij (level 1)",
                 "Variance": float(results.scale), "Std.Dev.": float(np.sqrt(results.scale)),
                 "Corr.": np.nan})
    variance = pd.DataFrame(rows).set_index("component")
    return LevelEquations(spec, tables, variance, estimated=estimated, method=results.method,
                          ddf=ddf, float_format=ff)


def add_level_tables(smry: Any, results: "HLMResults", *, ddf: str | None = None,
                     float_format: str = "%.4f") -> None:
    """Add one gamma table per level-2 equation to an ``HLMSummary``.

    The first table's title carries the level-1 equation; each title shows
    its level-2 equation.  ``ddf`` follows the summary's (None: z tests).
    """
    spec = _spec_of(results)
    eqs = level_equations(results, ddf=ddf, float_format=float_format)
    symbolic = spec.level2_equations()
    for i, (tab, sym) in enumerate(zip(eqs.tables.values(), symbolic)):
        title = f"Level-2 equation {sym}"
        if i == 0:
            title = f"Level-1 equation {spec.level1_equation()}\n{title}"
        show = tab.drop(columns=["Fixed effect"])
        smry.add_df(show, float_format=float_format, title=title)
