"""Design matrices through statsmodels' formula engines (patsy or formulaic).

statsmodels 0.15 builds designs with its ``FormulaManager``, whose engine is
``statsmodels.formula.options.formula_engine`` (initialised from the
``SM_FORMULA_ENGINE`` environment variable; ``"patsy"`` or ``"formulaic"``),
and keeps the engine's description of the design (patsy's ``DesignInfo`` or
formulaic's ``ModelSpec``, statsmodels' ``model_spec``) to rebuild the design
on new data.  sm_hlm does the same for the fixed part and for the left side of
each ``(expr | group)`` term; the bars themselves are parsed by
:mod:`sm_hlm.formula.parse`.

The functions here take and return pandas frames whose ``design_info``
(patsy) or ``model_spec`` (formulaic) attribute is the spec; the rest of the
package reaches the spec only through :func:`frame_spec`,
:func:`build_from_spec`, :func:`spec_column_names` and :func:`spec_terms`.

With patsy, designs whose factors are all bare numeric columns are filled by
:mod:`sm_hlm.formula.fast` (the same values, column names and ``DesignInfo``
as patsy); formulaic designs are always built by formulaic.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["formula_engine", "using_engine", "design_matrices", "design_matrix", "frame_spec",
           "build_from_spec", "spec_column_names", "spec_terms"]

#: transforms whose meaning differs between the engines: name -> explanation
_DIFFERING = {
    "scale": "patsy's scale(x) is standardize(x) (sd with ddof=0) while formulaic's is R's "
             "scale (ddof=1); write standardize(x), which is the same in both engines",
}


def formula_engine() -> str:
    """The engine statsmodels would use now: ``"patsy"`` or ``"formulaic"``.

    Read from ``statsmodels.formula.options.formula_engine`` through
    ``FormulaManager`` (so ``SM_FORMULA_ENGINE``, or assigning the option, selects
    it, and an engine that is not installed raises statsmodels' error).
    """
    from statsmodels.formula._manager import FormulaManager
    return FormulaManager().engine


@contextmanager
def using_engine(engine: str) -> Iterator[None]:
    """Set ``statsmodels.formula.options.formula_engine`` inside a ``with`` block.

    Used where sm_hlm's own code depends on patsy's term objects
    (``HLM.from_levels``); the previous engine is restored on exit.  The option
    is process-wide, as statsmodels' is.
    """
    import statsmodels.formula as sm_formula
    before = sm_formula.options.formula_engine
    sm_formula.options.formula_engine = engine
    try:
        yield
    finally:
        sm_formula.options.formula_engine = before


def _check_transforms(formula: str, engine: str) -> None:
    if engine != "formulaic":
        return
    for name, why in _DIFFERING.items():
        if re.search(rf"(?<![\w.]){name}\s*\(", formula):
            raise ValueError(f"the formula {formula!r} uses {name}(), which the formula engine "
                             f"'formulaic' (SM_FORMULA_ENGINE) computes differently: {why}")


def _context(eval_env: Any) -> dict[str, Any]:
    """formulaic's context (a dict) from a patsy ``EvalEnvironment`` (inner names win)."""
    namespaces = getattr(eval_env, "_namespaces", None)
    if namespaces is None:
        return dict(eval_env) if isinstance(eval_env, dict) else {}
    out: dict[str, Any] = {}
    for ns in reversed(list(namespaces)):
        out.update(ns)
    return out


def _formulaic(formula: str, frame: pd.DataFrame, eval_env: Any) -> Any:
    from statsmodels.formula._manager import FormulaManager
    _check_transforms(formula, "formulaic")
    return FormulaManager("formulaic").get_matrices(formula, frame, eval_env=_context(eval_env),
                                                    pandas=True, na_action="raise")


def _as_frame(mat: Any, index: pd.Index) -> pd.DataFrame:
    """formulaic's ModelMatrix as a float DataFrame carrying ``model_spec``."""
    spec = mat.model_spec
    df = pd.DataFrame(np.asarray(mat, dtype=float), columns=list(map(str, mat.columns)),
                      index=index)
    df.model_spec = spec
    return df


def design_matrices(formula: str, frame: pd.DataFrame, *, eval_env: Any,
                    columns: Mapping[str, pd.Series] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Response and fixed design of ``"y ~ rhs"`` on ``frame`` (missing values raise).

    ``columns`` optionally holds some of ``frame``'s columns already taken out of it
    (name -> Series), which the direct numeric path reads instead of the frame's.
    """
    if formula_engine() == "patsy":
        from .fast import dmatrices_fast
        return dmatrices_fast(formula, frame, eval_env=eval_env, columns=columns)
    y, X = _formulaic(formula, frame, eval_env)
    return _as_frame(y, frame.index), _as_frame(X, frame.index)


def design_matrix(rhs: str, frame: pd.DataFrame, *, eval_env: Any,
                  columns: Mapping[str, pd.Series] | None = None) -> pd.DataFrame:
    """Design of a right-hand side (``"1 + ses"``) on ``frame`` (missing values raise).

    ``columns`` as for :func:`design_matrices`.
    """
    if formula_engine() == "patsy":
        from .fast import dmatrix_fast
        return dmatrix_fast(rhs, frame, eval_env=eval_env, columns=columns)
    return _as_frame(_formulaic("~ " + rhs, frame, eval_env), frame.index)


def frame_spec(df: pd.DataFrame) -> Any:
    """The spec of a design made here: patsy ``DesignInfo`` or formulaic ``ModelSpec``."""
    # the attribute set on the frame lives in its __dict__: read there first (pandas'
    # attribute lookup searches the column labels before failing)
    own = getattr(df, "__dict__", {})
    spec = own.get("model_spec")
    if spec is None:
        spec = own.get("design_info")
    if spec is None:
        spec = getattr(df, "model_spec", None)
    return spec if spec is not None else df.design_info


def _is_formulaic(spec: Any) -> bool:
    return type(spec).__module__.startswith("formulaic")


def build_from_spec(spec: Any, data: pd.DataFrame) -> pd.DataFrame:
    """The design described by ``spec`` on new ``data`` (float DataFrame; NaN raises)."""
    if _is_formulaic(spec):
        try:
            mat = spec.get_model_matrix(data, na_action="raise", output="pandas")
        except Exception as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, NameError):
                from .pickling import MissingNameError
                raise MissingNameError(
                    f"{cause}: a function or variable the formula uses could not be stored "
                    "with the model (formulaic's ModelSpec does not keep the formula's "
                    "namespace through pickling) and is not a column of the new data; add it "
                    "as a column, or predict in the session that defined it") from exc
            raise
        return pd.DataFrame(np.asarray(mat, dtype=float), columns=list(map(str, mat.columns)),
                            index=data.index)
    from patsy import build_design_matrices
    (out,) = build_design_matrices([spec], data, NA_action="raise", return_type="dataframe")
    return out


def spec_column_names(spec: Any) -> list[str]:
    """Column names of the design described by ``spec``."""
    return [str(c) for c in spec.column_names]


def spec_terms(spec: Any) -> list[tuple[str, slice, frozenset[str]]]:
    """(term name, column slice, factor names) of each term, in column order.

    The intercept has no factors (and its name is ``"Intercept"``).
    """
    out = []
    for term, sl in spec.term_slices.items():
        if _is_formulaic(spec):
            factors = frozenset(str(f.expr) for f in term.factors if str(f.expr) != "1")
            name = str(term)
        else:
            factors = frozenset(f.name() for f in term.factors)
            name = term.name()
        out.append(("Intercept" if not factors else name, sl, factors))
    return out
