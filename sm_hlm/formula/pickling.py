"""Picklable state of patsy design information.

patsy's ``DesignInfo`` (and the factor, term and contrast objects inside it)
refuse to be pickled.  A formula model needs it to build the design of new
data (``predict``/``get_prediction`` on a DataFrame), so a pickled sm_hlm
model stores instead what the ``DesignInfo`` holds, as plain values:

* the column names;
* per factor: its code (e.g. ``"C(urbanicity, Treatment('urban'))"``), type,
  number of columns or categorical levels (the levels seen in the fitted
  data), and the memorised state of stateful transforms (``center(x)``
  keeps the mean of the fitted data, ``bs(x, df=4)`` its knots);
* per term: its factors and, per sub-term, the contrast matrices.

The names a factor's code refers to (``np``, ``log``, a user function) are
stored by reference: modules by name, patsy's builtins (``C``, ``center``...)
by name, other objects if they pickle.  An object that does not pickle (a
lambda) is recorded as missing; the design is rebuilt without data, and
building new rows through it raises an error naming the missing object.
"""
from __future__ import annotations

import pickle
import types
from typing import Any

__all__ = ["design_info_state", "design_info_from_state", "DesignState", "MissingNameError",
           "pickle_design", "unpickle_design"]


class MissingNameError(RuntimeError):
    """A name used by a formula could not be stored with the model."""


class _Missing:
    """Stand-in for an object that could not be pickled; fails when used."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingNameError(
            f"the formula uses {self.name!r}, which could not be stored with the pickled model "
            f"({self.reason}); define it at module level (importable) before fitting, or "
            "build the design yourself and pass arrays")

    __call__ = _fail

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._fail()


def _patsy_builtins() -> dict[str, Any]:
    from patsy.eval import _builtins_dict
    return _builtins_dict


def _store_value(name: str, value: Any) -> tuple[str, Any]:
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    builtins = _patsy_builtins()
    if name in builtins and builtins[name] is value:
        return ("patsy", name)
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:            # noqa: BLE001 - any pickling failure
        return ("missing", f"{type(value).__name__} does not pickle: {exc}")
    return ("value", value)


def _load_value(name: str, stored: tuple[str, Any]) -> Any:
    kind, payload = stored
    if kind == "module":
        import importlib
        return importlib.import_module(payload)
    if kind == "patsy":
        return _patsy_builtins()[payload]
    if kind == "missing":
        return _Missing(name, payload)
    return payload


def _factor_state(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in state.items() if k not in ("eval_env", "transforms")}
    # patsy's stateful transforms (Center, Standardize, BS, CR...) refuse pickling
    # too: keep their class and memorised attributes
    out["transforms"] = {name: (type(obj), dict(vars(obj)))
                         for name, obj in state.get("transforms", {}).items()}
    env = state.get("eval_env")
    names: dict[str, tuple[str, Any]] = {}
    if env is not None:
        ns = env.namespace
        for ns_dict in env._namespaces:
            for name in ns_dict:
                if name not in names:
                    names[name] = _store_value(name, ns[name])
    out["eval_env"] = names
    return out


def design_info_state(info: Any) -> dict[str, Any]:
    """Plain, picklable description of a patsy ``DesignInfo``."""
    if info is None:
        return None
    factors: dict[str, dict[str, Any]] = {}
    for factor, fi in info.factor_infos.items():
        code = getattr(factor, "code", None)
        if code is None:
            raise TypeError(f"cannot store the patsy factor {factor!r} (not a formula factor)")
        factors[code] = {"type": fi.type, "num_columns": fi.num_columns,
                         "categories": None if fi.categories is None else tuple(fi.categories),
                         "state": _factor_state(fi.state)}
    terms = []
    for term, subterms in info.term_codings.items():
        subs = []
        for st in subterms:
            subs.append({
                "factors": [f.code for f in st.factors],
                "contrasts": {f.code: (cm.matrix.copy(), list(cm.column_suffixes))
                              for f, cm in st.contrast_matrices.items()},
                "num_columns": int(st.num_columns)})
        terms.append({"factors": [f.code for f in term.factors], "subterms": subs})
    return {"column_names": list(info.column_names), "factors": factors, "terms": terms}


def design_info_from_state(state: dict[str, Any] | None) -> Any:
    """Rebuild the ``DesignInfo`` described by :func:`design_info_state`."""
    if state is None:
        return None
    from collections import OrderedDict

    from patsy.contrasts import ContrastMatrix
    from patsy.desc import Term
    from patsy.design_info import DesignInfo, FactorInfo, SubtermInfo
    from patsy.eval import EvalEnvironment, EvalFactor

    factor_objs = {code: EvalFactor(code) for code in state["factors"]}
    factor_infos = {}
    for code, f in state["factors"].items():
        fstate = dict(f["state"])
        transforms = {}
        for name, (cls, attrs) in fstate.pop("transforms").items():
            obj = cls.__new__(cls)
            obj.__dict__.update(attrs)
            transforms[name] = obj
        fstate["transforms"] = transforms
        env = {name: _load_value(name, v) for name, v in fstate.pop("eval_env").items()}
        fstate["eval_env"] = EvalEnvironment([env])
        factor_infos[factor_objs[code]] = FactorInfo(
            factor_objs[code], f["type"], fstate, num_columns=f["num_columns"],
            categories=f["categories"])
    term_codings = OrderedDict()
    for t in state["terms"]:
        term = Term([factor_objs[c] for c in t["factors"]])
        subs = []
        for st in t["subterms"]:
            cms = {factor_objs[c]: ContrastMatrix(m, suffixes)
                   for c, (m, suffixes) in st["contrasts"].items()}
            subs.append(SubtermInfo([factor_objs[c] for c in st["factors"]], cms,
                                    st["num_columns"]))
        term_codings[term] = subs
    return DesignInfo(state["column_names"], factor_infos=factor_infos,
                      term_codings=term_codings)


class DesignState:
    """A pickled ``DesignInfo`` (see :func:`pickle_design`)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state


def pickle_design(info: Any) -> Any:
    """``DesignInfo`` -> :class:`DesignState` (anything else unchanged)."""
    from patsy.design_info import DesignInfo
    return DesignState(design_info_state(info)) if isinstance(info, DesignInfo) else info


def unpickle_design(value: Any) -> Any:
    """:class:`DesignState` -> ``DesignInfo`` (anything else unchanged)."""
    return design_info_from_state(value.state) if isinstance(value, DesignState) else value
