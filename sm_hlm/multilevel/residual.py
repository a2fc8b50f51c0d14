"""Residual structures within the innermost units of a nested model.

nlme's ``lme(y ~ x, random = ~ 1 | school/klass, correlation = corAR1(...))``:
the errors are correlated within each unit of the innermost factor (a class)
and independent across units, Cov(e) = sigma^2 R, R block diagonal by class.

Notes
-----
Every row of one innermost unit has the same level of every factor it is
nested in, so whitening each unit's rows by R_i^{-1/2} (U_i^{-1} with
R_i = U_i U_i') keeps the sparsity of every Z_k and gives a model with
independent errors:

    -2 log L(theta, phi) = D_blocked(theta; U^{-1}X, U^{-1}y, U^{-1}Z) + log|R(phi)|

(ML and REML alike).  The whitening is the two-level kernel's
(:class:`sm_hlm.whitening.ResidualKernel`, batched over units) built on the
innermost factor; the optimiser (BOBYQA with the numerical verdict) sees
(theta, the structure's unconstrained parameters).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..design import RandomEffectsDesign, RandomEffectsTerm
from ..engine.blocked import BlockedDeviance
from ..engine.optimizer import OptimizerRecord, minimize_bobyqa
from ..engine.solution import solve_at
from ..whitening import ResidualKernel

if TYPE_CHECKING:
    from .model import MultilevelHLM

__all__ = ["NestedResidual"]


class NestedResidual:
    """A residual structure bound to a nested multilevel model.

    Parameters
    ----------
    model
        The nested :class:`~sm_hlm.multilevel.MultilevelHLM`.
    structure
        The structure with its variables resolved (arrays aligned with the rows).
    """

    def __init__(self, model: "MultilevelHLM", structure: Any):
        if model.nesting is None:
            raise NotImplementedError(
                "a residual structure needs nested grouping factors (errors correlated within "
                "the innermost unit); with crossed factors the rows of a unit of one factor "
                "belong to several units of the other")
        inner = model.re_terms[model.nesting[-1]]
        self.inner = inner.factor
        self.model = model
        # the two-level kernel on the innermost factor does the whitening: it reads the
        # rows, the unit codes and a random intercept's design from this view
        self.proxy = _innermost_view(model, inner)
        self.kernel = ResidualKernel(self.proxy, structure)
        self.structure = structure
        self.n_params = int(self.kernel.n_params)
        self.names = list(structure.param_names(self.kernel.info))

    # ---------------------------------------------------------------- pieces
    def logdet(self, u: np.ndarray) -> float | None:
        """log|R(phi)|, or None where R is not positive definite."""
        kern = self.kernel
        nat = kern.natural(u)
        if kern.kind == "dense":
            fac = kern._dense_factors(nat)
            if fac is None:
                return None
            out = float(kern.pattern_count @ fac[1])
            if kern.has_by and not kern.folded:
                out += 2.0 * float(np.log(kern.sd_rows_sorted(nat)).sum())
            return out
        res = kern._whiten_sorted(nat, np.zeros((kern.nobs, 1)))
        return None if res is None else float(res[1])

    def whitened(self, u: np.ndarray, *, endog: np.ndarray | None = None):
        """U^{-1} applied to X, y (or ``endog``) and every term's Z; None if not PD."""
        m = self.model
        y = m.endog if endog is None else endog
        blocks = [m.exog, y[:, None]] + [t.z for t in m.re_terms]
        try:
            W = self.kernel.whiten(u, np.column_stack(blocks))
        except FloatingPointError:
            return None
        p = m.k_fe
        X, yw = W[:, :p], W[:, p]
        pos, terms = p + 1, []
        import dataclasses
        for t in m.re_terms:
            terms.append(dataclasses.replace(t, z=W[:, pos:pos + t.S]))
            pos += t.S
        return X, yw, terms

    def deviance_at(self, x: np.ndarray, *, reml: bool) -> float:
        """-2 log L (REML criterion) at x = (theta, u)."""
        k = self.model.layout.n_theta
        w = self.whitened(x[k:])
        ld = self.logdet(x[k:])
        if w is None or ld is None:
            return np.inf
        X, y, terms = w
        dev = BlockedDeviance(terms, X, y, reml=reml)(x[:k])
        return float(dev + ld)

    # ------------------------------------------------------------------- fit
    def fit(self, *, reml: bool, start: np.ndarray | None, maxeval: int, ftol_abs: float,
            xtol_abs: float) -> tuple[OptimizerRecord, Any]:
        """The joint optimum over (theta, u) and the solution (in original units)."""
        m = self.model
        lay = m.layout
        k = lay.n_theta
        theta0 = m.moment_start() * m._theta_scale() if start is None else start[:k]
        u0 = (self.kernel.start_free(self.proxy) if start is None or len(start) == k
              else start[k:])
        x0 = np.concatenate([theta0, u0])
        lower = np.concatenate([lay.lower, self.kernel.free_lower])
        upper = np.concatenate([np.full(k, np.inf), self.kernel.free_upper])
        names = tuple(lay.names) + tuple(f"residual.{nm}" for nm in self.names)
        rec = minimize_bobyqa(lambda x: self.deviance_at(x, reml=reml), x0, lower, upper,
                              ftol_abs=ftol_abs, xtol_abs=xtol_abs, maxeval=maxeval,
                              names=names)
        X, y, terms = self.whitened(rec.end[k:])
        sol = solve_at(BlockedDeviance(terms, X, y, reml=reml), rec.end[:k], condvar=True)
        return rec, sol

    def quadratic(self, u: np.ndarray, theta: np.ndarray, r: np.ndarray) -> tuple[float, float]:
        """r'V^{-1}r / sigma^2-free pieces at (theta, u): (quad, log|V/sigma^2|) from the
        whitened residual (the factor of [Z Lambda, X, U^{-1} r], no refit of beta)."""
        m = self.model
        X, rw, terms = self.whitened(u, endog=r)
        f = BlockedDeviance(terms, X, rw, reml=False).factor(theta)
        p = m.k_fe
        R = f.R(p + 1)
        return float(R[p, p] ** 2 + R[p, :p] @ R[p, :p]), float(f.logdet_L + self.logdet(u))

    def residual_params(self, u: np.ndarray) -> pd.Series:
        return pd.Series(self.kernel.natural(u), index=self.names, name="residual_params")


def _innermost_view(model: "MultilevelHLM", inner: Any) -> Any:
    """What :class:`~sm_hlm.whitening.ResidualKernel` reads of a model, for the
    innermost factor's units with a random intercept (the kernel whitens rows only)."""
    from types import SimpleNamespace

    codes = np.asarray(inner.refs, dtype=np.intp)
    m = int(inner.n_levels)
    counts = np.bincount(codes, minlength=m)
    labels = pd.Index(np.arange(m), name=inner.factor)
    W = np.column_stack([model.exog, model.endog])
    return SimpleNamespace(
        endog=model.endog, exog=model.exog, exog_re=np.ones((len(codes), 1)),
        group_codes=codes, group_labels=labels, group_name=inner.factor,
        group_sizes=pd.Series(counts, index=labels), k_fe=model.k_fe, k_re=1, n_groups=m,
        _order=np.argsort(codes, kind="stable"),
        _starts=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp),
        re_design=RandomEffectsDesign([RandomEffectsTerm(inner.factor, ("Intercept",))]),
        _stats=SimpleNamespace(WtW=W.T @ W))
