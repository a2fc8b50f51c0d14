"""Three-level (HLM3-style) model specification.

Raudenbush & Bryk's three-level model, for rows i in level-2 units j (classes)
in level-3 units k (schools)::

    level 1:  y_ijk   = sum_p pi_pjk a_pijk + e_ijk
    level 2:  pi_pjk  = sum_q beta_pqk X_qjk + r_pjk        (r_jk ~ N(0, T_pi))
    level 3:  beta_pqk = sum_s gamma_pqs W_sk + u_pqk        (u_k ~ N(0, T_beta))

with a_0 = X_0 = W_0 = 1.  Substituting gives one mixed model: every triple
(p, q, s) is the fixed effect ``W_s:X_q:a_p`` with coefficient gamma_pqs; the
random level-1 coefficients (``random[inner]``) vary over classes, the term
``(a_p ... | outer:inner)``; the random level-2 coefficients beta_pq
(``random[outer]``) vary over schools, the term ``(X_q:a_p ... | outer)``.
:func:`from_levels3` composes that formula, checks that level-2 predictors
are constant within classes and level-3 predictors within schools, and keeps
the map from fixed effects to gammas for :func:`level_equations3`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from ..crosslevel import Level2Error, check_constant_within
from ..data import formula_variables, nonfinite_rows
from ..levels import LevelSpecError, _normalise_name, _parse_level2, _term_codes, _term_name

if TYPE_CHECKING:
    from .results import MultilevelResults

__all__ = ["ThreeLevelSpec", "from_levels3", "level_equations3"]


@dataclass(frozen=True)
class ThreeLevelSpec:
    """A three-level specification and the gamma of every fixed effect.

    Attributes
    ----------
    response, level1 : str
    groups : tuple of str          (outer, inner)
    gammas : tuple of (name, p, q, s)
        Each fixed effect's column name with the level-1 coefficient ``p``,
        the level-2 predictor ``q`` and the level-3 predictor ``s`` it is the
        gamma of (``"Intercept"`` for the constant of an equation).
    random : dict
        ``{inner: level-1 coefficients, outer: level-2 coefficients}``.
    formula : str
        The composed mixed-model formula.
    """

    response: str
    level1: str
    groups: tuple[str, str]
    gammas: tuple[tuple[str, str, str, str], ...]
    random: dict
    formula: str


def _check_constant(frame: pd.DataFrame, rhs: str, groups: list[str], what: str, env: Any,
                    unit: str) -> None:
    from patsy import dmatrix

    X = dmatrix("~ " + rhs, frame, return_type="dataframe", NA_action="raise", eval_env=env)
    g = frame[groups[0]].astype(str) if len(groups) == 1 else None
    key = "__unit__"
    check = X.copy()
    if g is None:
        check[key] = pd.factorize(pd.MultiIndex.from_frame(frame[groups]))[0]
    else:
        check[key] = frame[groups[0]].to_numpy()
    for col in X.columns:
        if col == "Intercept":
            continue
        try:
            check_constant_within(check, col, key, atol=1e-10)
        except Level2Error as exc:
            raise Level2Error(f"{what} predictor {col!r} must be constant within each {unit}, "
                              f"but it is not: {exc}", column=col, group_ids=exc.group_ids,
                              n_groups=exc.n_groups) from None


def from_levels3(cls: Any, *, level1: str, level2: Mapping[str, str] | None,
                 level3: Mapping[str, str] | None, groups: Sequence[str],
                 random: Mapping[str, Sequence[str]] | None = None, data: pd.DataFrame,
                 correlated: bool = True, missing: str = "drop", eval_env: int = 0,
                 **kwargs: Any):
    """Build a three-level model from its level-1, level-2 and level-3 equations.

    Parameters
    ----------
    level1
        ``"y ~ x"``: the level-1 coefficients pi_p (intercept first).
    level2
        ``{level-1 coefficient: "~ level-2 predictors"}``; a coefficient
        without one has only beta_p0.
    level3
        ``{level-2 coefficient: "~ level-3 predictors"}``, keyed by the
        level-2 coefficient's fixed-effect name: ``"Intercept"`` (beta_00),
        ``"tq"`` (beta_01, tq on the intercept), ``"x"`` (beta_10),
        ``"tq:x"`` (beta_11); default ``"~ 1"``.
    groups
        ``[outer, inner]``: the level-3 and the level-2 grouping columns
        (class labels may repeat across schools).
    random
        ``{inner: [level-1 coefficients], outer: [level-2 coefficients]}``;
        default a random intercept at both levels.
    data, correlated, missing, eval_env, **kwargs
        As :func:`sm_hlm.levels.from_levels`.

    Returns
    -------
    MultilevelHLM
        With ``model.levels`` a :class:`ThreeLevelSpec`.
    """
    from patsy import INTERCEPT, EvalEnvironment, ModelDesc, PatsyError

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if (isinstance(groups, str) or not isinstance(groups, Sequence) or len(groups) != 2
            or not all(isinstance(g, str) for g in groups)):
        raise TypeError("groups must be [outer, inner], the level-3 and level-2 grouping "
                        f"column names, got {groups!r}")
    outer, inner = groups
    for g in groups:
        if g not in data.columns:
            raise KeyError(f"grouping column {g!r} is not in the data")
    env = EvalEnvironment.capture(eval_env + 1)
    try:
        desc1 = ModelDesc.from_formula(level1)
    except PatsyError as exc:
        raise LevelSpecError(f"cannot parse level1 {level1!r}: {exc}") from exc
    if "|" in level1 or len(desc1.lhs_termlist) != 1:
        raise LevelSpecError(f"level1 ({level1!r}) must be 'response ~ predictors' without "
                             "(x | g) terms")
    response = ":".join(_term_codes(desc1.lhs_termlist[0]))
    l1 = sorted((_term_codes(t) for t in desc1.rhs_termlist), key=lambda c: len(c) != 0)
    coefs = [_term_name(c) for c in l1]
    has_icpt = INTERCEPT in desc1.rhs_termlist
    # level 2: beta_pq = (p, q) pairs; their names are the composed two-level terms
    l2 = {}
    for key, value in (level2 or {}).items():
        name = _normalise_name(key, "level2")
        if name not in coefs:
            raise LevelSpecError(f"a level-2 equation names {key!r}, which is not a level-1 "
                                 f"coefficient; the level-1 coefficients are {coefs}")
        l2[name] = _parse_level2(name, value)
    betas: list[tuple[str, str, tuple[str, ...]]] = []        # (p, q, codes of X_q:a_p)
    for c1, p in zip(l1, coefs):
        _, l2codes, _ = l2.get(p, ("1", [()], True))
        for c2 in l2codes:
            if set(c2) & set(c1):
                raise LevelSpecError(f"level-2 predictor {_term_name(c2)!r} of {p!r} repeats "
                                     "a level-1 variable")
            betas.append((p, _term_name(c2), tuple(c2) + tuple(c1)))
    beta_names = {_term_name(c): (p, q, c) for p, q, c in betas}
    l3 = {}
    for key, value in (level3 or {}).items():
        name = _normalise_name(key, "level3")
        if name not in beta_names:
            # an interaction may be written in either order (x:tq for tq:x)
            alt = [b for b, (_, _, c) in beta_names.items()
                   if set(c) == set(name.split(":")) and name != "Intercept"]
            if len(alt) != 1:
                raise LevelSpecError(f"a level-3 equation names {key!r}, which is not a "
                                     "level-2 coefficient; the level-2 coefficients are "
                                     f"{list(beta_names)}")
            name = alt[0]
        l3[name] = _parse_level2(name, value)
    fixed, seen = [], {}
    for bname, (p, q, c12) in beta_names.items():
        _, l3codes, _ = l3.get(bname, ("1", [()], True))
        for c3 in l3codes:
            if set(c3) & set(c12):
                raise LevelSpecError(f"level-3 predictor {_term_name(c3)!r} of {bname!r} "
                                     "repeats a lower-level variable")
            combined = tuple(c3) + tuple(c12)
            key = frozenset(combined)
            if key in seen:
                raise LevelSpecError(f"the fixed effect {_term_name(combined)!r} arises twice")
            seen[key] = (p, q, _term_name(c3))
            fixed.append(_term_name(combined) if combined else "1")
    if "1" not in fixed:
        fixed.insert(0, "0")
    random = dict(random or {inner: ["Intercept"] if has_icpt else [],
                             outer: ["Intercept"] if has_icpt else []})
    unknown = set(random) - {inner, outer}
    if unknown:
        raise LevelSpecError(f"random is keyed by the grouping columns {[outer, inner]}, got "
                             f"{sorted(unknown)}")
    bar = "|" if correlated else "||"
    parts = [f"{response} ~ " + " + ".join(fixed)]
    for g, allowed, fac in ((inner, coefs, f"{outer}:{inner}"), (outer, list(beta_names),
                                                                   outer)):
        names = []
        for r in random.get(g, []):
            nm = _normalise_name(r, "random")
            if nm not in allowed:
                what = "level-1" if g == inner else "level-2"
                raise LevelSpecError(f"random[{g!r}] names {r!r}, which is not a {what} "
                                     f"coefficient; they are {allowed}")
            names.append(nm)
        if names:
            terms = ["1" if n == "Intercept" else n for n in names]
            if "Intercept" not in names:
                terms.insert(0, "0")
            parts.append(f"({' + '.join(terms)} {bar} {fac})")
    formula = " + ".join(parts)
    # predictors constant within their units, on the rows the model keeps
    used = {c for c in formula_variables(parts[0]) | {outer, inner} if c in data.columns}
    bad = nonfinite_rows({c: data[c] for c in used})
    frame = data.reset_index(drop=True)
    if bad:
        frame = frame.loc[~np.logical_or.reduce(list(bad.values()))]
    for p, (rhs, _, _) in l2.items():
        _check_constant(frame, rhs, [outer, inner], f"level-2 (equation of {p!r})", env,
                        f"unit of {outer}:{inner}")
    for b, (rhs, _, _) in l3.items():
        _check_constant(frame, rhs, [outer], f"level-3 (equation of {b!r})", env,
                        f"unit of {outer}")
    from ..formula.engines import using_engine
    with using_engine("patsy"):          # the gamma map reads patsy's term slices
        model = cls.from_formula(formula, data, missing=missing, eval_env=eval_env + 1,
                                 **kwargs)
    cols = []
    for term, sl in model.fixed_design_info.term_slices.items():
        key = frozenset(_term_codes(term))
        p, q, s = seen[key]
        for name in model.fixed_design_info.column_names[sl]:
            cols.append((name, p, q, s))
    model.levels = ThreeLevelSpec(response, level1, (outer, inner), tuple(cols),
                                  {k: list(v) for k, v in random.items()}, formula)
    return model


def level_equations3(results: "MultilevelResults") -> dict[str, pd.DataFrame]:
    """One gamma table per level-2 coefficient beta_pq: the level-3 predictors' gammas.

    Returns ``{"beta(p; q)": DataFrame}`` with Coef., Std.Err., z, P>|z| per
    level-3 predictor s (rows ``gamma_pqs``).
    """
    spec = getattr(results.model, "levels", None)
    if not isinstance(spec, ThreeLevelSpec):
        raise ValueError("level_equations() needs a model built by HLM.from_levels with "
                         "groups=[outer, inner] and level3=")
    est, se = results.fe_params, results.bse_fe
    out: dict[str, list] = {}
    for name, p, q, s in spec.gammas:
        z = est[name] / se[name]
        out.setdefault(f"beta({p}; {q})", []).append(
            {"level-3 predictor": s, "fixed effect": name, "Coef.": est[name],
             "Std.Err.": se[name], "z": z, "P>|z|": 2 * stats.norm.sf(abs(z))})
    return {k: pd.DataFrame(v).set_index("level-3 predictor") for k, v in out.items()}
