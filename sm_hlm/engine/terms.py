"""Random-effects terms for any number of grouping factors, and theta.

A term k is one ``(expr | factor)`` of an lme4 formula, given as arrays:
the level codes ``refs_k`` (length n, integers ``0 .. n_levels_k - 1``),
the dense model matrix ``z_k`` (n x S_k) and the structure of its relative
covariance factor ``Lambda_k`` (S_k x S_k lower triangular, or diagonal for
lme4's ``||``).  ``theta`` stacks the free entries of the Lambda_k.

This module imports only numpy: it is the bottom of the engine layer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RETerm", "ThetaLayout", "codes_from_labels", "interaction_codes",
           "nested_in", "parent_levels", "lme4_term_order", "theta_to_lme4", "theta_from_lme4"]


def codes_from_labels(labels: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer level codes ``0 .. m-1`` (sorted labels) and the distinct labels."""
    levels, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.astype(np.intp).ravel(), levels


def interaction_codes(*codes: np.ndarray) -> np.ndarray:
    """Codes of the interaction of several factors (lme4's ``a:b``), 0 .. m-1.

    Only combinations that occur get a level (in sorted order of the
    combined codes), so a class label reused in several schools gives one
    level per (school, class) pair.  The factors are combined pairwise,
    recoding after each step so that the combined key never overflows.
    """
    if not codes:
        raise ValueError("interaction_codes needs at least one factor")
    out = np.asarray(codes[0], dtype=np.int64)
    for c in codes[1:]:
        c = np.asarray(c, dtype=np.int64)
        if c.shape != out.shape:
            raise ValueError("the factors of an interaction must have the same length")
        key = out * (int(c.max()) + 1 if len(c) else 1) + c
        _, out = np.unique(key, return_inverse=True)
        out = out.ravel().astype(np.int64)
    if len(codes) == 1:
        _, out = np.unique(out, return_inverse=True)
    return out.astype(np.intp).ravel()


