"""The HLM model class: two-level linear mixed models by ML and REML.

    y_j = X_j beta + Z_j b_j + e_j,   b_j ~ N(0, Psi),   e_j ~ N(0, sigma^2 I),

for independent groups j = 1..m.  ``HLM`` follows statsmodels'
``LikelihoodModel`` conventions (and ``MixedLM``'s signature); its
``from_formula`` also accepts lme4's ``(expr | group)`` terms.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import lapack
from statsmodels.base.data import ModelData, PandasData
from statsmodels.base.model import LikelihoodModel

from . import groupwise
from .data import (ScopeNames, check_columns, check_numeric_response, factorize_groups,
                   group_order, handle_missing)
from .design import RandomEffectsDesign, RandomEffectsTerm
from .engine.deviance import (ProfiledDeviance, SufficientStats, constant_columns,
                               working_stats)
from .exceptions import IdentificationError, SingularFitWarning, ConvergenceWarning
from ._compat import require_nlopt
from .formula.parse import RandomTermSpec, parse_formula
from .engine.linalg import aliased_columns, group_crossprod
from .engine.optimizer import minimize_deviance
from .keywords import _MIXEDLM_FIT_KEYWORDS, _MIXEDLM_MODEL_KEYWORDS, _unknown_keywords

__all__ = ["HLM"]


def _as_2d_frame(x: Any, default_prefix: str) -> pd.DataFrame | np.ndarray:
    if isinstance(x, pd.Series):
        return x.to_frame()
    if isinstance(x, pd.DataFrame):
        return x
    arr = np.asarray(x)
    return arr[:, None] if arr.ndim == 1 else arr


def _weight_columns(data: pd.DataFrame, kwargs: dict[str, Any]
                    ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Weight columns of ``from_formula``: names checked, arrays added as columns.

    Returns the data (with array weights added under their role's name) and
    ``{"weights": column, "survey0": column, ...}``.
    """
    out: dict[str, str] = {}
    specs: list[tuple[str, Any, str]] = []
    if kwargs.get("weights") is not None:
        specs.append(("weights", kwargs["weights"], "weights"))
    sw = kwargs.get("survey_weights")
    if sw is not None:
        if isinstance(sw, str) or not isinstance(sw, Sequence):
            raise TypeError("survey_weights must be a list with one weight column (name or "
                            "array) per level, level 1 first: e.g. ['w_student', 'w_school']")
        specs += [(f"survey{k}", v, f"survey_weight_{k + 1}") for k, v in enumerate(sw)]
    for role, v, default in specs:
        if isinstance(v, str):
            check_columns([v], data, what="weights")
            out[role] = v
        else:
            arr = np.asarray(v)
            if arr.ndim != 1 or len(arr) != len(data):
                raise ValueError(f"{role} weights have shape {arr.shape} but data has "
                                 f"{len(data)} rows")
            name = str(getattr(v, "name", None) or default)
            if name in data.columns:
                name = f"__{name}__"
            data = data.assign(**{name: arr})
            out[role] = name
    return data, out


class _FrameData(PandasData):
    """statsmodels' :class:`~statsmodels.base.data.PandasData` for a response Series and
    a design DataFrame, converted with ``to_numpy`` (the same arrays as ``np.asarray``,
    without pandas' per-call dtype bookkeeping of ``DataFrame.__array__``)."""

    def _convert_endog_exog(self, endog: Any, exog: Any = None) -> tuple[Any, Any]:
        if not (isinstance(endog, pd.Series) and isinstance(exog, pd.DataFrame)):
            return super()._convert_endog_exog(endog, exog)
        yarr = endog.to_numpy()
        if yarr.dtype == object:
            raise ValueError("Pandas data cast to numpy dtype of object. "
                             "Check input data with np.asarray(data).")
        return ModelData._convert_endog_exog(self, yarr, exog.to_numpy(dtype=float))


