"""Random-effects terms and the relative covariance factor Lambda(theta).

A random-effects term is one ``(expr | group)`` of an lme4 formula (or the
``exog_re`` of the array interface).  Each term owns a block of columns of
Z and a block of the relative covariance factor Lambda; ``theta`` stacks the
free entries of all blocks in lme4's order (column-major lower triangle for
a correlated term, the diagonal for an uncorrelated one).

The random-effects covariance is ``cov_re = scale * Lambda Lambda'``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RandomEffectsTerm", "RandomEffectsDesign", "vcomp_objective"]

#: lme4's tolerance for a singular fit (isSingular(tol = 1e-4)).
SINGULAR_TOL = 1e-4


@dataclass(frozen=True)
class RandomEffectsTerm:
    """One random-effects term: a block of Z columns sharing a grouping factor.

    Attributes
    ----------
    group
        Name of the grouping factor.
    names
        Names of the term's columns of Z.
    correlated
        Whether the term's effects are correlated (a full covariance block) or
        independent (diagonal block; lme4's ``||``).
    expr
        The patsy right-hand side that built the columns (None for arrays).
    design_info
        patsy ``DesignInfo`` of the columns, for new data (None for arrays).
    """

    group: str
    names: tuple[str, ...]
    correlated: bool = True
    expr: str | None = None
    design_info: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        # patsy's DesignInfo does not pickle: store its plain description
        from .formula.pickling import pickle_design
        d = dict(self.__dict__)
        d["design_info"] = pickle_design(d.get("design_info"))
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        from .formula.pickling import unpickle_design
        d = dict(d)
        d["design_info"] = unpickle_design(d.get("design_info"))
        for key, value in d.items():
            object.__setattr__(self, key, value)

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def n_theta(self) -> int:
        return self.k * (self.k + 1) // 2 if self.correlated else self.k

    def theta_index(self) -> list[tuple[int, int]]:
        """(row, column) in the term's block of each theta entry (lme4 order)."""
        if not self.correlated:
            return [(i, i) for i in range(self.k)]
        return [(i, j) for j in range(self.k) for i in range(j, self.k)]

    def label(self) -> str:
        bar = "|" if self.correlated else "||"
        return f"({' + '.join(self.names)} {bar} {self.group})"


class RandomEffectsDesign:
    """The random-effects terms of a model and their theta parametrisation.

    Parameters
    ----------
    terms
        The random-effects terms, in the order of Z's columns.  All terms
        share one grouping factor (two-level models).
    """

    def __init__(self, terms: Sequence[RandomEffectsTerm]):
        self.terms = tuple(terms)
        groups = {t.group for t in self.terms}
        if len(groups) > 1:
            raise NotImplementedError(
                "random-effects terms with different grouping factors "
                f"({', '.join(sorted(groups))}) are not supported yet: sm_hlm fits two-level "
                "models with one grouping factor")
        names = [n for t in self.terms for n in t.names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"random-effects column(s) {dup} appear in more than one term; each column "
                "of Z may appear once per grouping factor")
        self.names = tuple(names)
        self.q = len(names)
        rows, cols, lower, tnames = [], [], [], []
        offset = 0
        for t in self.terms:
            for i, j in t.theta_index():
                rows.append(offset + i)
                cols.append(offset + j)
                lower.append(0.0 if i == j else -np.inf)
                tnames.append(f"{t.group}.{t.names[i]}" if i == j
                              else f"{t.group}.{t.names[i]}.{t.names[j]}")
            offset += t.k
        self._rows = np.array(rows, dtype=int)
        self._cols = np.array(cols, dtype=int)
        self.theta_lower = np.array(lower)
        self.theta_names = tuple(tnames)
        self.n_theta = len(rows)
        #: mask of Psi entries that are free (within a correlated block)
        free = np.zeros((self.q, self.q), dtype=bool)
        free[self._rows, self._cols] = True
        free |= free.T
        self.free_mask = free

    @property
    def group(self) -> str | None:
        return self.terms[0].group if self.terms else None

    @property
    def lambda_index(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of theta's entries in Lambda."""
        return self._rows, self._cols

    def theta_start(self) -> np.ndarray:
        """lme4's start: the identity factor (diagonals 1, off-diagonals 0)."""
        return np.where(self._rows == self._cols, 1.0, 0.0)

    def lambda_(self, theta: np.ndarray) -> np.ndarray:
        """The q x q lower-triangular relative covariance factor."""
        lam = np.zeros((self.q, self.q))
        lam[self._rows, self._cols] = theta
        return lam

    def cov_re(self, theta: np.ndarray, scale: float) -> np.ndarray:
        lam = self.lambda_(theta)
        return scale * (lam @ lam.T)

    def theta_from_cov(self, cov_re: np.ndarray, scale: float) -> np.ndarray:
        """theta whose factor reproduces ``cov_re`` (block Cholesky factors).

        Raises ``numpy.linalg.LinAlgError`` when a block is not positive definite.
        """
        cov = np.asarray(cov_re, dtype=float) / scale
        lam = np.zeros_like(cov)
        offset = 0
        for t in self.terms:
            sl = slice(offset, offset + t.k)
            block = cov[sl, sl]
            lam[sl, sl] = np.linalg.cholesky(block) if t.correlated else np.diag(np.sqrt(np.diag(block)))
            offset += t.k
        return lam[self._rows, self._cols]

    def singular_terms(self, theta: np.ndarray, tol: float = SINGULAR_TOL) -> list[str]:
        """Terms whose factor has a (near-)zero diagonal: lme4's isSingular."""
        out, offset, pos = [], 0, 0
        for t in self.terms:
            block = theta[pos:pos + t.n_theta]
            diag = [v for (i, j), v in zip(t.theta_index(), block) if i == j]
            if np.any(np.abs(diag) < tol):
                bad = [t.names[i] for i, v in enumerate(diag) if abs(v) < tol]
                out.append(f"{t.label()}: {', '.join(bad)}")
            pos += t.n_theta
            offset += t.k
        return out

    def vcomp_names(self) -> list[str]:
        """Names of the free entries of cov_re, lower triangle, row by row."""
        out = []
        g = self.group
        for i in range(self.q):
            for j in range(i + 1):
                if not self.free_mask[i, j]:
                    continue
                if i == j:
                    out.append(f"Var({self.names[i]} | {g})")
                else:
                    out.append(f"Cov({self.names[j]}, {self.names[i]} | {g})")
        return out

    def term_blocks(self, cov_re: np.ndarray):
        """Yield ``(term, block, sd, corr)`` for each term's diagonal block of ``cov_re``.

        ``corr`` is the block's correlation matrix (NaN where an SD is zero).
        """
        cov = np.asarray(cov_re, dtype=float)
        offset = 0
        for t in self.terms:
            sl = slice(offset, offset + t.k)
            block = cov[sl, sl]
            sd = np.sqrt(np.diag(block))
            den = np.outer(sd, sd)
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.where(den > 0, block / np.where(den > 0, den, 1.0), np.nan)
            yield t, block, sd, corr
            offset += t.k

    def cov_from_vcomp(self, vcomp: np.ndarray) -> np.ndarray:
        """The q x q covariance whose free entries (``vcomp_names`` order) are ``vcomp``."""
        r, c = self.vcomp_index()
        cov = np.zeros((self.q, self.q))
        cov[r, c] = vcomp
        cov[c, r] = vcomp
        return cov

    def vcomp_index(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = [], []
        for i in range(self.q):
            for j in range(i + 1):
                if self.free_mask[i, j]:
                    rows.append(i)
                    cols.append(j)
        return np.array(rows, dtype=int), np.array(cols, dtype=int)


def vcomp_objective(rd: Any, beta: np.ndarray, deviance_for: Any) -> Any:
    """The deviance as a function of v = (vcomp, sigma^2, *rest), beta fixed.

    ``deviance_for(rest)`` returns ``(ProfiledDeviance, extra)`` for the
    remaining parameters (a residual structure's; ``extra`` is its log|R|).
    NaN outside the valid region (sigma^2 <= 0 or Psi not positive definite).
    """
    k = len(rd.vcomp_index()[0])

    def f(v: np.ndarray) -> float:
        s = v[k]
        if s <= 0:
            return np.nan
        try:
            theta = rd.theta_from_cov(rd.cov_from_vcomp(v[:k]), s)
            dev, extra = deviance_for(v[k + 1:])
        except (np.linalg.LinAlgError, FloatingPointError):
            return np.nan
        return dev.deviance_at(theta, beta, s) + extra

    return f