@dataclass(frozen=True, eq=False)
class RETerm:
    """One random-effects term.

    Parameters
    ----------
    factor
        Name of the grouping factor (for messages and results).
    refs
        Level code of each row, integers in ``0 .. n_levels - 1``; every
        level must occur.
    n_levels
        Number of levels of the factor.
    z
        Dense model matrix of the term, shape (n, S).
    names
        Names of the S columns of ``z``.
    correlated
        Lambda_k lower triangular (``(x | g)``) or diagonal (``(x || g)``).
    levels
        Labels of the levels (for results), optional.
    blocks
        Sizes of the diagonal blocks of a block-diagonal Lambda_k, each block
        lower triangular: several bar terms on one factor, e.g.
        ``(1 + x | g) + (0 + w | g)`` is one term with ``blocks=(2, 1)``.
        None: one block (``correlated``) or all blocks of size 1.

    Notes
    -----
    The term contributes ``Z_k b_k`` to the linear predictor, where Z_k has
    S * n_levels columns (level-major: level l occupies columns
    ``l*S .. l*S + S - 1``), and ``b_k[l] = Lambda_k u_k[l]`` with
    ``u ~ N(0, sigma^2 I)``; so ``Cov(b_k[l]) = sigma^2 Lambda_k Lambda_k'``.
    """

    factor: str
    refs: np.ndarray
    n_levels: int
    z: np.ndarray
    names: tuple[str, ...]
    correlated: bool = True
    levels: np.ndarray | None = field(default=None, repr=False)
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        refs = np.asarray(self.refs)
        if refs.ndim != 1 or not np.issubdtype(refs.dtype, np.integer):
            raise TypeError(f"factor {self.factor!r}: refs must be a 1-d integer array")
        z = np.asarray(self.z, dtype=float)
        if z.ndim == 1:
            z = z[:, None]
        if z.ndim != 2 or z.shape[0] != len(refs):
            raise ValueError(f"factor {self.factor!r}: z must have {len(refs)} rows, "
                             f"got shape {z.shape}")
        if z.shape[1] != len(self.names) or z.shape[1] == 0:
            raise ValueError(f"factor {self.factor!r}: z has {z.shape[1]} columns but "
                             f"{len(self.names)} names")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"factor {self.factor!r}: z has non-finite values")
        m = int(self.n_levels)
        if len(refs) and (refs.min() < 0 or refs.max() >= m):
            raise ValueError(f"factor {self.factor!r}: level codes must lie in 0..{m - 1}")
        counts = np.bincount(refs, minlength=m)
        if np.any(counts == 0):
            raise ValueError(f"factor {self.factor!r}: {int(np.sum(counts == 0))} of its "
                             f"{m} levels do not occur; recode the levels")
        object.__setattr__(self, "refs", refs.astype(np.intp, copy=False))
        object.__setattr__(self, "z", np.ascontiguousarray(z))
        object.__setattr__(self, "n_levels", m)
        object.__setattr__(self, "names", tuple(self.names))
        if self.blocks is not None:
            blocks = tuple(int(b) for b in self.blocks)
            if any(b < 1 for b in blocks) or sum(blocks) != z.shape[1]:
                raise ValueError(f"factor {self.factor!r}: blocks {blocks} must be positive "
                                 f"sizes adding up to the {z.shape[1]} columns of z")
            object.__setattr__(self, "blocks", blocks)

    @property
    def S(self) -> int:
        """Number of random effects per level."""
        return self.z.shape[1]

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Sizes of the diagonal blocks of Lambda_k."""
        if self.blocks is not None:
            return self.blocks
        return (self.S,) if self.correlated else (1,) * self.S

    @property
    def n_theta(self) -> int:
        return sum(b * (b + 1) // 2 for b in self.block_sizes)

    def theta_index(self) -> list[tuple[int, int]]:
        """(row, column) of each theta entry in Lambda_k: column-major lower
        triangle of each diagonal block, block by block."""
        out, o = [], 0
        for b in self.block_sizes:
            out += [(o + i, o + j) for j in range(b) for i in range(j, b)]
            o += b
        return out

    def theta_names(self) -> list[str]:
        out = []
        for i, j in self.theta_index():
            out.append(f"{self.factor}.{self.names[i]}" if i == j
                       else f"{self.factor}.{self.names[i]}.{self.names[j]}")
        return out

    def label(self) -> str:
        sizes = self.block_sizes
        if len(sizes) == 1 or all(b == 1 for b in sizes):
            bar = "|" if len(sizes) == 1 and self.correlated or self.S == 1 else "||"
            return f"({' + '.join(self.names)} {bar} {self.factor})"
        parts, o = [], 0
        for b in sizes:
            parts.append(f"({' + '.join(self.names[o:o + b])} | {self.factor})")
            o += b
        return " + ".join(parts)


class ThetaLayout:
    """theta <-> the Lambda_k of a sequence of terms, in the caller's term order.

    Parameters
    ----------
    terms
        The random-effects terms; theta is the concatenation of each term's
        free Lambda entries in this order (column-major lower triangle for
        a correlated term, the diagonal otherwise).

    Notes
    -----
    lme4 orders its terms by decreasing number of levels before building
    theta; :func:`lme4_term_order` gives that permutation and
    :func:`theta_to_lme4` / :func:`theta_from_lme4` map between the orders.
    """

    def __init__(self, terms: Sequence[RETerm]):
        self.terms = tuple(terms)
        sizes = [t.n_theta for t in self.terms]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.n_theta = int(self.offsets[-1])
        lower, names = [], []
        for t in self.terms:
            lower += [0.0 if i == j else -np.inf for i, j in t.theta_index()]
            names += t.theta_names()
        self.lower = np.array(lower, dtype=float)
        self.names = tuple(names)
        self._idx = [tuple(np.array(ix, dtype=int).T) for ix in
                     (t.theta_index() for t in self.terms)]

    def start(self) -> np.ndarray:
        """lme4's start: identity factors."""
        return np.where(self.lower == 0.0, 1.0, 0.0)

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """The S_k x S_k lower-triangular Lambda_k of every term."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.n_theta,):
            raise ValueError(f"theta must have {self.n_theta} entries, got shape {theta.shape}")
        out = []
        for k, t in enumerate(self.terms):
            lam = np.zeros((t.S, t.S))
            lam[self._idx[k]] = theta[self.offsets[k]:self.offsets[k + 1]]
            out.append(lam)
        return out

    def theta_from_lambdas(self, lambdas: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(lam)[self._idx[k]] for k, lam in enumerate(lambdas)])


def lme4_term_order(n_levels: Sequence[int]) -> np.ndarray:
    """The permutation lme4's ``mkReTrms`` applies to the terms.

    Notes
    -----
    lme4 keeps the formula order when the numbers of levels are already
    non-increasing; otherwise it uses ``rev(order(nl))``: decreasing number of
    levels, with ties in *reverse* formula order (``order`` is stable, ``rev``
    reverses the ties).  ``terms[lme4_term_order(...)]`` is lme4's order.
    """
    nl = np.asarray(n_levels, dtype=int)
    if not np.any(np.diff(nl) > 0):
        return np.arange(len(nl))
    return np.argsort(nl, kind="stable")[::-1].copy()


def theta_to_lme4(theta: np.ndarray, layout: ThetaLayout) -> np.ndarray:
    """theta in the caller's term order -> lme4's ``getME(fit, "theta")`` order."""
    order = lme4_term_order([t.n_levels for t in layout.terms])
    theta = np.asarray(theta, dtype=float)
    return np.concatenate([theta[layout.offsets[k]:layout.offsets[k + 1]] for k in order])


def theta_from_lme4(theta_lme4: np.ndarray, layout: ThetaLayout) -> np.ndarray:
    """lme4's theta -> theta in the caller's term order."""
    order = lme4_term_order([t.n_levels for t in layout.terms])
    theta_lme4 = np.asarray(theta_lme4, dtype=float)
    out = np.empty(layout.n_theta)
    pos = 0
    for k in order:
        size = layout.offsets[k + 1] - layout.offsets[k]
        out[layout.offsets[k]:layout.offsets[k + 1]] = theta_lme4[pos:pos + size]
        pos += size
    return out


def parent_levels(inner: np.ndarray, outer: np.ndarray, n_inner: int) -> np.ndarray | None:
    """The level of ``outer`` of each level of ``inner`` when inner is nested in it.

    Returns None when some level of ``inner`` occurs with more than one level
    of ``outer`` (not nested).
    """
    parent = np.empty(n_inner, dtype=np.intp)
    parent[inner] = outer                      # one of the outer levels of each inner level
    if not np.array_equal(parent[inner], outer):
        return None
    return parent


def nested_in(inner: RETerm, outer: RETerm) -> bool:
    """Whether every level of ``inner`` occurs with exactly one level of ``outer``."""
    return parent_levels(inner.refs, outer.refs, inner.n_levels) is not None