class HLM(LikelihoodModel):
    """Two-level hierarchical linear (linear mixed-effects) model.

    Parameters
    ----------
    endog : array_like, shape (n,)
        The response.
    exog : array_like, shape (n, p)
        Fixed-effects design X (include a constant column yourself, as in
        statsmodels).
    groups : array_like, shape (n,)
        Group labels (the level-2 units).
    exog_re : array_like, shape (n, q), optional
        Random-effects design Z.  Defaults to a random intercept.
    re_terms : sequence of RandomEffectsTerm, optional
        How Z's columns split into independent blocks (one correlated block
        of all columns when omitted).  Built by :meth:`from_formula`.
    missing : {"none", "raise", "drop"}
        NaN/inf handling.  "none" and "raise" raise an error naming the
        column; "drop" drops the rows and warns with their number.
    residual : ResidualStructure, optional
        Covariance of the within-group errors (:mod:`sm_hlm.residual`):
        ``AR1(time=...)``, ``ContinuousAR1``, ``Exchangeable``,
        ``Unstructured(position=...)``, ``Heteroscedastic(by=...)`` and their
        products; independent errors by default.  With this constructor its
        variables are arrays aligned with the rows (``AR1(time=t)``);
        :meth:`from_formula` also accepts column names.
    weights : array_like, shape (n,), optional
        Precision weights (lme4's ``weights``): the residual variance of row
        i is sigma^2 / w_i.  Finite and positive; NaN rows are dropped under
        ``missing="drop"``.
    survey_weights : sequence of two array_like, optional
        Sampling weights by pseudo-maximum likelihood: the level-1 weights
        (of each row, conditional on its group) then the level-2 weights
        (constant within each group).  ML only; standard errors are the
        sandwich estimator clustered by group (see :mod:`sm_hlm.weights`).
    weight_scaling : {"size", "effective", "gk", "none"}
        Scaling of the survey weights (Stata's ``pwscale``); default
        ``"size"``: level-1 weights sum to the group's row count.

    Notes
    -----
    Marginally y_j ~ N(X_j beta, V_j) with V_j = Z_j Psi Z_j' + sigma^2 R_j
    (R_j = I by default).  Writing Psi = sigma^2 Lambda Lambda' (Lambda lower
    triangular, block diagonal over terms), the optimiser works on the free
    entries theta of Lambda (and the residual structure's parameters); beta
    and sigma^2 are profiled out (see :mod:`sm_hlm.engine.deviance` and
    :mod:`sm_hlm.whitening`).  Estimates match lme4's ``lmer`` (and nlme's
    ``lme``/``gls`` with a residual structure).
    """

    _formula_max_endog = 1

    def __init__(self, endog: Any, exog: Any, groups: Any, exog_re: Any = None, *,
                 re_terms: Sequence[RandomEffectsTerm] | None = None,
                 missing: str = "none", residual: Any = None, hasconst: bool | None = None,
                 weights: Any = None, survey_weights: Sequence[Any] | None = None,
                 weight_scaling: str = "size", **kwargs: Any):
        if kwargs:
            raise TypeError(_unknown_keywords("HLM()", kwargs, _MIXEDLM_MODEL_KEYWORDS))
        if groups is None:
            raise TypeError("groups is required: the group label of every row")
        if isinstance(groups, str):
            raise TypeError(f"groups={groups!r} is a column name; pass the column itself, or use "
                            "HLM.from_formula(..., groups=...) with a DataFrame")
        n = len(endog) if hasattr(endog, "__len__") else 0
        if n == 0:
            raise ValueError("empty data: the response has no rows")
        if exog is None:
            raise TypeError("exog is required (use a column of ones for an intercept-only model)")
        exog = _as_2d_frame(exog, "x")
        if exog_re is None:
            exog_re = (pd.DataFrame({"Intercept": np.ones(n)}, index=getattr(exog, "index", None))
                       if isinstance(exog, pd.DataFrame) else np.ones((n, 1)))
        exog_re = _as_2d_frame(exog_re, "z")
        lengths = {"endog": n, "exog": len(exog), "groups": len(groups), "exog_re": len(exog_re)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"inputs differ in length: {lengths}")
        endog_name = getattr(endog, "name", None) or "endog"
        check_numeric_response(endog if hasattr(endog, "dtype") else np.asarray(endog), str(endog_name))
        index = getattr(endog, "index", None)
        from .residual import as_structure
        from .weights import WEIGHT_SCALINGS, check_infinite
        residual = as_structure(residual)
        res_vals = {} if residual is None else {
            f"residual {role}": v for role, v in residual.values(n).items()}
        if weights is not None and survey_weights is not None:
            raise ValueError("give either precision weights (weights=) or survey weights "
                             "(survey_weights=), not both")
        if weight_scaling not in WEIGHT_SCALINGS:
            raise ValueError(f"weight_scaling={weight_scaling!r}: use one of "
                             f"{list(WEIGHT_SCALINGS)}")
        w_vals: dict[str, Any] = {}
        if weights is not None:
            w_vals["weights"] = weights
        if survey_weights is not None:
            if isinstance(survey_weights, str) or not isinstance(survey_weights, Sequence):
                raise TypeError("survey_weights must be a list of one weight array per level "
                                "(level 1 first), e.g. [w_student, w_school]")
            sw_names = [str(getattr(v, "name", None) or f"level {k + 1}")
                        for k, v in enumerate(survey_weights)]
            w_vals.update({f"survey weight {nm!r}": v
                           for nm, v in zip(sw_names, survey_weights)})
        for name, v in w_vals.items():
            if len(v) != n:
                raise ValueError(f"{name} has {len(v)} values but the response has {n} rows")
            check_infinite(v, name)
        keep = handle_missing({str(endog_name): endog, "exog": exog, "groups": groups,
                               "exog_re": exog_re, **res_vals, **w_vals}, missing, index=index)
        self.n_dropped = 0 if keep is None else int((~keep).sum())
        if keep is not None:
            def take(a: Any) -> Any:
                return a[keep] if isinstance(a, (pd.Series, pd.DataFrame)) else np.asarray(a)[keep]
            endog, exog, groups, exog_re = take(endog), take(exog), take(groups), take(exog_re)
            residual = residual.subset(keep) if residual is not None else None
            weights = None if weights is None else take(weights)
            survey_weights = (None if survey_weights is None
                              else [take(v) for v in survey_weights])
            if len(endog) == 0:
                raise ValueError("empty data: no rows left after dropping missing values")
        super().__init__(endog, exog, groups=groups, exog_re=exog_re, missing="none",
                         hasconst=hasconst)
        self.exog = np.asarray(self.exog, dtype=float)
        self.endog = np.asarray(self.endog, dtype=float)
        self.exog_re = (self.exog_re.to_numpy(dtype=float) if isinstance(self.exog_re, pd.DataFrame)
                        else np.asarray(self.exog_re, dtype=float))
        if isinstance(exog_re, pd.DataFrame):
            self.exog_re_names = [str(c) for c in exog_re.columns]
        else:
            # unnamed columns: a column of ones is the intercept, the others z0, z1, ...
            self.exog_re_names = ["Intercept" if np.all(col == 1.0) else f"z{i}"
                                  for i, col in enumerate(self.exog_re.T)]
        self.group_name = str(getattr(groups, "name", None) or "group")
        if re_terms is None:
            re_terms = ([RandomEffectsTerm(self.group_name, tuple(self.exog_re_names))]
                        if self.exog_re.shape[1] else [])
        self.re_design = RandomEffectsDesign(re_terms)
        if self.re_design.q != self.exog_re.shape[1]:
            raise ValueError(f"re_terms describe {self.re_design.q} columns but exog_re has "
                             f"{self.exog_re.shape[1]}")
        self.data.param_names = list(self.exog_names) + self.re_design.vcomp_names()
        codes, labels, starts, is_sorted = factorize_groups(self.groups)
        self.group_codes = codes
        self.group_labels = labels
        self.n_groups = len(labels)
        self.k_fe = self.exog.shape[1]
        self.k_re = self.re_design.q
        self.nobs = float(len(self.endog))
        self.df_model = self.k_fe - 1 if self.k_constant else self.k_fe
        self.df_resid = self.nobs - self.k_fe
        # rows sorted by group (the common layout) need no permutation; otherwise a
        # counting sort by the codes (:attr:`_order`)
        self._sorted = is_sorted
        self._starts = starts
        self._set_weights(weights, survey_weights, weight_scaling)
        self._work, self._reparam, self._work_q = self._working_stats()
        self._check_identifiable()
        #: the residual structure (None: independent errors, the plain path)
        self.residual = None if residual is None or residual.is_independent else residual
        self._residual_kernel = None
        if self.residual is not None and self.weight_type is not None:
            raise NotImplementedError("weights with a residual structure are not supported yet")
        if self.residual is not None:
            from .whitening import ResidualKernel
            self._residual_kernel = ResidualKernel(self, self.residual)

    def _handle_data(self, endog: Any, exog: Any, missing: str, hasconst: bool | None,
                     **kwargs: Any) -> Any:
        """statsmodels' data handling; a Series and a DataFrame (the formula path) as
        :class:`_FrameData` (a :class:`~statsmodels.base.data.PandasData`)."""
        if not (isinstance(endog, pd.Series) and isinstance(exog, pd.DataFrame)):
            return super()._handle_data(endog, exog, missing, hasconst, **kwargs)
        data = _FrameData(endog, exog=exog, missing=missing, hasconst=hasconst, **kwargs)
        for key in kwargs:          # the extra arrays move to the model, as statsmodels does
            if key not in ("model_spec", "formula") and key in data.__dict__:
                setattr(self, key, data.__dict__.pop(key))
        return data

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """patsy's DesignInfo does not pickle: the fixed design is stored as its
        plain description (:mod:`sm_hlm.formula.pickling`) and rebuilt on load."""
        from .formula.pickling import pickle_design
        d = dict(self.__dict__)
        if "fixed_design_info" in d:
            d["fixed_design_info"] = pickle_design(d["fixed_design_info"])
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        from .formula.pickling import unpickle_design
        if "fixed_design_info" in d:
            d = dict(d)
            d["fixed_design_info"] = unpickle_design(d["fixed_design_info"])
        self.__dict__.update(d)

    @property
    def model_spec(self) -> Any:
        """The fixed part's design spec, as statsmodels' ``model_spec``: patsy's
        ``DesignInfo`` or formulaic's ``ModelSpec`` (the engine of
        ``statsmodels.formula.options.formula_engine`` when the model was made;
        None without a formula)."""
        return self.__dict__.get("fixed_design_info")

    # --------------------------------------------------------------- weights
    def _set_weights(self, weights: Any, survey_weights: Sequence[Any] | None,
                     scaling: str) -> None:
        """Check the weights and keep them (see :mod:`sm_hlm.weights`)."""
        from .weights import check_weights, survey_weights as make_survey
        n = len(self.endog)
        #: precision weights (n,) in row order, or None
        self.weights = None if weights is None else check_weights(weights, "weights", n)
        #: survey weights (:class:`sm_hlm.weights.SurveyWeights`), or None
        self.survey = None
        if survey_weights is not None:
            names = [str(getattr(v, "name", None) or f"level {k + 1}")
                     for k, v in enumerate(survey_weights)]
            self.survey = make_survey([np.asarray(v) for v in survey_weights],
                                      self.group_codes, self.group_labels, scaling=scaling,
                                      names=names, group_name=self.group_name)
        self.weight_scaling = scaling if self.survey is not None else None
        #: None, "precision" or "survey"
        self.weight_type = ("precision" if self.weights is not None else
                            "survey" if self.survey is not None else None)

    def _row_weights_sorted(self) -> np.ndarray | None:
        """Row multipliers of the squared residuals (precision or scaled w_{i|j}), sorted."""
        if self.weights is not None:
            return self._sorted_rows(self.weights)
        if self.survey is not None:
            return self._sorted_rows(self.survey.row)
        return None

    def _group_weights(self) -> np.ndarray | None:
        """Scaled group-level survey weights (m,), or None."""
        return None if self.survey is None else self.survey.group

    # ------------------------------------------------------------------ data
    @functools.cached_property
    def group_sizes(self) -> pd.Series:
        """Rows of each group (``"nobs"``), indexed by the group labels."""
        counts = np.diff(np.append(self._starts, len(self.group_codes)))
        return pd.Series(counts, index=self.group_labels, name="nobs")

    @functools.cached_property
    def _order(self) -> np.ndarray:
        """The stable permutation sorting the rows by group (a counting sort by the codes)."""
        if self._sorted:
            return np.arange(int(self.nobs))
        return group_order(self.group_codes, self.n_groups)      # computed in __init__

    def _sorted_rows(self, a: np.ndarray) -> np.ndarray:
        return a if self._sorted else a[self._order]

    @functools.cached_property
    def _stats(self) -> SufficientStats:
        """Per-group cross products in the original coordinates (computed on first use)."""
        return self._sufficient_stats()

    def _sufficient_stats(self) -> SufficientStats:
        X = self._sorted_rows(self.exog)
        y = self._sorted_rows(self.endog)
        W = np.column_stack([X, y])
        Z = self._sorted_rows(self.exog_re)
        rw = self._row_weights_sorted()
        if rw is not None:                      # rows scaled by sqrt(w) (group weights: _work)
            W, Z = W * np.sqrt(rw)[:, None], Z * np.sqrt(rw)[:, None]
        ZtZ = group_crossprod(Z, Z, self._starts)
        ZtW = group_crossprod(Z, W, self._starts)
        w = self._work
        return SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=W.T @ W, nobs=len(y), k_fe=X.shape[1],
                               group_weights=w.group_weights, weight_nobs=w.weight_nobs,
                               log_weight_sum=w.log_weight_sum)

    def _working_stats(self):
        """The statistics in centred and scaled coordinates (see :mod:`sm_hlm.engine.deviance`)."""
        blocks, start = [], 0
        for t in self.re_design.terms:
            blocks.append((start, start + t.k, t.correlated and t.k > 1))
            start += t.k
        rw = (self.weights if self.weights is not None else
              None if self.survey is None else self.survey.row)     # row order, as the data
        #: which columns of X are constant and nonzero (:func:`constant_columns`)
        self._exog_const = constant_columns(self.exog)
        return working_stats(self.exog, self.endog, self.exog_re, self._starts, blocks,
                             precision_weights=rw if self.weight_type == "precision" else None,
                             survey_weights=(None if self.survey is None
                                             else [rw, self.survey.group]),
                             order=None if self._sorted else self._order,
                             x_const=self._exog_const)

    def _aliased_columns(self) -> list[int]:
        """Columns of X that R's ``qr(X, tol = 1e-7)`` (lme4's rank check) finds aliased.

        A column is aliased when the norm of its residual on the earlier
        columns is below 1e-7 of its own norm (columns centred when X has a
        constant column, so that the answer does not depend on where a
        predictor's zero is).  A Cholesky of the normalised
        cross product answers at once where every column is far from that line;
        otherwise a QR decomposition of the columns decides, as R does.
        """
        p = self.k_fe
        const = self.__dict__.get("_exog_const")
        if const is None or len(const) != p:
            const = constant_columns(self.exog)
        gram = self._work.column_gram
        if gram is not None and p and (not const.any() or (const[0] and not const[1:].any())):
            # the working statistics hold these columns' cross products already: centred
            # (the first column the constant) and scaled, so that a normalised Gram matrix
            # of the same columns answers without another pass over the rows
            # every column kept (squared residual on the earlier ones above 1e-10 of its
            # norm, far from R's 1e-14) exactly when the Cholesky exists with such pivots
            d = np.maximum(np.sqrt(np.diag(gram)[:p]), np.finfo(float).tiny)
            G = gram[:p, :p] / np.outer(d, d)
            L, info = lapack.dpotrf(G, lower=1)
            if info == 0 and all(l * l > 1e-10 * g for l, g in zip(np.diag(L).tolist(),
                                                                  np.diag(G).tolist())):
                return []
        return aliased_columns(self.exog)

    def _check_identifiable(self) -> None:
        """lme4's checks of levels and observations per term, and the response.

        As lme4's ``checkNlevels`` and ``checkZdims`` (their default "stop"
        levels): a grouping factor needs at least two levels and fewer levels
        than observations, and each random-effects term fewer random effects
        (columns x levels) than observations.
        """
        n, m, p = len(self.endog), self.n_groups, self.k_fe
        if self.re_design.q:
            if m < 2:
                raise IdentificationError(
                    f"only one group ({self.group_labels[0]!r}) in {self.group_name!r}: a "
                    "random-effects variance needs at least two groups (lme4: grouping factors "
                    "must have > 1 sampled level)")
            if m >= n:
                raise IdentificationError(
                    f"{m} levels of {self.group_name!r} for {n} observations: the number of "
                    "levels of a grouping factor must be less than the number of observations "
                    "(every group has one row, so the random effects and the residual cannot "
                    "be told apart; lme4 stops here too)")
            for t in self.re_design.terms:
                if n <= t.k * m:
                    raise IdentificationError(
                        f"{n} observations but {t.k * m} random effects for term {t.label()} "
                        f"({t.k} x {m} groups): the random-effects parameters and the residual "
                        "variance are not identifiable (lme4 stops here too)")
        if n <= p:
            raise IdentificationError(f"{n} observations for {p} fixed effects")
        y = self.endog
        yname = str(getattr(self, "endog_names", None) or "the response")
        if np.all(y == y[0]):
            raise IdentificationError(
                f"the response {yname!r} is constant (every value is {y[0]:g}): there is no "
                "variation to model")
        if self.re_design.q and p:
            # residual variance zero: y is fitted exactly by X and the groups' Z
            within = self._work.within
            wyy = max(within[p, p], np.finfo(float).tiny)
            exact = within[p, p] <= 1e-24 * self._work.WtW[p, p]
            # the residual sum of squares of y on X within groups: clearly away from zero
            # when the Cholesky factor of [X y]'s within cross product (columns without
            # within-group variation left out) ends in a pivot far above the test's
            # threshold; else least squares decides
            used = [i for i in range(p) if within[i, i] != 0.0] + [p]
            R, info = lapack.dpotrf(within[np.ix_(used, used)], lower=1)
            if exact or info != 0 or not R[-1, -1] ** 2 > 1e-10 * wyy:
                u = np.linalg.lstsq(within[:p, :p], within[:p, p], rcond=None)[0]
                rss = within[p, p] - within[p, :p] @ u
                exact = exact or rss <= 1e-12 * wyy
            # unbounded only when a within-group residual space is left (n > sum_j rank Z_j)
            rank = int((np.diagonal(self._work.root) > 0).sum())
            if exact and n > rank:
                raise IdentificationError(
                    f"the response {yname!r} is fitted exactly within the groups of "
                    f"{self.group_name!r} by the random-effects columns "
                    f"{list(self.re_design.names)} (and the fixed effects): the residual variance "
                    "is zero and the likelihood is unbounded; e.g. a response constant within "
                    "every group with a random intercept")
        aliased = self._aliased_columns()
        if aliased:
            names = [self.exog_names[i] for i in aliased]
            raise IdentificationError(
                f"the fixed-effects design is rank deficient: column(s) {names} are linear "
                "combinations of the columns before them (or constant); drop them")
        from .crosslevel import LEVEL2_ATOL, warn_level2_in_random
        # columns constant over all rows are intercepts, not group-level variables (a
        # prefix of the rows shows most columns vary)
        Zr, starts = self.exog_re, self._starts
        candidate = np.zeros(self.k_re, bool)
        if len(Zr):
            candidate = (Zr[:4096] != Zr[0]).any(axis=0)
            for k in np.flatnonzero(~candidate):             # constant over the prefix
                candidate[k] = not np.all(Zr[:, k] == Zr[0, k])
        # a column that varies within some group is not a level-2 variable either: decided
        # from each group's range on the sorted rows, first those of the groups in a prefix
        # of them (a group cut short has a smaller range); only the others get the full check
        lim = min(len(Zr), 4096)
        head = slice(0, lim) if self._sorted else self._order[:lim]
        head_starts = starts[starts < lim]
        for k in np.flatnonzero(candidate):                  # the tiny q dimension
            for rows, st in ((head, head_starts), (None, starts)):
                z = Zr[rows, k] if rows is not None else self._sorted_rows(Zr[:, k])
                spread = np.maximum.reduceat(z, st) - np.minimum.reduceat(z, st)
                if np.any(spread > LEVEL2_ATOL):
                    candidate[k] = False
                    break
        re_cols = [c for c, v in zip(self.re_design.names, candidate) if v]
        if re_cols:
            frame = pd.DataFrame(self.exog_re[:, candidate], columns=re_cols)
            gname = self.group_name if self.group_name not in re_cols else "__group__"
            frame[gname] = self.group_codes
            warn_level2_in_random(frame, re_cols, gname, stacklevel=4)

    # --------------------------------------------------------------- formula
    @classmethod
    def from_formula(cls, formula: str, data: pd.DataFrame, subset: Any = None,
                     drop_cols: Any = None, *args: Any, groups: Any = None,
                     re_formula: str | None = None, vc_formula: dict[str, str] | None = None,
                     missing: str = "drop", eval_env: int = 0, **kwargs: Any) -> Any:
        """Create a model from an lme4- or statsmodels-style formula.

        Parameters
        ----------
        formula
            ``"y ~ x + (x | g)"`` (lme4), or ``"y ~ x"`` with ``groups`` and
            ``re_formula`` (statsmodels MixedLM).  ``(a || g)`` gives
            independent variances; ``(1 | g) + (0 + x | g)`` two independent
            blocks.
        data
            DataFrame holding every variable.
        groups
            Grouping column name (or array) when the formula has no bar term.
        re_formula
            Random-effects design (``"~ x"``; ``"1"`` by default, ``"0"`` for
            none) when the formula has no bar term.
        vc_formula
            statsmodels' nested variance components with ``groups``:
            ``{"klass": "0 + C(klass)"}`` is ``(1 | group:klass)`` (a
            :class:`~sm_hlm.multilevel.MultilevelHLM`).
        missing
            ``"drop"`` (default, as statsmodels' formulas) drops rows with
            NaN/inf in the variables used and warns how many; ``"raise"``.
        **kwargs
            Passed to the constructor, e.g. ``residual=AR1(time="wave")``,
            whose time/position/``by`` column names are looked up in
            ``data`` (rows dropped for missing values there too);
            ``weights="w"`` (precision weights), ``survey_weights=["w1",
            "w2"]`` and ``weight_scaling`` (see :class:`HLM`), as column
            names or arrays aligned with ``data``.

        Returns
        -------
        HLM, or :class:`sm_hlm.multilevel.MultilevelHLM` when the formula has
        more than one grouping factor (``(1 | school) + (1 | school:klass)``,
        ``(x | school/klass)``, crossed ``(1 | subj) + (1 | item)``), an
        interaction right of a bar, or ``vc_formula``.
        """
        from patsy import EvalEnvironment

        from .formula.engines import design_matrices, design_matrix, frame_spec

        if args:
            raise TypeError(f"HLM.from_formula() got {len(args)} unexpected positional "
                            "argument(s); pass options by keyword")
        if drop_cols is not None:
            raise TypeError("HLM.from_formula() does not support drop_cols: name the terms in "
                            "the formula instead")
        unknown = set(kwargs) - {"residual", "hasconst", "weights", "survey_weights",
                                 "weight_scaling"}
        if unknown:
            raise TypeError(_unknown_keywords("HLM.from_formula()",
                                              {k: kwargs[k] for k in unknown},
                                              _MIXEDLM_MODEL_KEYWORDS))
        if not isinstance(data, pd.DataFrame):
            from .scale.dask import from_dask, is_dask_collection
            if is_dask_collection(data):
                if (groups is not None or re_formula is not None or subset is not None
                        or vc_formula is not None):
                    raise NotImplementedError("with Dask data give the random effects as "
                                              "(expr | group) terms; groups=, re_formula=, "
                                              "vc_formula= and subset= are for pandas data")
                return from_dask(formula, data, missing="raise" if missing == "none" else missing,
                                 **kwargs)
            raise TypeError(f"data must be a pandas or Dask DataFrame, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("empty data: the DataFrame has no rows")
        parsed = parse_formula(formula)
        if (vc_formula is not None or len({s.group for s in parsed.random}) > 1
                or any(len(s.columns) > 1 for s in parsed.random)):
            from .multilevel import MultilevelHLM
            return MultilevelHLM.from_formula(formula, data, subset, groups=groups,
                                              re_formula=re_formula, vc_formula=vc_formula,
                                              missing=missing, eval_env=eval_env + 1, **kwargs)
        data, weight_cols = _weight_columns(data, kwargs)
        if subset is not None:
            data = data.loc[subset]
        specs = list(parsed.random)
        env = EvalEnvironment.capture(eval_env + 1)
        env_names = ScopeNames(env, (
            "C", "I", "Q", "center", "standardize", "scale", "bs", "cr", "cc", "te", "Treatment",
            "Sum", "Poly", "Diff", "Helmert", "np"))
        if specs:
            if re_formula is not None:
                raise ValueError("give random effects either as (expr | group) terms in the "
                                 "formula or with re_formula=, not both")
            gnames = {s.group for s in specs}
            if groups is not None and (not isinstance(groups, str) or {groups} != gnames):
                raise ValueError(f"groups={groups!r} disagrees with the formula's grouping "
                                 f"factor(s) {sorted(gnames)}")
            group_col = specs[0].group
        else:
            if groups is None:
                raise ValueError("no random effects: add an (expr | group) term to the formula "
                                 "or pass groups= (and re_formula=)")
            if isinstance(groups, str):
                group_col = groups
            else:
                garr = np.asarray(groups)
                if len(garr) != len(data):
                    raise ValueError(f"groups has {len(garr)} values but data has {len(data)} rows")
                group_col = "groups"
                data = data.assign(**{group_col: garr})
            rf = "1" if re_formula is None else re_formula.strip()
            rf = rf[1:].strip() if rf.startswith("~") else rf
            if rf not in ("0", "-1"):
                specs = [RandomTermSpec(expr=rf, group=group_col)]
        check_columns([group_col], data, what="grouping factor")
        from .residual import model_variables, resolve_structure, structure_columns
        used = model_variables(parsed.fixed_formula, specs, kwargs.get("residual"), data,
                               env_names)
        res_cols = structure_columns(kwargs.get("residual"))
        # the used columns in the data's order, each taken out of the frame once
        if data.columns.is_unique:
            data_cols = sorted((c for c in used if c in data.columns), key=data.columns.get_loc)
        else:
            data_cols = [c for c in data.columns if c in used]
        cols = {c: data[c] for c in data_cols}
        if parsed.response in cols:
            check_numeric_response(cols[parsed.response], parsed.response)
            if pd.api.types.is_bool_dtype(cols[parsed.response]):
                # a boolean response is the 0/1 outcome of a linear probability model, as
                # with arrays (patsy would code it as two indicator columns)
                data = data.assign(**{parsed.response: cols[parsed.response].astype(float)})
                cols[parsed.response] = data[parsed.response]
        if group_col not in cols:
            cols[group_col] = data[group_col]
        from .weights import check_infinite
        for c in weight_cols.values():
            check_infinite(data[c], f"weights {c!r}")
            cols[c] = data[c]
        keep = handle_missing(cols, "raise" if missing == "none" else missing, index=data.index)
        if keep is None:
            frame = data
        else:
            frame = data.loc[keep]
            cols = {c: frame[c] for c in cols}
        if len(frame) == 0:
            raise ValueError("empty data: no rows left after dropping missing values")
        y, X = design_matrices(parsed.fixed_formula, frame, eval_env=env, columns=cols)
        if y.shape[1] != 1:
            raise TypeError(f"the response {parsed.response!r} must be a single numeric column, "
                            f"the formula made {y.shape[1]} columns {list(y.columns)}")
        y = y[y.columns[0]]             # the one column (as y.iloc[:, 0], at a third of its cost)
        terms: list[RandomEffectsTerm] = []
        blocks = []
        for s in specs:
            Zs = design_matrix(s.expr, frame, eval_env=env, columns=cols)
            if Zs.shape[1] == 0:
                raise ValueError(f"random-effects term {s} has no columns")
            if s.correlated:
                terms.append(RandomEffectsTerm(s.group, tuple(map(str, Zs.columns)), True,
                                               s.expr, frame_spec(Zs)))
            else:
                for c in Zs.columns:
                    terms.append(RandomEffectsTerm(s.group, (str(c),), True, s.expr,
                                                   frame_spec(Zs)))
            blocks.append(Zs)
        if blocks:
            exog_re = blocks[0] if len(blocks) == 1 else pd.concat(blocks, axis=1)
        else:
            exog_re = pd.DataFrame(index=frame.index)
        g = cols[group_col]
        g.name = group_col
        if res_cols:
            kwargs["residual"] = resolve_structure(kwargs["residual"], frame)
        if "weights" in weight_cols:
            kwargs["weights"] = frame[weight_cols["weights"]].rename(weight_cols["weights"])
        if "survey_weights" in kwargs:
            kwargs["survey_weights"] = [frame[weight_cols[f"survey{k}"]]
                                        for k in range(len(kwargs["survey_weights"]))]
        mod = cls(y, X, g, exog_re, re_terms=terms, missing="none", **kwargs)
        mod.n_dropped = 0 if keep is None else int((~keep).sum())
        mod.formula = formula
        mod.parsed_formula = parsed
        mod.fixed_design_info = frame_spec(X)
        mod.re_specs = tuple(specs)
        mod.data.frame = data
        mod.row_index = frame.index
        return mod

    @classmethod
    def from_levels(cls, *, level1: str, level2: dict[str, str] | None = None, groups: str,
                    random: Sequence[str] | str | None = None, data: pd.DataFrame,
                    eval_env: int = 0, **kwargs: Any) -> "HLM":
        """Create a model from level-1 and level-2 (HLM-style) equations.

        ``HLM.from_levels(level1="mscore ~ ses", level2={"Intercept": "~ flp",
        "ses": "~ flp"}, groups="school", random=["Intercept", "ses"], data=d)``
        is ``mscore ~ 1 + flp + ses + flp:ses + (1 + ses | school)``.  The model
        keeps the specification in ``model.levels``; see
        :func:`sm_hlm.levels.from_levels` for every option.

        Three levels: ``groups=["school", "klass"]`` (outer first), ``level3=
        {level-2 coefficient: "~ school predictors"}`` and ``random={"klass":
        [...], "school": [...]}`` (see :func:`sm_hlm.multilevel.levels.from_levels3`).
        """
        if not isinstance(groups, str) or "level3" in kwargs:
            from .multilevel.levels import from_levels3
            return from_levels3(cls, level1=level1, level2=level2,
                                level3=kwargs.pop("level3", None), groups=groups,
                                random=random, data=data, eval_env=eval_env + 1, **kwargs)
        from .levels import from_levels
        return from_levels(cls, level1=level1, level2=level2, groups=groups, random=random,
                           data=data, eval_env=eval_env + 1, **kwargs)

    # ------------------------------------------------------------ likelihood
    def deviance_function(self, *, reml: bool = True,
                          residual_free: np.ndarray | None = None) -> ProfiledDeviance:
        """The profiled deviance of theta (see :mod:`sm_hlm.engine.deviance`).

        With a residual structure the deviance depends on the structure's
        parameters too: pass ``residual_free`` (e.g. ``results.fit_result.
        residual_free``) to get the deviance of the whitened data with them
        held fixed (it then omits the constant log|R|).
        """
        if self._residual_kernel is not None:
            if residual_free is None:
                raise NotImplementedError(
                    f"this model has the residual structure {self.residual!r}: its deviance "
                    "depends on the structure's parameters; deviance_function(residual_free="
                    "...) holds them fixed (e.g. at results.fit_result.residual_free)")
            return self._residual_kernel.deviance(np.asarray(residual_free, float), reml=reml)[0]
        rd = self.re_design
        return ProfiledDeviance(self._work, rd.lambda_, reml=reml, work=self._work,
                                reparam=self._reparam, theta_index=rd.lambda_index)

    def loglike(self, params: np.ndarray, *, reml: bool = False, scale: float | None = None) -> float:
        """Log-likelihood at ``params`` = fixed effects then variance components.

        ``scale`` (sigma^2) is profiled when omitted.  The variance components
        are the free entries of cov_re in the order of ``vcomp_names``.
        """
        params = np.asarray(params, dtype=float)
        p = self.k_fe
        beta, vc = params[:p], params[p:]
        cov = self.re_design.cov_from_vcomp(vc)
        dev = self.deviance_function(reml=reml)
        if scale is None:
            def f(s: float) -> float:
                return dev.deviance_at(self.re_design.theta_from_cov(cov, s), beta, s)
            from scipy.optimize import minimize_scalar
            res = minimize_scalar(lambda ls: f(np.exp(ls)), bracket=(-5, 5))
            scale = float(np.exp(res.x))
        theta = self.re_design.theta_from_cov(cov, scale)
        return -0.5 * dev.deviance_at(theta, beta, scale)

    # -------------------------------------------------------------------- fit
    def fit(self, start_params: np.ndarray | None = None, reml: bool = True, *,
            method: str = "auto", maxiter: int | None = None, maxeval: int = 100_000,
            ftol_abs: float | None = None, xtol_abs: float = 1e-8, disp: bool = False,
            compute_vcomp_cov: bool = True, cov_type: str | None = None, **kwargs: Any):
        """Fit by REML (default, as lme4 and MixedLM) or ML.

        Parameters
        ----------
        start_params
            Start for theta (the relative covariance factor's free entries,
            lme4's order); a start from the data's per-group moments when
            omitted.  With a residual structure: theta, or theta followed by
            the structure's unconstrained parameters (started from OLS
            residuals otherwise).
        reml
            REML when True, maximum likelihood when False (a bool).
        method
            ``"auto"`` (default): a projected BFGS method with the analytic
            gradient from the data-based start (scipy's L-BFGS-B continues
            where it stalls), and BOBYQA (NLopt; lme4's default) only when the
            convergence check fails there; ``"bobyqa"``: BOBYQA polished by
            the gradient method; ``"lbfgs"``: the gradient method alone.  With
            a residual structure ``"auto"`` and ``"bobyqa"`` are BOBYQA.
        maxiter
            statsmodels' name for the evaluation limit (``maxeval``).
        maxeval, ftol_abs, xtol_abs
            BOBYQA stopping rules; ``ftol_abs`` defaults to 1e-8, and to 1e-12
            with a residual structure (up to ~20 more parameters: BOBYQA's
            quadratic model otherwise stops before the gradient is small).
        disp
            Print the optimiser record.
        compute_vcomp_cov
            Compute standard errors of the variance components from the
            observed information (a numerical Hessian).
        cov_type
            Covariance of the fixed effects behind ``bse``, ``cov_params()``
            and the tests: ``"model"`` (lme4's vcov) or ``"sandwich"`` (Binder's
            linearization estimator clustered by group,
            :func:`sm_hlm.weights.sandwich_cov_fe`).  Default: ``"sandwich"``
            with survey weights, ``"model"`` otherwise.

        Returns
        -------
        HLMResultsWrapper

        Notes
        -----
        ``converged`` is True only when a scale-free, boundary-aware test of
        the first- and second-order conditions holds at the end point
        (:func:`sm_hlm.engine.optimizer.kkt_verdict`); otherwise a ConvergenceWarning
        says what failed.  The reported log-likelihood is recomputed from the
        residuals at the reported estimates before it is returned.
        """
        from .results import HLMResults, HLMResultsWrapper, build_fit

        if kwargs:
            raise TypeError(_unknown_keywords("fit()", kwargs, _MIXEDLM_FIT_KEYWORDS))
        require_nlopt()
        if not isinstance(reml, (bool, np.bool_)):
            raise TypeError(f"reml must be True or False, got {reml!r}")
        reml = bool(reml)
        if reml and self.weight_type == "survey":
            raise ValueError("REML is not defined with survey weights (pseudo-likelihood): "
                             "fit(reml=False) fits by pseudo-maximum likelihood")
        if cov_type is None:
            cov_type = "sandwich" if self.weight_type == "survey" else "model"
        if cov_type == "nonrobust":          # statsmodels' name of the model-based covariance
            cov_type = "model"
        if cov_type not in ("model", "sandwich"):
            raise ValueError(f"cov_type={cov_type!r}: use 'model' (statsmodels' 'nonrobust') or "
                             "'sandwich' (Binder's linearization, clustered by group); "
                             "cluster-robust tests with small-sample df: "
                             "results.summary(cov_type='CR2' or statsmodels' 'cluster')")
        if method not in ("auto", "bobyqa", "lbfgs"):
            raise ValueError(f"method={method!r} is not available: sm_hlm optimises the profiled "
                             "deviance with 'auto' (the default), 'bobyqa' (BOBYQA then "
                             "the gradient method) or 'lbfgs' (quasi-Newton with the analytic "
                             "gradient alone)")
        if maxiter is not None:
            if int(maxiter) < 1:
                raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
            maxeval = int(maxiter)
        if self._residual_kernel is not None:     # (theta, structure parameters) jointly
            if cov_type != "model":
                raise NotImplementedError("cov_type='sandwich' is not available with a "
                                          "residual structure yet")
            if method == "lbfgs":
                raise ValueError("a residual structure is fitted by BOBYQA: method='auto' or "
                                 "'bobyqa'")
            from .residual_fit import fit_structured
            return fit_structured(self, start_params=start_params, reml=reml, maxeval=maxeval,
                                  ftol_abs=1e-12 if ftol_abs is None else ftol_abs,
                                  xtol_abs=xtol_abs,
                                  compute_vcomp_cov=compute_vcomp_cov)
        dev = self.deviance_function(reml=reml)
        rd = self.re_design
        sp = None
        if start_params is not None:
            sp = np.asarray(start_params, float)
            if sp.shape != (rd.n_theta,):
                raise ValueError(f"start_params must have {rd.n_theta} entries "
                                 f"{list(rd.theta_names)}")
            if np.any(sp < rd.theta_lower):
                raise ValueError(f"start_params {sp} are below their lower bounds "
                                 f"{rd.theta_lower} (diagonal entries of theta are >= 0)")
        opt_dev, c = self._optimization_deviance(dev)
        record = minimize_deviance(opt_dev, rd.theta_lower, start=sp, identity=rd.theta_start(),
                                   ftol_abs=1e-8 if ftol_abs is None else ftol_abs,
                                   xtol_abs=xtol_abs, maxeval=maxeval, names=rd.theta_names,
                                   skip_bobyqa=method == "lbfgs",
                                   gradient_first=method == "auto")
        if c != 1.0:       # back to the deviance of the weights as given
            record = dataclasses.replace(
                record, fun_start=dev(record.start), fun_end=dev(record.end),
                gradient=c * record.gradient,
                hessian=None if record.hessian is None else c * record.hessian)
        fit = build_fit(self, dev, record, reml=reml, compute_vcomp_cov=compute_vcomp_cov)
        fit = self._verified(fit, dev)
        if disp:
            print(fit.optimizer)
        if fit.singular_terms:
            warnings.warn("boundary (singular) fit: " + "; ".join(fit.singular_terms),
                          SingularFitWarning, stacklevel=2)
        if not fit.optimizer.converged:
            warnings.warn(f"the optimiser did not converge: {fit.optimizer.message}. Try "
                          "fit(method='lbfgs') or other start_params, check the data for "
                          "near-collinear columns, or simplify the random-effects structure",
                          ConvergenceWarning, stacklevel=2)
        return HLMResultsWrapper(HLMResults(self, fit, cov_type=cov_type))

    def _optimization_deviance(self, dev: ProfiledDeviance) -> tuple[ProfiledDeviance, float]:
        """The deviance the optimiser sees, and c with deviance = c * that + constant.

        Survey weights multiply the deviance by about c = N_w / n (the mean
        total weight of a row), which can be in the hundreds with raw survey
        weights; the stopping rules (absolute in the objective) would then be
        c times stricter than without weights.  Dividing the group weights by c
        divides the deviance by c up to a constant and leaves its minimiser
        unchanged, so the optimiser works on that; the fit is built from
        ``dev``.  Without survey weights: ``dev`` itself and 1.
        """
        w = self._work
        if w.group_weights is None or w.weight_nobs is None:
            return dev, 1.0
        c = float(w.weight_nobs) / float(w.nobs)
        if not (np.isfinite(c) and c > 0) or c == 1.0:
            return dev, 1.0
        norm = dataclasses.replace(w, group_weights=w.group_weights / c, within=w.within / c,
                                   WtW=w.WtW / c, weight_nobs=w.weight_nobs / c)
        rd = self.re_design
        return ProfiledDeviance(norm, rd.lambda_, reml=dev.reml, work=norm,
                                reparam=self._reparam, theta_index=rd.lambda_index), c

    def _verified(self, fit: Any, dev: ProfiledDeviance) -> Any:
        """The fit with its log-likelihood recomputed from the residuals at its estimates.

        The check evaluates the (ML or REML) deviance at the reported beta,
        theta and sigma^2 from the row residuals y - X beta in the original
        units (a different path from the optimiser's profiled objective).  A
        disagreement beyond 1e-8 relative means the optimiser's objective lost
        digits: the recomputed value is reported and the fit is marked as not
        converged, with the reason.
        """
        check = -0.5 * self.deviance_at_estimates(fit.theta, fit.fe_params, fit.scale,
                                                   reml=fit.reml, dev=dev)
        if abs(check - fit.llf) <= 1e-8 * max(1.0, abs(check)):
            return dataclasses.replace(fit, llf=check)
        rec = fit.optimizer
        rec = dataclasses.replace(rec, converged=False, message=(
            f"{rec.message}; the objective at the end point ({fit.llf:.10g}) differs from the "
            f"log-likelihood recomputed at the reported estimates ({check:.10g}): numerical "
            "trouble in the profiled deviance"))
        return dataclasses.replace(fit, llf=check, optimizer=rec)

    def deviance_at_estimates(self, theta: np.ndarray, beta: np.ndarray, scale: float, *,
                              reml: bool, dev: ProfiledDeviance | None = None) -> float:
        """-2 log-likelihood (REML criterion) at theta, beta and sigma^2 from the residuals.

        Notes
        -----
        With r = y - X beta, the quadratic form r'V^{-1}r is evaluated group
        by group in the stable form of :mod:`sm_hlm.engine.deviance` (within-group
        residuals of r on Z_j plus the projections weighted by M_j^{-1}), and
        log|V| = sum_j log|I + Lambda' Z_j'Z_j Lambda|.  For REML, log|X'V^{-1}X|
        is added and beta should be the GLS estimate.
        """
        from .engine.deviance import LOG2PI, residual_quadratic

        if dev is None:
            dev = self.deviance_function(reml=reml)
        r = self._sorted_rows(self.endog - self.exog @ np.asarray(beta, float))
        rw = self._row_weights_sorted()
        if rw is not None:
            r = r * np.sqrt(rw)
        lam_t = self._reparam.Tinv @ self.re_design.lambda_(np.asarray(theta, float))
        quad, logdet = residual_quadratic(r, self._work_q, self._starts, self._work.root, lam_t,
                                          group_weights=self._group_weights())
        # N_w under survey weights; precision weights add -sum_i log w_i
        n, p, logw = self._work.n_lik, self.k_fe, self._work.log_weight_sum
        if reml:
            t = dev.terms(theta)
            return float(logdet + t.logdet_RX + (n - p) * (LOG2PI + np.log(scale)) + quad / scale
                         - logw)
        return float(logdet + n * (LOG2PI + np.log(scale)) + quad / scale - logw)

    def results_at(self, theta: np.ndarray, *, reml: bool = True,
                   compute_vcomp_cov: bool = True):
        """Results at a given theta, without optimising.

        beta and sigma^2 are profiled at ``theta`` as in :meth:`fit`.  Useful
        to evaluate the estimator at another program's optimum (e.g. lme4's
        ``getME(fit, "theta")``) or along a profile.
        """
        from .engine.optimizer import OptimizerRecord
        from .results import HLMResults, HLMResultsWrapper, build_fit

        rd = self.re_design
        if reml and self.weight_type == "survey":
            raise ValueError("REML is not defined with survey weights (pseudo-likelihood): "
                             "results_at(theta, reml=False)")
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (rd.n_theta,):
            raise ValueError(f"theta must have {rd.n_theta} entries {list(rd.theta_names)}")
        if np.any(theta < rd.theta_lower):
            raise ValueError(f"theta {theta} is below its lower bounds {rd.theta_lower}")
        dev = self.deviance_function(reml=reml)
        f = dev(theta)
        record = OptimizerRecord("fixed theta", theta, theta, f, f, 1, np.full(len(theta), np.nan),
                                 True, "theta given, not optimised", rd.theta_names)
        fit = build_fit(self, dev, record, reml=reml, compute_vcomp_cov=compute_vcomp_cov)
        return HLMResultsWrapper(HLMResults(self, fit))

    # ------------------------------------------------ the notes' quantities
    def group_ols(self, *, exog: str = "re") -> pd.DataFrame:
        """Per-group OLS coefficients (the notes' BETA.OLS); see :func:`groupwise.group_ols`."""
        return groupwise.group_ols(self, exog=exog)

    def group_ols_summary(self, *, exog: str = "re") -> tuple[pd.Series, pd.DataFrame]:
        """The notes' ad-hoc estimates: mean (NaN ignored) and covariance (complete
        rows) of the per-group OLS coefficients."""
        return groupwise.group_ols_summary(self, exog=exog)

    def marginal_cov(self, group: Any, cov_re: np.ndarray, scale: float) -> pd.DataFrame:
        """Z_j Psi Z_j' + sigma^2 I for one group, labelled by row."""
        return groupwise.marginal_cov(self, group, cov_re, scale)
