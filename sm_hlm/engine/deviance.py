"""The profiled deviance of a two-level linear mixed model, computed stably.

Notes
-----
Following Bates, Maechler, Bolker & Walker (2015), write the random effects
as b = Lambda(theta) u with u ~ N(0, sigma^2 I) and V_j = I + Z_j Lambda
Lambda' Z_j' (relative to sigma^2).  With W = [X y], everything follows from

    A(theta) = W' V^{-1} W = R R'   (R lower triangular, (p+1) x (p+1)):

the GLS estimate beta(theta) = R_X^{-T} r with R_X = R[:p, :p] and
r = R[p, :p]', the penalised residual sum of squares r^2(theta) = R[p, p]^2
and log|R_X|^2.  With log|L|^2 = sum_j log|I + Lambda' Z_j'Z_j Lambda| the
profiled deviances (-2 log-likelihood with beta and sigma^2 profiled out) are

    ML:   log|L|^2 + n (1 + log(2 pi r^2 / n))
    REML: log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p))).

**Stable form of A.**  lme4 forms A = W'W - sum_j C_j'C_j, a difference that
cancels catastrophically when the between-group part of W dominates (huge
variance ratios, or predictors far from zero).  Here each group's W_j is
split into its projection on the columns of Z_j and the rest:

    Z_j'Z_j = R_j'R_j,   G_j = R_j^{+T} Z_j'W_j,   E_j = W_j - Z_j Z_j^+ W_j,

(R_j upper triangular from a rank-revealing Cholesky; rows of aliased
directions are zero), so that, with M_j = I + R_j Lambda Lambda' R_j',

    A(theta) = sum_j E_j'E_j + sum_j G_j' M_j^{-1} G_j,

a sum of positive semi-definite terms.  sum_j E_j'E_j (the within-group
residual cross product) is computed once from the rows.  The model also
works in centred and scaled coordinates, W~ = W D and Z~ = Z T (D upper
triangular, T block-wise), an exact reparametrisation that is mapped back
exactly (see :class:`Reparametrization`).

**Gradient.**  With u = (-beta, 1), P_j = R_j'M_j^{-1}R_j, K_j = R_j'M_j^{-1}G_j,
v_j = K_j u and c = n (ML) or n - p (REML), the derivative of the deviance
with respect to the entries of Lambda is the matrix

    2 [ sum_j P_j - (c / r^2) sum_j v_j v_j' - [REML] sum_j K_jx A_xx^{-1} K_jx' ] Lambda,

read at the free entries of Lambda (K_jx: the first p columns of K_j).

**Weights.**  Precision weights scale the rows of X, Z and y by sqrt(w_i)
and add -sum_i log w_i to both criteria (n stays the row count).  Survey
weights (pseudo-likelihood) scale the rows by sqrt(w_{i|j}) and count group
j's terms w_j times: A(theta) = sum_j w_j (E_j'E_j + G_j'M_j^{-1}G_j),
log|L|^2 = sum_j w_j log|M_j|, and N_w = sum_j w_j sum_i w_{i|j} replaces n
(:attr:`SufficientStats.group_weights`, ``weight_nobs``, ``log_weight_sum``);
in the gradient P_j and v_j carry the weight w_j (G_j -> sqrt(w_j) G_j) and c = N_w.

Only per-group statistics enter, so an evaluation costs O(m q^3 + m q^2 p +
m q p^2) with m groups and never touches n x n matrices.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import compiled
from .linalg import (batched_cholesky, batched_forward_solve, batched_forward_solve_T,
                     batched_inverse_lower, group_crossprod)
from . import compiled
from .small import SmallKernel

__all__ = ["SufficientStats", "Reparametrization", "DevianceTerms", "ProfiledDeviance",
           "working_stats", "root_factors", "group_qr", "residual_quadratic", "is_constant",
           "constant_columns"]
#: A column of Z_j whose residual norm after the earlier columns (QR) is below this
#: fraction of its norm is aliased in group j.
_QR_TOL = 1e-11

LOG2PI = float(np.log(2.0 * np.pi))
#: Largest number of entries of the per-group pair products for the fast path: beyond it
#: (many groups) the memory traffic of the pair products outweighs the saved numpy calls.
_PAIR_PRODUCT_LIMIT = 1_000_000
#: Groups per block of the blocked kernels (:meth:`ProfiledDeviance._blocked_system`): beyond
#: this many groups an evaluation runs block by block so that every per-group temporary of a
#: block stays in the CPU cache; the cost per group is then independent of m.
_CHUNK_GROUPS = 8192
#: Whether the compiled q <= 2 kernel serves any number of groups (else up to
#: ``_CHUNK_GROUPS``, as its numpy form).
_SMALL_ANY_M = True
#: Largest |theta~| (working coordinates) at which the deviance is evaluated (see
#: :meth:`ProfiledDeviance.work_deviance`).
_THETA_WORK_MAX = 1e7
#: A direction of Z_j whose squared residual after the earlier columns is below this
#: fraction of its squared norm is aliased (only rounding is left of it).
_ROOT_TOL = 1e-14


@dataclass(frozen=True)
class SufficientStats:
    """Per-group cross products of a (possibly whitened) model.

    Attributes
    ----------
    ZtZ : (q, q, m), or None
    ZtW : (q, p + 1, m) or None   Z_j' [X_j y_j]; both may be None when ``root``
        and ``proj`` are given (statistics reduced to their roots elsewhere, e.g.
        on a cluster: :mod:`sm_hlm.scale.dask`)
    WtW : (p + 1, p + 1)  [X y]' [X y]
    nobs, k_fe
    within : (p + 1, p + 1) or None
        sum_j E_j'E_j, the cross product of the within-group residuals of W on
        Z_j, computed from the rows; None: derived as W'W - sum_j G_j'G_j.
    root, proj : (q, q, m) and (q, p + 1, m), or None
        F_j (F_j F_j' = Z_j'Z_j, lower) and G_j = F_j^{-1} Z_j'W_j from a QR
        decomposition of each group's rows (:func:`group_qr`); None: from a
        rank-revealing Cholesky of Z_j'Z_j (:func:`root_factors`).
    group_weights : (m,) or None
        Pseudo-likelihood weight w_j of each group: group j's terms of the
        deviance (its part of ``within``, G_j'M_j^{-1}G_j and log|M_j|) count
        w_j times.  ``within`` already holds the weights; ``proj`` does not
        (the BLUPs do not depend on w_j).  None: every group once.
    weight_nobs : float or None
        N_w = sum_j w_j sum_i w_{i|j}, which replaces the row count in the
        deviance under survey weights; None: ``nobs``.
    log_weight_sum : float
        sum_i log w_i of precision weights (rows already scaled by sqrt(w_i));
        the deviance gains -sum_i log w_i.  0 without precision weights.
    column_gram : (p + 1, p + 1) or None
        (W D_0)'(W D_0) of the unweighted rows, D_0 the centring and scaling
        map before the orthonormalisation (:func:`working_stats`): the model's
        rank check of X reads it instead of another pass over the rows.
    """

    ZtZ: np.ndarray | None
    ZtW: np.ndarray | None
    WtW: np.ndarray
    nobs: int
    k_fe: int
    within: np.ndarray | None = None
    root: np.ndarray | None = None
    proj: np.ndarray | None = None
    group_weights: np.ndarray | None = None
    weight_nobs: float | None = None
    log_weight_sum: float = 0.0
    column_gram: np.ndarray | None = None

    @property
    def q(self) -> int:
        return (self.ZtZ if self.ZtZ is not None else self.root).shape[0]

    @property
    def n_groups(self) -> int:
        return (self.ZtZ if self.ZtZ is not None else self.root).shape[2]

    @property
    def n_lik(self) -> float:
        """The count multiplying log(sigma^2) in the deviance: N_w or ``nobs``."""
        return float(self.nobs) if self.weight_nobs is None else float(self.weight_nobs)


def _eye_list(k: int) -> list[list[float]]:
    """The k x k identity as nested Python lists (for comparisons with ``tolist()``)."""
    return [[1.0 if i == j else 0.0 for j in range(k)] for i in range(k)]


def _log_abs(v: float) -> float:
    """log|v| as numpy gives it (-inf at 0, NaN for NaN), on a Python float."""
    a = abs(v)
    return math.log(a) if a > 0.0 and a != math.inf else float(np.log(a))


@dataclass(frozen=True)
class Reparametrization:
    """An exact change of coordinates W~ = W D, Z~ = Z T.

    ``D`` ((p+1) x (p+1), upper triangular) centres and scales the columns of
    X and y; ``T`` (q x q) centres and scales the columns of Z within each
    correlated random-effects block (scales only elsewhere).  Then
    Lambda~ = T^{-1} Lambda, beta = (D_x beta~ - D[:p, p]) / D[p, p] and
    b_j = T b~_j / D[p, p].
    """

    D: np.ndarray
    T: np.ndarray
    Tinv: np.ndarray = field(init=False)
    logdet_Dx: float = field(init=False)
    log_scale_y: float = field(init=False)
    is_identity: bool = field(init=False)

    def __post_init__(self) -> None:
        D, T = self.D.tolist(), self.T.tolist()
        p = len(D) - 1
        object.__setattr__(self, "is_identity", D == _eye_list(p + 1) and T == _eye_list(len(T)))
        if len(T) == 2 and T[1][0] == 0.0 and T[0][0] != 0.0 and T[1][1] != 0.0:
            # upper triangular 2 x 2 (the usual intercept-and-slope map): closed form
            (a, b), (_, d) = T
            Tinv = np.array([[1.0 / a, -b / (a * d)], [0.0, 1.0 / d]])
        else:
            Tinv = np.linalg.inv(self.T) if self.T.size else self.T
        object.__setattr__(self, "Tinv", Tinv)
        object.__setattr__(self, "logdet_Dx", math.fsum(_log_abs(D[i][i]) for i in range(p)))
        object.__setattr__(self, "log_scale_y", -_log_abs(D[p][p]))

    @classmethod
    def identity(cls, p: int, q: int) -> "Reparametrization":
        return cls(np.eye(p + 1), np.eye(q))


@dataclass(frozen=True)
class DevianceTerms:
    """The pieces of the profiled deviance at one theta (original coordinates)."""

    theta: np.ndarray
    R: np.ndarray          # (p + 1, p + 1) lower factor of A(theta)
    beta: np.ndarray       # GLS estimate
    pwrss: float           # r^2(theta)
    logdet_L: float        # log|L|^2
    logdet_RX: float       # log|R_X|^2

    @property
    def xtvix(self) -> np.ndarray:
        """X' V^{-1} X (V relative to sigma^2)."""
        p = len(self.beta)
        RX = self.R[:p, :p]
        return RX @ RX.T


def root_factors(ZtZ: np.ndarray, ZtW: np.ndarray,
                 tol: float = _ROOT_TOL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group roots of Z_j'Z_j and the projections G_j, vectorised over groups.

    Returns ``(F, G, kept)``: ``F`` (q, q, m) lower triangular with
    F_j F_j' = Z_j'Z_j (R_j = F_j'; an aliased direction has a zero diagonal
    and a zero column below it), ``G`` (q, r, m) solving F_j G_j = Z_j'W_j
    (zero rows at aliased directions) and ``kept`` (q, m).
    """
    q, _, m = ZtZ.shape
    F = np.zeros_like(ZtZ)
    kept = np.zeros((q, m), dtype=bool)
    for j in range(q):        # loops over the tiny q dimension only
        s = ZtZ[j, j] - np.einsum("km,km->m", F[j, :j], F[j, :j]) if j else ZtZ[j, j].copy()
        ok = s > tol * np.maximum(ZtZ[j, j], np.finfo(float).tiny)
        kept[j] = ok
        d = np.sqrt(np.where(ok, s, 1.0))
        F[j, j] = np.where(ok, d, 0.0)
        if j + 1 < q:
            num = ZtZ[j + 1:, j] - (np.einsum("ikm,km->im", F[j + 1:, :j], F[j, :j]) if j else 0.0)
            F[j + 1:, j] = np.where(ok, num / d, 0.0)
    G = np.zeros_like(ZtW)
    for i in range(q):
        v = ZtW[i] - (np.einsum("km,krm->rm", F[i, :i], G[:i]) if i else 0.0)
        G[i] = np.where(kept[i], v / np.where(kept[i], F[i, i], 1.0), 0.0)
    return F, G, kept


def group_qr(Z: np.ndarray, starts: np.ndarray, tol: float = _QR_TOL, *,
             out: np.ndarray | None = None, overwrite_z: bool = False,
             buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin QR of each group's rows of Z, vectorised over groups.

    Classical Gram-Schmidt with one reorthogonalisation ("twice is enough"),
    column by column over the tiny q dimension, every step a vectorised pass
    over the rows.  Unlike a Cholesky of Z_j'Z_j it does not square the
    condition number of nearly collinear columns.

    ``out`` (n, q), if given, receives Q (e.g. a block of a larger array).
    ``overwrite_z``: Z (float, writeable, contiguous columns) may be used as the
    workspace, and may be ``out`` itself; no copy of it is made.  ``buf`` (n,): an
    optional float workspace.

    Returns
    -------
    Q : (n, q)
        Orthonormal columns per group (zero where a column is aliased).
    F : (q, q, m)
        Lower triangular, F_j' = R_j with Z_j = Q_j R_j (zero diagonal and zero
        column below it for an aliased column).
    kept : (q, m) bool
    """
    n, q = Z.shape
    m = len(starts)
    counts = np.diff(np.append(starts, n))
    Q = np.zeros((n, q), order="F") if out is None else out      # contiguous columns
    R = np.zeros((q, q, m))
    kept = np.zeros((q, m), dtype=bool)
    buf = np.empty(n) if buf is None else buf
    for k in range(q):            # the tiny q dimension
        v = Z[:, k] if overwrite_z else np.array(Z[:, k], dtype=float)
        np.multiply(v, v, out=buf)
        norm0 = np.sqrt(np.add.reduceat(buf, starts))
        for _ in range(2):
            for i in range(k):
                np.multiply(Q[:, i], v, out=buf)
                c = np.add.reduceat(buf, starts)
                np.multiply(Q[:, i], np.repeat(c, counts), out=buf)   # rows sorted by group
                v -= buf
                R[i, k] += c
        if k:
            np.multiply(v, v, out=buf)
            nk = np.sqrt(np.add.reduceat(buf, starts))
        else:                     # nothing projected out of the first column
            nk = norm0
        ok = nk > tol * norm0
        kept[k] = ok
        R[k, k] = np.where(ok, nk, 0.0)
        np.multiply(v, np.repeat(np.where(ok, 1.0 / np.where(ok, nk, 1.0), 0.0), counts),
                    out=Q[:, k])
    return Q, np.ascontiguousarray(R.transpose(1, 0, 2)), kept


def _intercept_qr_stats(Zt: np.ndarray, Wt: np.ndarray, starts: np.ndarray,
                        counts: np.ndarray, tol: float = _QR_TOL, *,
                        buf: np.ndarray | None = None, const_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`group_qr`, the projections G_j and sum_j E_j'E_j when Z's first column is constant.

    The common random intercept (and slope): with a constant first column c of Z
    (q = 1 or 2) the per-group QR is closed-form, Q_j's first column is
    sign(c)/sqrt(n_j) and projecting it out of a column subtracts its group mean,
    so that every step is a per-group sum or a broadcast of the group values over
    several columns at once (rows sorted by group).

    Parameters
    ----------
    Zt : (q, n)
        The rows of Z' (Z's columns, each contiguous), ``Zt[0]`` constant and
        nonzero; overwritten by Q'.
    Wt : (r, n)
        The rows of W' (W's columns, each contiguous); overwritten by E'.
    starts, counts
        First row and row count of each group.
    buf : (n,), optional
        A float workspace.
    const_first : bool
        Whether W's first column is constant (X's intercept): its residuals are
        zero and its projections closed-form (s c_w sqrt(n_j) on the first column
        of Q_j, zero on the second).

    Returns
    -------
    F : (q, q, m), G : (q, r, m), within : (r, r)
        As :func:`group_qr` (F = R'), ``group_crossprod(Q, W)`` and
        ``_within_crossprod(W, Q, G)``, equal to them up to rounding.

    Notes
    -----
    Where the compiled row loops are in use (:func:`sm_hlm.engine.compiled.crows`)
    and ``Zt`` and ``Wt`` are float64 with contiguous rows, the same steps run in one
    loop over the groups (:mod:`sm_hlm.engine._crows`; the same roundings, the sums
    over a group in another order); otherwise as numpy passes over all rows.

    With Q_j0 = s / sqrt(n_j) (s the sign of c): R_j00 = |c| sqrt(n_j),
    G_j0 = s 1'W_j / sqrt(n_j), and W_j - Q_j0 G_j0 = W_j - 1 mean_j(W).  The
    second column z is centred within its group twice (Gram-Schmidt with one
    reorthogonalisation, as :func:`group_qr`): R_j01 = s (1'z_j + 1'z~_j) / sqrt(n_j)
    with z~ the once-centred column; it is aliased in group j when the norm of the
    centred column is at most ``tol`` times that of z_j (|z_j|^2 = |centred z_j|^2 +
    (1'z_j)^2 / n_j).  Then Q_j1 = z_j / R_j11,
    G_j1 = Q_j1'(W_j - 1 mean_j(W)) (equal to Q_j1'W_j, as Q_j1 is orthogonal to
    1) and E_j = W_j - 1 mean_j(W) - Q_j1 G_j1, formed from the rows.
    """
    q, n = Zt.shape
    r = Wt.shape[0]
    m = len(starts)
    crows = compiled.crows()
    if crows is not None and _contiguous_rows(Zt) and _contiguous_rows(Wt):
        # the same steps in one loop over the groups (sm_hlm.engine._crows); sum_j E_j'E_j
        # there too for a few columns, else by dot products of the residuals it leaves in Wt
        pairs = r - bool(const_first) <= _CROWS_PAIRS_MAX_R
        F, G = np.empty((q, q, m)), np.empty((q, r, m))
        within = np.empty((r, r)) if pairs else None
        crows.intercept_qr(Zt, Wt, np.ascontiguousarray(starts, dtype=np.int64), float(tol),
                           bool(const_first), F, G, within)
        return F, G, within if pairs else _gram(list(Wt))
    buf = np.empty(n) if buf is None else buf
    nj = counts.astype(float)
    root_n = np.sqrt(nj)
    c = float(Zt[0, 0])
    sign = 1.0 if c > 0 else -1.0
    F = np.zeros((q, q, m))
    G = np.empty((q, r, m))
    F[0, 0] = abs(c) * root_n
    first = 0
    if const_first and r:
        G[0, 0] = (sign * float(Wt[0, 0])) * root_n
        G[1:, 0] = 0.0
        Wt[0] = 0.0
        first = 1
    # one row (a column of W) at a time: a 2-d reduceat or repeat is no faster, and
    # row-sized temporaries only (a large one per call costs page faults)
    for i in range(first, r):
        w = Wt[i]
        s = np.add.reduceat(w, starts)
        np.multiply(s, sign / root_n, out=G[0, i])
        w -= np.repeat(s / nj, counts)                            # W - group means
    if q == 2:
        z = Zt[1]
        s1 = np.add.reduceat(z, starts)
        z -= np.repeat(s1 / nj, counts)
        s2 = np.add.reduceat(z, starts)                           # reorthogonalisation
        z -= np.repeat(s2 / nj, counts)
        F[1, 0] = (s1 + s2) * (sign / root_n)
        np.multiply(z, z, out=buf)
        nk2 = np.add.reduceat(buf, starts)
        nk = np.sqrt(nk2)
        # |z_j|^2 = |centred z_j|^2 + (1'z_j)^2 / n_j: the norm of the tolerance
        ok = nk > tol * np.sqrt(nk2 + s1 * s1 / nj)
        F[1, 1] = np.where(ok, nk, 0.0)
        z *= np.repeat(np.where(ok, 1.0 / np.where(ok, nk, 1.0), 0.0), counts)   # Q_1
        for i in range(first, r):
            w = Wt[i]
            np.multiply(w, z, out=buf)
            g = np.add.reduceat(buf, starts)
            G[1, i] = g
            np.multiply(np.repeat(g, counts), z, out=buf)
            w -= buf
    Zt[0] = np.repeat(sign / root_n, counts)
    return F, G, _gram(list(Wt))


#: Largest number of non-constant columns of W for which the compiled closed-form QR
#: also accumulates sum_j E_j'E_j (r (r + 1) / 2 products per row, in registers);
#: beyond it dot products of the residual columns are faster.
_CROWS_PAIRS_MAX_R = 5


#: Most columns of [X y] for which :func:`_fixed_map` takes the compiled Gram pass
#: (k (k + 1) / 2 products per row in registers; beyond it dot products are faster).
_CROWS_GRAM_MAX_K = 6


def _contiguous_rows(A: np.ndarray, *, writeable: bool = True) -> bool:
    """Whether ``A`` is a 2-d float64 array (writable unless ``writeable`` is false)
    with contiguous rows, as the compiled row loops of :mod:`sm_hlm.engine._crows`
    take them."""
    return (A.ndim == 2 and A.dtype == np.float64 and (A.flags.writeable or not writeable)
            and (A.shape[1] <= 1 or A.strides[1] == 8)
            and (A.shape[0] <= 1 or (A.strides[0] % 8 == 0 and A.strides[0] >= 8 * A.shape[1])))


#: Whether :func:`working_stats` uses the closed-form QR (:func:`_intercept_qr_stats`)
#: where it applies (unweighted rows, q <= 2, Z's first column constant)
_CLOSED_FORM_QR = True
#: Rows per block of :func:`working_stats` (blocks end at group boundaries).
_ROW_BLOCK = 1 << 16


def is_constant(x: np.ndarray) -> bool:
    """Whether a column is constant and nonzero (a prefix decides most varying columns)."""
    if not len(x) or x[0] == 0:
        return False
    head = x[:4096]
    if np.any(head != x[0]):
        return False
    return bool(np.all(x == x[0]))


def constant_columns(A: np.ndarray) -> np.ndarray:
    """:func:`is_constant` of each column of a 2-d array, as a boolean array.

    Float64 columns that are contiguous go to the compiled loop where it is in use
    (:func:`sm_hlm.engine.compiled.crows`): each column until its first differing entry.
    """
    n, k = A.shape
    out = np.zeros(k, dtype=bool)
    if not n or not k:
        return out
    crows = compiled.crows()
    if crows is not None and _contiguous_rows(A.T, writeable=False):
        crows.constant_columns(A.T, out)                   # each column until it differs
        return out
    first = A[0]
    # one comparison of a prefix of rows decides most varying columns
    cand = (first != 0) & ~(A[:4096] != first).any(axis=0)
    for i in np.flatnonzero(cand):                               # the few constant columns
        out[i] = bool(np.all(A[:, i] == first[i]))
    return out


def _fixed_map(X: np.ndarray, y: np.ndarray, const: np.ndarray, wbuf: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """The centring and scaling map D_0 of [X y] and the Gram matrix of [X y] D_0.

    The map of :func:`_column_map` with X's first constant column (if any) as the
    centring column of X and y (``const``: :func:`is_constant` of X's columns), the
    scales taken from the Gram matrix of the centred columns: one pass over the rows
    (plain blocks, in ``wbuf``) after their means, or both passes in the compiled row
    loops (:func:`sm_hlm.engine.compiled.crows`; at most ``_CROWS_GRAM_MAX_K`` columns,
    X with contiguous columns).  None when a column's scale is zero or not finite
    (:func:`_column_map` leaves such a column alone), or without X.
    """
    n, p = X.shape
    if not p or not n:
        return None
    k = p + 1
    cs = np.flatnonzero(const[:p])
    j0 = int(cs[0]) if len(cs) else None
    mu = np.zeros(k)
    gram0 = np.zeros((k, k))
    crows = compiled.crows()
    if (crows is not None and k <= _CROWS_GRAM_MAX_K and X.dtype == np.float64
            and _contiguous_rows(X.T, writeable=False) and y.dtype == np.float64
            and y.flags.c_contiguous):
        # both passes (the means, the products of the centred rows) in sm_hlm.engine._crows
        crows.centred_gram(X.T, y, -1 if j0 is None else j0, mu, gram0)
    else:
        if j0 is not None:              # columns after the constant one, and y, centred
            mu[j0 + 1:p] = np.add.reduce(X[:, j0 + 1:], axis=0) / n
            mu[p] = np.add.reduce(y) / n
        for a in range(0, n, _ROW_BLOCK):
            b = min(a + _ROW_BLOCK, n)
            Wb = wbuf[:b - a, :k]
            np.subtract(X[a:b], mu[:p], out=Wb[:, :p])
            np.subtract(y[a:b], mu[p], out=Wb[:, p])
            gram0 += _gram([Wb[:, i] for i in range(k)])
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1.0 / np.sqrt(np.diag(gram0) / n)
    if j0 is not None:
        scale[j0] = 1.0 / X[0, j0]
    if not np.all(np.isfinite(scale)):
        return None
    D = np.diag(scale)
    if j0 is not None:
        D[j0, j0 + 1:] = -mu[j0 + 1:] * scale[j0 + 1:] * scale[j0]
    return D, gram0 * np.outer(scale, scale)


def _column_map(cols: Sequence[np.ndarray], blocks: list[tuple[int, int, bool]], *,
                const: Sequence[bool] | None = None, buf: np.ndarray | None = None
                ) -> np.ndarray:
    """Upper-triangular map centring (within blocks that hold a constant column) and scaling.

    ``cols`` are the columns (1-d arrays of equal length, any row order); ``const``
    says which are constant and nonzero (computed when omitted); ``buf`` is an
    optional workspace for :func:`_centred_ss`.
    """
    k = len(cols)
    n = len(cols[0]) if k else 0
    if const is None:
        const = [is_constant(c) for c in cols]
    D = np.eye(k)
    for start, stop, shift in blocks:
        cs = [i for i in range(start, stop) if n and const[i]]
        j0 = cs[0] if (shift and cs) else None
        if j0 is not None:
            D[j0, j0] = 1.0 / cols[j0][0]
        for i in range(start, stop):
            if i == j0:
                continue
            x = cols[i]
            if j0 is not None and i > j0:
                mu = float(np.add.reduce(x)) / n              # x.mean(), without its wrapper
                s = float(np.sqrt(_centred_ss(x, mu, buf=buf) / n))
            else:
                mu, s = 0.0, float(np.sqrt(np.dot(x, x) / n))
            if not (np.isfinite(s) and s > 0):
                continue
            D[i, i] = 1.0 / s
            if mu:
                D[j0, i] = -mu / (cols[j0][0] * s)
    return D


def _centred_ss(x: np.ndarray, mu: float, block: int = 1 << 16, *,
                buf: np.ndarray | None = None) -> float:
    """sum_i (x_i - mu)^2 block by block (no row-sized temporary).

    ``buf``: a float workspace of at least ``min(block, len(x))`` entries (allocated
    when omitted).
    """
    if buf is None or len(buf) < min(block, len(x)):
        buf = np.empty(min(block, len(x)))
    total = 0.0
    for a in range(0, len(x), block):
        b = buf[:min(block, len(x) - a)]
        np.subtract(x[a:a + block], mu, out=b)
        total += float(np.dot(b, b))
    return total


def _group_blocks(starts: np.ndarray, n: int, size: int | None = None
                  ) -> list[tuple[int, int, int, int]]:
    """Blocks of whole groups of about ``size`` rows (default ``_ROW_BLOCK``), rows sorted.

    Returns ``(first row, end row, first group, end group)`` per block; a group with
    more rows than ``size`` is a block of its own.
    """
    size = _ROW_BLOCK if size is None else size
    m = len(starts)
    if not m or n <= size:
        return [(0, n, 0, m)]
    first = starts[np.searchsorted(starts, np.arange(0, n, size), side="right") - 1]
    bounds = np.unique(np.append(first, n))
    g_lo = np.searchsorted(starts, bounds)
    return [(int(a), int(b), int(ga), int(gb))
            for a, b, ga, gb in zip(bounds[:-1], bounds[1:], g_lo[:-1], g_lo[1:])]


def working_stats(X: np.ndarray, y: np.ndarray, Z: np.ndarray, starts: np.ndarray,
                  z_blocks: list[tuple[int, int, bool]], *,
                  precision_weights: np.ndarray | None = None,
                  survey_weights: Sequence[np.ndarray] | None = None,
                  order: np.ndarray | None = None, x_const: np.ndarray | None = None
                  ) -> tuple[SufficientStats, Reparametrization, np.ndarray]:
    """Sufficient statistics in centred and scaled coordinates, with the within part.

    Returns the statistics, the reparametrisation and the per-group
    orthonormal Q (n, q) of the working Z (:func:`group_qr`), rows sorted by group.

    Parameters
    ----------
    X, y, Z
        The rows, sorted by group, or in any order with ``order``.
    starts
        Index of each group's first row (in sorted order).
    z_blocks
        ``(start, stop, shift)`` per random-effects block of Z's columns;
        ``shift`` allows centring within the block (a correlated block).
    precision_weights : (n,), optional
        lme4's ``weights``: residual variance sigma^2 / w_i (rows as X).
    survey_weights : sequence of arrays, optional
        Pseudo-likelihood weights, already scaled: ``[w_{i|j} (n,), w_j (m,)]``,
        the rows' weights conditional on their group (rows as X), then the
        groups'.  Exclusive with ``precision_weights``.
    order : (n,) int, optional
        The permutation sorting the rows by group (``X[order]`` is sorted);
        None: the rows are sorted.  Rows are gathered block by block, never
        copied whole.
    x_const : (p,) bool, optional
        :func:`constant_columns` of X (computed when omitted).

    Notes
    -----
    X's columns are centred (when X holds a constant column, the first one)
    and scaled to unit RMS; y likewise when X has a constant column; then
    [X y] is orthonormalised by one step of Cholesky QR (D stays upper
    triangular), so near-collinear columns cost no digits; Z's
    columns are centred within correlated blocks that hold a constant
    column, and scaled.  The within-group residual cross product
    sum_j E_j'E_j is computed from the rows, so that no difference of large
    cross products enters the deviance.

    Weights scale the rows of X, y and Z by sqrt(w_i) (precision weights, or
    the conditional w_{i|j}); the maps D and T are those of the unweighted
    columns (any fixed column map is exact).  Group weights w_j multiply
    each group's part of ``within`` (and of ``WtW``); G_j is kept unweighted
    and :class:`ProfiledDeviance` weights G_j'M_j^{-1}G_j and log|M_j|.

    D_0 (the centring and scaling before the Cholesky QR step) takes its scales
    from the Gram matrix of the centred columns (:func:`_fixed_map`).  Unweighted
    rows whose Z has a constant first column and q <= 2 (a random intercept, or
    intercept and slope) use the closed-form per-group QR of
    :func:`_intercept_qr_stats` instead of :func:`group_qr`; the statistics are
    the same up to rounding.

    Every row-level step runs on blocks of whole groups of about
    ``_ROW_BLOCK`` rows (the column maps and the Gram matrix of the first
    map on plain blocks of rows), so that no transformed copy of [X y] or Z
    is ever formed and every row-sized temporary stays in the CPU cache.
    """
    if precision_weights is not None and survey_weights is not None:
        raise ValueError("precision weights and survey weights cannot be combined")
    n, p = X.shape
    q = Z.shape[1]
    # one column-major workspace for the blocks of W D (their leading rows) and a
    # scratch column, reused by every block and pass: no row-sized temporaries per block
    # (the blocks of Z T are formed in Q, the output)
    blocks = _group_blocks(starts, n)
    size = max([b - a for a, b, _, _ in blocks] + [min(n, _ROW_BLOCK)])
    wbuf = np.empty((size, p + 2), order="F")
    scratch = wbuf[:, p + 1]
    if x_const is None:
        x_const = constant_columns(X)
    mapped = _fixed_map(X, y, x_const, wbuf)
    if mapped is not None:
        D, gram = mapped
    else:                               # a column of zero scale, or no X: column by column
        wcols = [X[:, i] for i in range(p)] + [y]
        const = list(x_const) + [is_constant(y)]
        D = _column_map(wcols, [(0, p + 1, True)], const=const, buf=scratch)
        if p and not any(const[:p]):
            D = _column_map(wcols, [(0, p + 1, False)], const=const, buf=scratch)
        gram = np.zeros((p + 1, p + 1))
        for a in range(0, n, _ROW_BLOCK):          # the Gram matrix of W D, block by block
            b = min(a + _ROW_BLOCK, n)
            Wb = _w_times(X, y, slice(a, b), D, out=wbuf[:b - a])
            gram += Wb.T @ Wb
    # then orthonormalise the columns (one step of Cholesky QR): W~'W~ = I up to rounding,
    # so that near-collinear predictors do not cost digits in A(theta) and its factor
    try:
        U = np.linalg.cholesky(gram).T                           # upper, W~'W~ = U'U
        Dq = D @ np.linalg.inv(U)                                 # still upper triangular
        if np.all(np.isfinite(Dq)):
            D = Dq
    except np.linalg.LinAlgError:
        pass                            # aliased columns: the model's rank check reports them
    z_const = constant_columns(Z)
    T = (_column_map([Z[:, k] for k in range(q)], z_blocks, const=z_const, buf=scratch)
         if q else np.eye(0))
    m = len(starts)
    counts = np.diff(np.append(starts, n))
    row_w, group_w, weight_nobs, log_w = None, None, None, 0.0
    if precision_weights is not None:
        row_w = np.asarray(precision_weights, dtype=float)
        log_w = float(np.log(row_w).sum())
    elif survey_weights is not None:
        if len(survey_weights) != 2:
            raise NotImplementedError(
                f"{len(survey_weights)} levels of survey weights given: this engine has one "
                "grouping factor (two levels: rows, then groups)")
        row_w = np.asarray(survey_weights[0], dtype=float)
        group_w = np.asarray(survey_weights[1], dtype=float)
        sorted_w = row_w if order is None else row_w[order]
        weight_nobs = float(group_w @ np.add.reduceat(sorted_w, starts)) if n else 0.0
    sqrt_w = None if row_w is None else np.sqrt(row_w)
    Q = np.empty((n, q), order="F")
    F = np.empty((q, q, m))
    G = np.empty((q, p + 1, m))
    within = np.zeros((p + 1, p + 1))
    WtW = np.zeros((p + 1, p + 1))
    for a, b, ga, gb in blocks:
        rows = slice(a, b) if order is None else order[a:b]
        Wb = _w_times(X, y, rows, D, out=wbuf[:b - a])
        Zb = None
        if q:               # Z T formed where its Q goes (group_qr works in place)
            Zb = Q[a:b]
            np.matmul(T.T, _take_rows(Z, rows).T, out=Zb.T)
        if sqrt_w is not None:
            sw = sqrt_w[rows][:, None]
            Wb *= sw
            if q:
                Zb *= sw
        st = starts[ga:gb] - a
        gsc = None if group_w is None else np.repeat(np.sqrt(group_w[ga:gb]),
                                                      counts[ga:gb])[:, None]
        if not q:
            Wg = Wb if gsc is None else Wb * gsc
            WtW += Wg.T @ Wg
            continue
        if _CLOSED_FORM_QR and gsc is None and sqrt_w is None and q <= 2 and z_const[0]:
            # a random intercept (and slope), unweighted: the closed-form QR (Z T's first
            # column is T_00 times Z's, constant with it: T is upper triangular)
            # W D's first column is D_00 times X's: constant with X's (D upper triangular)
            Fb, Gb, wb = _intercept_qr_stats(Zb.T, Wb.T, st, counts[ga:gb],
                                             buf=scratch[:b - a],
                                             const_first=bool(p and x_const[0]))
            F[:, :, ga:gb] = Fb
            G[:, :, ga:gb] = Gb
            within += wb
            continue
        Qb, Fb, _ = group_qr(Zb, st, out=Zb, overwrite_z=True, buf=scratch[:b - a])
        Gb = group_crossprod(Qb, Wb, st)
        F[:, :, ga:gb] = Fb
        G[:, :, ga:gb] = Gb
        # the residuals E_j are formed in the workspace (W D is not needed again)
        if gsc is None:
            within += _within_crossprod(Wb, Qb, Gb, st, overwrite_w=True, buf=scratch[:b - a])
        else:
            # sum_j w_j E_j'E_j: the rows of group j scaled by sqrt(w_j), G_j likewise
            within += _within_crossprod(Wb * gsc, Qb, Gb * np.sqrt(group_w[ga:gb]), st,
                                        overwrite_w=True, buf=scratch[:b - a])
    if q:
        ZtZ = _lower_times(F, F.transpose(1, 0, 2))              # Z_j'Z_j = F_j F_j'
        ZtW = _lower_times(F, G)                                  # Z_j'W_j = F_j G_j
        # W_j'W_j = E_j'E_j + G_j'G_j (a sum of positive semi-definite terms): W'W
        # (group-weighted under survey weights) without another pass over the rows
        Gw = G if group_w is None else G * np.sqrt(group_w)
        Gf = Gw.transpose(1, 0, 2).reshape(p + 1, q * m)
        WtW = within + Gf @ Gf.T
    else:
        ZtZ, ZtW = np.zeros((0, 0, m)), np.zeros((0, p + 1, m))
        F = G = None
        within = None
    st = SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=WtW, nobs=n, k_fe=p,
                         within=WtW if within is None else within, root=F, proj=G,
                         group_weights=group_w, weight_nobs=weight_nobs, log_weight_sum=log_w,
                         column_gram=gram)
    return st, Reparametrization(D, T), Q


def _gram(cols: Sequence[np.ndarray]) -> np.ndarray:
    """The Gram matrix of a few long columns (contiguous 1-d arrays), by dot products.

    For a handful of columns of many rows this is faster than BLAS's syrk/gemm on the
    (n, k) matrix (which block for wide products); the same entries up to rounding.
    """
    k = len(cols)
    out = np.empty((k, k))
    for i in range(k):                                          # the few columns
        for j in range(i + 1):
            out[i, j] = out[j, i] = np.dot(cols[i], cols[j])
    return out


def _lower_times(F: np.ndarray, B: np.ndarray) -> np.ndarray:
    """F_j B_j for lower-triangular F (q, q, m) and B (q, r, m), over the tiny q only."""
    q = F.shape[0]
    out = np.empty((q,) + B.shape[1:])
    for a in range(q):
        np.multiply(F[a, 0], B[0], out=out[a])
        for k in range(1, a + 1):
            out[a] += F[a, k] * B[k]
    return out


def _w_times(X: np.ndarray, y: np.ndarray, rows: slice | np.ndarray,
             D: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[X y] D at ``rows`` (a slice or indices), with contiguous columns.

    D is upper triangular, so that X D[:p] gives every column and y adds D[p, p] y
    to the last one only: no copy of [X y] is formed.  ``out`` (rows, p + 2) with
    contiguous columns (e.g. the leading rows of a column-major buffer) receives it
    in its first p + 1 columns (the last is scratch), without row-sized temporaries.
    """
    p = X.shape[1]
    if out is None:
        out = (D[:p].T @ _take_rows(X, rows).T).T
        out[:, p] += D[p, p] * y[rows]
        return out
    res, scratch = out[:, :p + 1], out[:, p + 1]
    np.matmul(D[:p].T, _take_rows(X, rows).T, out=res.T)
    np.multiply(D[p, p], y[rows], out=scratch)
    res[:, p] += scratch
    return res


def _take_rows(A: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
    """``A[rows]``; for indices one column at a time (a gather from each contiguous
    column is several times faster than from the rows of a column-major array)."""
    if isinstance(rows, slice):
        return A[rows]
    out = np.empty((len(rows), A.shape[1]), order="F")
    for i in range(A.shape[1]):                      # the few columns
        np.take(A[:, i], rows, out=out[:, i])
    return out


def _within_crossprod(W: np.ndarray, Q: np.ndarray, G: np.ndarray,
                      starts: np.ndarray, *, overwrite_w: bool = False,
                      buf: np.ndarray | None = None) -> np.ndarray:
    """sum_j E_j'E_j with E_j = W_j - Q_j G_j (rows sorted by group), from the rows.

    Column by column with one reused buffer, the group values spread to the rows
    by :func:`numpy.repeat` (rows are sorted by group).  ``overwrite_w``: E is
    formed in W itself (a float workspace with contiguous columns).  ``buf`` (n,):
    an optional float workspace.
    """
    n, r = W.shape
    counts = np.diff(np.append(starts, n))
    E = W if overwrite_w else np.empty((n, r), order="F")
    buf = np.empty(n) if buf is None else buf
    q = Q.shape[1]
    for c in range(r):
        if not q:
            E[:, c] = W[:, c]
        for k in range(q):                                       # the tiny q dimension
            np.multiply(Q[:, k], np.repeat(G[k, c], counts), out=buf)
            np.subtract(W[:, c] if k == 0 else E[:, c], buf, out=E[:, c])
    return E.T @ E


def residual_quadratic(r: np.ndarray, Q: np.ndarray, starts: np.ndarray, F: np.ndarray | None,
                       lam: np.ndarray, *, group_weights: np.ndarray | None = None
                       ) -> tuple[float, float]:
    """r'V^{-1}r and log|V| for row residuals ``r`` (sorted by group), V = I + Z Lambda Lambda' Z'.

    ``Q`` and ``F`` are the per-group QR factors of Z (:func:`group_qr`).
    Evaluated in the stable form: the within-group residuals of r on Z_j plus
    g_j'M_j^{-1}g_j with g_j = Q_j'r_j, and log|V| = sum_j log|M_j|.  With
    ``group_weights`` w_j each group's two terms count w_j times (pseudo-likelihood).
    """
    q = Q.shape[1]
    n = len(r)
    c = compiled.csmall()
    if c is not None and group_weights is None and q in (1, 2) and len(starts):
        # one compiled pass over the rows (the same arithmetic, group by group)
        return c.quadratic(q, np.ascontiguousarray(r, dtype=float),
                           np.ascontiguousarray(Q.T, dtype=float),
                           np.ascontiguousarray(starts, dtype=np.int64),
                           np.ascontiguousarray(F, dtype=float),
                           np.ascontiguousarray(lam, dtype=float))
    sw = (None if group_weights is None
          else np.repeat(np.sqrt(group_weights), np.diff(np.append(starts, n))))
    if not q:
        rw = r if sw is None else r * sw
        return float(rw @ rw), 0.0
    m = len(starts)
    g = np.empty((q, 1, m))                                      # Q_j'r_j
    e2 = 0.0
    for a, b, ga, gb in _group_blocks(starts, n):      # blocks of whole groups, in cache
        st = starts[ga:gb] - a
        rb, Qb = r[a:b, None], Q[a:b]
        gj = group_crossprod(Qb, rb, st)
        g[:, :, ga:gb] = gj
        if sw is None:
            e2 += float(_within_crossprod(rb, Qb, gj, st)[0, 0])
        else:
            e2 += float(_within_crossprod(rb * sw[a:b, None], Qb,
                                          gj * np.sqrt(group_weights[ga:gb]), st)[0, 0])
    if q == 2:
        # K_j = R_j Lambda (R_j = F_j'), M_j = I + K_j K_j' and its Cholesky factor L_j in
        # closed form; H_j = L_j^{-1} g_j
        k00, k01, k10, k11 = (F[0, a] * lam[0, c] + F[1, a] * lam[1, c]
                              for a, c in ((0, 0), (0, 1), (1, 0), (1, 1)))
        l00 = np.sqrt(1.0 + k00 * k00 + k01 * k01)
        l10 = (k00 * k10 + k01 * k11) / l00
        l11 = np.sqrt(1.0 + k10 * k10 + k11 * k11 - l10 * l10)
        h0 = g[0, 0] / l00
        h1 = (g[1, 0] - l10 * h0) / l11
        hh = h0 * h0 + h1 * h1
        logdets = 2.0 * np.log(l00 * l11)
    else:
        K = np.einsum("bam,bc->acm", F, lam)
        M = np.einsum("acm,bcm->abm", K, K)
        M[np.arange(q), np.arange(q)] += 1.0
        L = batched_cholesky(M)
        H = batched_forward_solve(L, g)[:, 0, :]
        hh = np.sum(H * H, axis=0)
        logdets = 2.0 * np.log(L[np.arange(q), np.arange(q)]).sum(axis=0)     # (m,)
    if group_weights is None:
        return e2 + float(hh.sum()), float(logdets.sum())
    return e2 + float(hh @ group_weights), float(logdets @ group_weights)


def _within_work_bound(theta_t: np.ndarray) -> bool:
    """|theta~| <= :data:`_THETA_WORK_MAX` entrywise (False for NaN)."""
    return all(abs(v) <= _THETA_WORK_MAX for v in np.asarray(theta_t, dtype=float).tolist())


class ProfiledDeviance:
    """Callable profiled ML or REML deviance of theta, with its analytic gradient.

    Parameters
    ----------
    stats
        Sufficient statistics (kept as ``self.stats``; only their counts
        ``nobs`` and ``k_fe`` are read when ``work`` is given).
    lambda_
        Maps theta to the q x q relative covariance factor.
    reml
        REML criterion instead of -2 log-likelihood.
    work, reparam
        The statistics in working (centred and scaled) coordinates and the
        map between them (:func:`working_stats`); ``stats`` themselves when
        omitted.
    theta_index
        ``(rows, cols)`` of theta's entries in Lambda; needed for the
        gradient and the working parametrisation.

    Notes
    -----
    ``__call__``, :meth:`gradient` and :meth:`terms` take theta in the
    original coordinates.  :meth:`work_deviance` and :meth:`work_gradient`
    take theta~, the free entries of a lower-triangular Lambda~ in the working
    coordinates (what the optimiser sees); :meth:`theta_from_work` and
    :meth:`theta_to_work` map between the two exactly.
    """

    def __init__(self, stats: SufficientStats, lambda_, *, reml: bool,
                 work: SufficientStats | None = None, reparam: Reparametrization | None = None,
                 theta_index: tuple[np.ndarray, np.ndarray] | None = None):
        self.stats = stats
        self.lambda_ = lambda_
        self.reml = reml
        self.n_evals = 0
        self.work = stats if work is None else work
        q, p = stats.q, stats.k_fe
        self.reparam = reparam if reparam is not None else Reparametrization.identity(p, q)
        self.theta_index = theta_index
        w = self.work
        m = w.n_groups if q else 0
        self._q, self._m, self._p = q, m, p
        if q and w.root is not None:
            F, G = w.root, w.proj
        elif q:
            F, G, _ = root_factors(w.ZtZ, w.ZtW)
        else:
            F, G = np.zeros((0, 0, m)), np.zeros((0, p + 1, m))
        self._F = F                                   # (q, q, m), R_j = F_j'
        self._G = G                                   # (q, r, m)
        # pseudo-likelihood group weights w_j (None: all 1): G_j'M_j^{-1}G_j and log|M_j|
        # count w_j times, so the weighted terms use sqrt(w_j) G_j
        wg = w.group_weights
        self._wg = None if wg is None or not q else np.asarray(wg, dtype=float)
        self._Gw = G if self._wg is None else G * np.sqrt(self._wg)
        #: the count multiplying log(sigma^2) (N_w under survey weights) and sum log w_i
        self._n = stats.n_lik
        self._logw = float(stats.log_weight_sum)
        if w.within is not None:
            self._within = w.within
        else:
            Gf = G.transpose(1, 0, 2).reshape(p + 1, q * m)
            self._within = w.WtW - Gf @ Gf.T
            self._Gt = Gf.reshape(p + 1, q, m)       # the blocked kernels' layout, reused
        self._pairs = [(a, b) for a in range(q) for b in range(a, q)]
        self._pair_flat = np.array([a * q + b for a, b in self._pairs], dtype=int)
        self._S: np.ndarray | None = None
        self._FF: np.ndarray | None = None
        r = p + 1
        self._use_pairs = bool(q) and r * r * len(self._pairs) * m <= _PAIR_PRODUCT_LIMIT
        self._calls = 0
        # q <= 2, unweighted, the groups in one block: the fused kernel of sm_hlm.engine.small
        # the fused q <= 2 kernel: for any number of groups where it is compiled (one pass
        # over the groups, no temporaries but M_j^{-1}'s entries), up to a block of groups
        # in its numpy form (beyond, the blocked kernels keep the temporaries in cache)
        self._small_ok = (q in (1, 2) and self._wg is None and m > 0
                          and (m <= _CHUNK_GROUPS
                               or (_SMALL_ANY_M and compiled.csmall() is not None)))
        self._small_cache: dict[bytes, tuple | None] = {}
        self._small: SmallKernel | None = None
        rp = self.reparam
        n = self._n
        # deviance(original) = deviance(working) + const
        self._const = (2.0 * (n - p) * rp.log_scale_y - 2.0 * rp.logdet_Dx if reml
                       else 2.0 * n * rp.log_scale_y)

    # ------------------------------------------------------------ kernels
    def _build_pair_products(self) -> None:
        r, m = self._p + 1, self._m
        Gt = self._Gw.transpose(1, 0, 2)                           # (r, q, m)
        S = np.empty((r, r, len(self._pairs), m))
        for k, (a, b) in enumerate(self._pairs):
            prod = Gt[:, None, a, :] * Gt[None, :, b, :]
            S[:, :, k, :] = prod + prod.transpose(1, 0, 2) if a != b else prod
        self._S = S.reshape(r * r, len(self._pairs) * m)

    def _m_matrices(self, lam_t: np.ndarray) -> np.ndarray:
        """M_j = I + R_j Lambda~ Lambda~' R_j' as (q, q, m).

        M_j[a, d] = delta_ad + sum_{b,c} F_j[b, a] F_j[c, d] (Lambda~ Lambda~')[b, c]: one
        (q^2, q^2 m) product with the per-group coefficients F_j[b, a] F_j[c, d],
        precomputed when they fit in memory.
        """
        q, m = self._q, self._m
        if self._FF is None and q ** 4 * m <= 4 * _PAIR_PRODUCT_LIMIT:
            F = self._F                                          # FF[(b, c), (a, d), j]
            self._FF = np.ascontiguousarray(
                (F[:, :, None, None, :] * F[None, None, :, :, :]).transpose(0, 2, 1, 3, 4)
                .reshape(q * q, q * q * m))
        if self._FF is not None:
            M = ((lam_t @ lam_t.T).reshape(q * q) @ self._FF).reshape(q, q, m)
        else:
            K = np.einsum("bam,bc->acm", self._F, lam_t)         # R_j Lambda~ (q, q, m)
            M = np.einsum("acm,bcm->abm", K, K)
        M[np.arange(q), np.arange(q)] += 1.0
        return M

    def _system(self, lam_t: np.ndarray, *, need_inverse: bool = False
                ) -> tuple[np.ndarray, float, np.ndarray | None]:
        """A(theta), log|L|^2 and (when asked or cheaper) M_j^{-1} (q, q, m)."""
        q, m, r = self._q, self._m, self._p + 1
        if not q:
            return self._within.copy(), 0.0, None
        self._calls += 1
        if m > _CHUNK_GROUPS and not need_inverse and self._wg is None:
            A, logdet = self._blocked_system(lam_t)
            return A, logdet, None
        if self._S is None and self._use_pairs and self._calls >= 2:
            self._build_pair_products()
        M = self._m_matrices(lam_t)
        if q == 1:
            det = M[0, 0]
            logdet = self._wsum(np.log(det))
            Minv = (1.0 / det)[None, None, :]
        elif q == 2:
            det = M[0, 0] * M[1, 1] - M[0, 1] * M[0, 1]
            logdet = self._wsum(np.log(det))
            Minv = np.empty_like(M)
            Minv[0, 0] = M[1, 1] / det
            Minv[1, 1] = M[0, 0] / det
            Minv[0, 1] = Minv[1, 0] = -M[0, 1] / det
        elif self._S is not None or need_inverse:
            L = batched_cholesky(M)
            logdet = 2.0 * self._wsum(np.log(L[np.arange(q), np.arange(q)]).sum(axis=0))
            Li = batched_inverse_lower(L)
            Minv = np.einsum("kim,kjm->ijm", Li, Li)
        else:
            L = batched_cholesky(M)
            logdet = 2.0 * self._wsum(np.log(L[np.arange(q), np.arange(q)]).sum(axis=0))
            H = batched_forward_solve(L, self._Gw)                 # (q, r, m)
            Hf = H.transpose(1, 0, 2).reshape(r, q * m)
            return self._within + Hf @ Hf.T, logdet, None
        if self._S is not None:
            coef = Minv.reshape(q * q, m)[self._pair_flat]
            A = self._within + (self._S @ coef.reshape(-1)).reshape(r, r)
        else:
            MG = np.einsum("abm,brm->arm", Minv, self._Gw)
            A = self._within + np.einsum("asm,arm->sr", self._Gw, MG)
        return A, logdet, Minv

    def _wsum(self, per_group: np.ndarray) -> float:
        """sum_j w_j x_j (plain sum without group weights)."""
        return float(per_group.sum() if self._wg is None else per_group @ self._wg)

    # ------------------------------------------------ blocked kernels (many groups)
    def _blocks(self) -> list[slice]:
        m = self._m
        return [slice(a, min(a + _CHUNK_GROUPS, m)) for a in range(0, m, _CHUNK_GROUPS)]

    def _transposed_proj(self) -> np.ndarray:
        """G in the (r, q, m) layout of :func:`~sm_hlm.engine.linalg.batched_forward_solve_T`."""
        if getattr(self, "_Gt", None) is None:
            self._Gt = np.ascontiguousarray(self._G.transpose(1, 0, 2))
        return self._Gt

    def _block_factor(self, lam_t: np.ndarray, sl: slice) -> np.ndarray:
        """Lower Cholesky factors L_j of M_j = I + R_j Lambda~ Lambda~' R_j' for one block."""
        q = self._q
        if q <= 2:
            return self._block_factor_small(lam_t, sl)
        K = np.einsum("bam,bc->acm", self._F[:, :, sl], lam_t)      # R_j Lambda~ (q, q, c)
        M = np.einsum("acm,bcm->abm", K, K)
        M[np.arange(q), np.arange(q)] += 1.0
        return batched_cholesky(M)

    def _block_factor_small(self, lam_t: np.ndarray, sl: slice) -> np.ndarray:
        """Closed form of :meth:`_block_factor` for q <= 2 (:meth:`_small_factor_rows`)."""
        q = self._q
        l00, l10, l11 = self._small_factor_rows(lam_t @ lam_t.T, sl)
        L = np.zeros((q, q, l00.shape[0]))
        L[0, 0] = l00
        if q == 2:
            L[1, 0] = l10
            L[1, 1] = l11
        return L

    def _blocked_system(self, lam_t: np.ndarray) -> tuple[np.ndarray, float]:
        """A(theta) and log|L|^2, block by block over the groups.

        Notes
        -----
        With L_j L_j' = M_j and H_j = L_j^{-1} G_j, A = sum_j E_j'E_j + sum_j H_j'H_j;
        each block's H is one (r, q c) matrix, so its contribution is one matrix
        product.  Every temporary has the size of one block, which keeps the
        memory traffic per evaluation at one read of F and G.
        """
        q, r = self._q, self._p + 1
        if q <= 2:
            return self._blocked_system_small(lam_t)
        Gt = self._transposed_proj()
        A = self._within.copy()
        logdet = 0.0
        diag = np.arange(q)
        for sl in self._blocks():
            L = self._block_factor(lam_t, sl)
            logdet += 2.0 * float(np.log(L[diag, diag]).sum())
            H = batched_forward_solve_T(L, Gt[:, :, sl])             # (r, q, c)
            Hf = H.reshape(r, -1)
            A += Hf @ Hf.T
        return A, logdet

    def _blocked_system_small(self, lam_t: np.ndarray) -> tuple[np.ndarray, float]:
        """:meth:`_blocked_system` for q <= 2 in closed form, with reused block buffers.

        Notes
        -----
        With the per-group products P = (f0^2, f0 f1, f1^2, f0 f2, f1 f2, f2^2) of
        F_j = [[f0, 0], [f1, f2]] (precomputed once) and S = Lambda~ Lambda~', the
        entries of M_j - I are one (3, 6) x (6, c) product per block:
        M_00 - 1 = s00 P0 + 2 s01 P1 + s11 P2, M_01 = s01 P3 + s11 P4,
        M_11 - 1 = s11 P5.  Then H_j0 = G_j0 / l00, H_j1 = (G_j1 - l10 H_j0) / l11
        with l00 = sqrt(M_00), l10 = M_01 / l00, l11^2 = det M_j / M_00.
        """
        q, r, m = self._q, self._p + 1, self._m
        S = lam_t @ lam_t.T
        if getattr(self, "_Fprod", None) is None:
            F = self._F
            if q == 1:
                self._Fprod = (F[0, 0] * F[0, 0])[None, :]
            else:
                f0, f1, f2 = F[0, 0], F[1, 0], F[1, 1]
                self._Fprod = np.ascontiguousarray(
                    np.stack([f0 * f0, f0 * f1, f1 * f1, f0 * f2, f1 * f2, f2 * f2]))
        if q == 1:
            C = np.array([[S[0, 0]]])
        else:
            C = np.array([[S[0, 0], 2.0 * S[0, 1], S[1, 1], 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, S[0, 1], S[1, 1], 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, S[1, 1]]])
        Gt, P = self._transposed_proj(), self._Fprod
        A = self._within.copy()
        logdet = 0.0
        cmax = min(_CHUNK_GROUPS, m)
        H = np.empty((r, q, cmax))
        for a in range(0, m, cmax):
            sl = slice(a, min(a + cmax, m))
            k = sl.stop - a
            Mb = C @ P[:, sl]                                    # M_j - I (3, k) or (1, k)
            Mb[0] += 1.0
            Hb = H[:, :, :k]
            if q == 1:
                logdet += float(np.log(Mb[0]).sum())
                np.multiply(Gt[:, 0, sl], 1.0 / np.sqrt(Mb[0]), out=Hb[:, 0])
            else:
                Mb[2] += 1.0
                det = Mb[0] * Mb[2] - Mb[1] * Mb[1]
                logdet += float(np.log(det).sum())
                i00 = 1.0 / np.sqrt(Mb[0])
                l10 = Mb[1] * i00
                i11 = np.sqrt(Mb[0] / det)
                np.multiply(Gt[:, 0, sl], i00, out=Hb[:, 0])
                np.multiply(Hb[:, 0], l10, out=Hb[:, 1])
                np.subtract(Gt[:, 1, sl], Hb[:, 1], out=Hb[:, 1])
                Hb[:, 1] *= i11
            Hf = Hb.reshape(r, q * k)
            A += Hf @ Hf.T
        return A, logdet

    def _small_factor_rows(self, S: np.ndarray, sl: slice):
        """Closed-form l00, l10, l11 (None for q = 1) of L_j for the groups in ``sl``.

        With F_j = [[f0, 0], [f1, f2]] (R_j = F_j') and S = Lambda~ Lambda~':
        M_00 = 1 + f0^2 s00 + 2 f0 f1 s01 + f1^2 s11, M_01 = f2 (f0 s01 + f1 s11),
        M_11 = 1 + f2^2 s11, then the 2 x 2 Cholesky factor.
        """
        F = self._F
        f0 = F[0, 0, sl]
        if self._q == 1:
            return np.sqrt(1.0 + S[0, 0] * f0 * f0), None, None
        f1, f2 = F[1, 0, sl], F[1, 1, sl]
        m00 = 1.0 + f0 * (S[0, 0] * f0 + 2.0 * S[0, 1] * f1) + S[1, 1] * f1 * f1
        m01 = f2 * (S[0, 1] * f0 + S[1, 1] * f1)
        m11 = 1.0 + S[1, 1] * f2 * f2
        l00 = np.sqrt(m00)
        l10 = m01 / l00
        return l00, l10, np.sqrt(m11 - l10 * l10)

    def _blocked_gradient_small(self, lam_t: np.ndarray, RX: np.ndarray, u: np.ndarray,
                                pwrss: float) -> np.ndarray:
        """:meth:`_blocked_gradient_inner` for q <= 2 in closed form.

        Notes
        -----
        J_j = L_j^{-1} R_j with R_j = [[f0, f1], [0, f2]]: J00 = f0 / l00,
        J01 = f1 / l00, J10 = -l10 J00 / l11, J11 = (f2 - l10 J01) / l11; h_j = L_j^{-1}
        (G_j u) by the same forward substitution; v_j = J_j' h_j.
        """
        q, p, r = self._q, self._p, self._p + 1
        S = lam_t @ lam_t.T
        Gt = self._transposed_proj()
        F = self._F
        dof = self.stats.nobs - p if self.reml else self.stats.nobs
        reml_x = self.reml and p
        RXinv = np.linalg.inv(RX) if reml_x else None
        inner = np.zeros((q, q))
        for sl in self._blocks():
            k = sl.stop - sl.start
            l00, l10, l11 = self._small_factor_rows(S, sl)
            g = (u @ Gt[:, :, sl].reshape(r, q * k)).reshape(q, k)      # G_j u
            J00 = F[0, 0, sl] / l00
            h0 = g[0] / l00
            if q == 1:
                v = (J00 * h0)[None, :]
                inner[0, 0] += float(J00 @ J00)
                Kx = (J00 * (Gt[:p, 0, sl] / l00))[:, None, :] if reml_x else None
            else:
                J01 = F[1, 0, sl] / l00
                J10 = -l10 * J00 / l11
                J11 = (F[1, 1, sl] - l10 * J01) / l11
                h1 = (g[1] - l10 * h0) / l11
                v = np.stack([J00 * h0 + J10 * h1, J01 * h0 + J11 * h1])
                inner[0, 0] += float(J00 @ J00 + J10 @ J10)
                inner[0, 1] += float(J00 @ J01 + J10 @ J11)
                inner[1, 1] += float(J01 @ J01 + J11 @ J11)
                if reml_x:
                    H0 = Gt[:p, 0, sl] / l00
                    H1 = (Gt[:p, 1, sl] - l10 * H0) / l11
                    Kx = np.stack([J00 * H0 + J10 * H1, J01 * H0 + J11 * H1], axis=1)
            inner -= (dof / pwrss) * (v @ v.T)
            if reml_x:
                Y = (RXinv @ Kx.reshape(p, q * k)).reshape(p, q, k)
                Yf = Y.transpose(1, 0, 2).reshape(q, p * k)
                inner -= Yf @ Yf.T
        if q == 2:
            # P was accumulated in the upper triangle only; v v' and Y'Y are symmetric
            inner[1, 0] = inner[0, 1]
        return inner

    def _blocked_gradient_inner(self, lam_t: np.ndarray, RX: np.ndarray, u: np.ndarray,
                                pwrss: float) -> np.ndarray:
        """The bracket of the gradient (see the module notes), block by block.

        With J_j = L_j^{-1} R_j and H_j = L_j^{-1} G_j: P_j = J_j'J_j,
        K_j = J_j'H_j and v_j = J_j'(H_j u).
        """
        q, p = self._q, self._p
        if q <= 2:
            return self._blocked_gradient_small(lam_t, RX, u, pwrss)
        Gt = self._transposed_proj()
        dof = self.stats.nobs - p if self.reml else self.stats.nobs
        inner = np.zeros((q, q))
        for sl in self._blocks():
            L = self._block_factor(lam_t, sl)
            Rj = np.ascontiguousarray(self._F[:, :, sl].transpose(1, 0, 2))   # R_j = F_j'
            J = batched_forward_solve(L, Rj)                               # (q, q, c)
            H = batched_forward_solve_T(L, Gt[:, :, sl])                   # (r, q, c)
            h = np.einsum("rac,r->ac", H, u)                               # H_j u (q, c)
            v = np.einsum("bac,bc->ac", J, h)                              # J_j' H_j u
            inner += np.einsum("bac,bdc->ad", J, J) - (dof / pwrss) * (v @ v.T)
            if self.reml and p:
                Kx = np.einsum("bac,rbc->rac", J, H[:p])                   # K_jx' (p, q, c)
                Y = np.linalg.solve(RX, Kx.reshape(p, -1)).reshape(p, q, -1)
                inner -= np.einsum("pac,pbc->ab", Y, Y)
        return inner

    def _small_kernel(self) -> SmallKernel:
        if self._small is None:
            self._small = SmallKernel(self._F, self._transposed_proj(), self._within)
        return self._small

    def _reduced(self, lam_t: np.ndarray):
        """Cholesky factor of A, r^2, log|L|^2, log|R_X|^2 (working coordinates) or None."""
        if not np.all(np.isfinite(lam_t)):
            return None
        if self._small_ok:
            out = self._small_reduced(lam_t)
            return None if out is None else out[:4]
        p = self._p
        A, logdet_L, Minv = self._system(lam_t)
        try:
            R = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        pwrss = R[p, p] ** 2
        if not (np.isfinite(pwrss) and pwrss > 0 and np.isfinite(logdet_L)):
            return None
        return R, pwrss, logdet_L, 2.0 * float(np.log(np.diag(R)[:p]).sum())

    def _profiled(self, pwrss: float, logdet_L: float, logdet_RX: float) -> float:
        """The deviance in the coordinates its arguments are in (no reparametrisation
        constant; with precision weights it includes -sum_i log w_i)."""
        n, p = self._n, self.stats.k_fe
        if not pwrss > 0:
            return np.inf
        if self.reml:
            dof = n - p
            return float(logdet_L + logdet_RX + dof * (1.0 + LOG2PI + math.log(pwrss / dof))
                         - self._logw)
        return float(logdet_L + n * (1.0 + LOG2PI + math.log(pwrss / n)) - self._logw)

    def _small_reduced(self, lam_t: np.ndarray):
        """:meth:`_reduced` by the fused q <= 2 kernel, followed by the kernel's per-group
        factor pieces (for the gradient); None where A is not positive definite.

        The last two points' results are kept: a deviance evaluated and then
        differentiated at the same point (the start; a line search's accepted
        step) is factored once."""
        key = lam_t.tobytes()
        cache = self._small_cache
        if key in cache:
            return cache[key]
        out = self._small_kernel().factor(lam_t)
        red = None
        if out is not None:
            R, logdet_L = out[0], out[1]
            p = self._p
            diag = R.diagonal().tolist()
            pwrss = diag[p] ** 2
            if pwrss > 0 and math.isfinite(pwrss):
                logdet_RX = 2.0 * sum(map(math.log, diag[:p]))
                red = (R, pwrss, logdet_L, logdet_RX, out[2])
        if len(cache) >= 2:
            del cache[next(iter(cache))]
        cache[key] = red
        return red

    def _small_eval(self, lam_t: np.ndarray, *, grad: bool):
        """The deviance (and the gradient's inner matrix, see :meth:`_gradient_inner`) at
        Lambda~ by the fused q <= 2 kernel;
        None where it is not defined.  (A small model's evaluation is dominated by fixed
        per-call costs, hence one path with the checks merged.)"""
        red = self._small_reduced(lam_t)
        if red is None:
            return None
        R, pwrss, logdet_L, logdet_RX, pieces = red
        dev = self._profiled(pwrss, logdet_L, logdet_RX) + self._const
        if not grad:
            return dev
        p = self._p
        dof = self._n - p if self.reml else self._n
        inner = self._small_kernel().gradient_inner(R, pieces, p=p, dof=dof, pwrss=pwrss,
                                                    reml=self.reml)
        return dev, inner

    # ------------------------------------------------ parametrisations
    def _lambda_work_of_theta(self, theta: np.ndarray) -> np.ndarray:
        lam = self.lambda_(np.asarray(theta, dtype=float))
        return lam if self.reparam.is_identity else self.reparam.Tinv @ lam

    def _lambda_of_work(self, theta_t: np.ndarray) -> np.ndarray:
        rows, cols = self._index()
        lam = np.zeros((self._q, self._q))
        lam[rows, cols] = theta_t
        return lam

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self.theta_index is None:
            raise RuntimeError("this deviance was built without theta_index: the gradient and "
                               "the working parametrisation need it")
        return self.theta_index

    @staticmethod
    def _lower_factor(M: np.ndarray) -> np.ndarray:
        """A lower-triangular L with L L' = M M' (LQ decomposition), diagonal >= 0."""
        if not M.size:
            return M
        if M.shape == (1, 1):
            return np.abs(M)
        if M.shape == (2, 2):       # rows m0, m1: l00 = |m0|, l10 = m1.m0 / l00, l11 = |det| / l00
            a, b, c, d = M.ravel().tolist()
            l00 = math.hypot(a, b)
            if l00 > 0.0:
                return np.array([[l00, 0.0], [(a * c + b * d) / l00, abs(a * d - b * c) / l00]])
            return np.array([[0.0, 0.0], [0.0, math.hypot(c, d)]])
        Q, R = np.linalg.qr(M.T)
        L = R.T
        s = np.where(np.diag(L) < 0, -1.0, 1.0)
        return L * s[None, :]

    def theta_from_work(self, theta_t: np.ndarray) -> np.ndarray:
        """theta (original coordinates) of the factor T Lambda~(theta~)."""
        rows, cols = self._index()
        lam = self._lambda_of_work(theta_t)
        if self.reparam.is_identity:
            return np.asarray(theta_t, dtype=float).copy()
        L = self._lower_factor(self.reparam.T @ lam)
        # entries at rounding level of their row are zeros of Lambda~ (a boundary fit)
        L[np.abs(L) <= 1e-13 * np.linalg.norm(L, axis=1, keepdims=True)] = 0.0
        out = L[rows, cols]
        diag = rows == cols
        return np.where(diag, np.abs(out), out)

    def theta_to_work(self, theta: np.ndarray) -> np.ndarray:
        """theta~ (working coordinates) of the factor T^{-1} Lambda(theta)."""
        rows, cols = self._index()
        if self.reparam.is_identity:
            return np.asarray(theta, dtype=float).copy()
        L = self._lower_factor(self._lambda_work_of_theta(theta))
        out = L[rows, cols]
        return np.where(rows == cols, np.abs(out), out)

    def moment_start(self) -> np.ndarray:
        """theta~ from the per-group OLS moments of the OLS residuals (working coordinates).

        Notes
        -----
        With u = (-beta_OLS, 1), each group with a full-rank Z_j gives
        b_j = (Z_j'Z_j)^{-1} Z_j' r_j = R_j^{-1} G_j u; sigma^2 is estimated by
        the within-group residual u' (sum_j E_j'E_j) u / (n - sum_j rank_j - p),
        and the random-effects variances by the method of moments,
        Var_j(b_jk) - sigma^2 mean_j [(Z_j'Z_j)^{-1}]_kk.  The start is the
        diagonal factor sqrt(psi_kk / sigma^2), clipped to [0.05, 1e4]; where
        psi_kk <= 0 (a variance the moments cannot see) lme4's 1, or
        max(0.1, a tenth of the smallest seen factor) when the deviance is lower
        there (two evaluations); the identity (lme4's start) where too few groups
        have a full-rank Z_j.
        """
        rows, cols = self._index()
        q, p = self._q, self._p
        ident = np.where(rows == cols, 1.0, 0.0)
        if not q:
            return ident
        w = self.work
        try:
            beta = np.linalg.solve(w.WtW[:p, :p], w.WtW[:p, p]) if p else np.zeros(0)
        except np.linalg.LinAlgError:
            return ident
        u = np.append(-beta, 1.0)
        F = self._F
        kern = self._small_kernel() if self._small_ok else None
        compiled_pass = kern is not None and kern.compiled
        if compiled_pass:
            # the moments in one compiled pass over the groups (the forms below)
            n_full, rank, var_b, mean_sinv = kern.moments(u)
            every = True
        else:
            positive = np.diagonal(F, axis1=0, axis2=1).T > 0          # (q, m)
            full = positive.all(axis=0)
            n_full = int(full.sum())
            every = n_full == self._m
            rank = int(positive.sum())
        if n_full < q + 2:
            return ident
        dof = max(self.stats.nobs - rank - p, 1)
        sigma2 = float(u @ self._within @ u) / dof
        if not (np.isfinite(sigma2) and sigma2 > 0):
            return ident
        if compiled_pass:
            pass                                # var_b and mean_sinv came from that pass
        elif q <= 2:
            # closed forms on every group (the rank-deficient ones given unit roots and
            # weight 0 in the moments): no copies of F and G
            g = u @ self._G                                         # G_j u (q, m)
            wt = None if every else full.astype(float)
            diag = [F[i, i] if every else np.where(full, F[i, i], 1.0) for i in range(q)]
            b = np.empty_like(g)
            Sinv_diag = np.empty_like(g)
            if q == 1:
                np.divide(g[0], diag[0], out=b[0])
                np.divide(1.0, diag[0] * diag[0], out=Sinv_diag[0])
            else:                                 # R_j = [[f0, f1], [0, f2]]
                f0, f1, f2 = diag[0], F[1, 0], diag[1]
                np.divide(g[1], f2, out=b[1])
                np.divide(g[0] - f1 * b[1], f0, out=b[0])
                # diag((F F')^{-1}) = (1 / f0^2 + (f1 / (f0 f2))^2, 1 / f2^2)
                np.divide(1.0, f2 * f2, out=Sinv_diag[1])
                np.multiply(f1 * f1, Sinv_diag[1], out=Sinv_diag[0])
                Sinv_diag[0] += 1.0
                Sinv_diag[0] /= f0 * f0
            if wt is None:
                b -= b.mean(axis=1, keepdims=True)
                var_b = np.einsum("am,am->a", b, b) / n_full
                mean_sinv = Sinv_diag.mean(axis=1)
            else:
                b -= ((b @ wt) / n_full)[:, None]
                var_b = ((b * b) @ wt) / n_full
                mean_sinv = (Sinv_diag @ wt) / n_full
        else:
            keep = np.flatnonzero(full)
            Ff, g = F.take(keep, axis=2), u @ self._G.take(keep, axis=2)
            b = np.zeros_like(g)
            for i in range(q - 1, -1, -1):      # back-solve R_j b_j = g_j (R_j = F_j')
                v = g[i] - (np.einsum("km,km->m", Ff[i + 1:, i], b[i + 1:])
                            if i < q - 1 else 0.0)
                b[i] = v / Ff[i, i]
            Finv = batched_inverse_lower(Ff)
            Sinv_diag = np.einsum("kam,kam->am", Finv, Finv)     # diag((F F')^{-1})
            b -= b.mean(axis=1, keepdims=True)
            var_b = np.einsum("am,am->a", b, b) / n_full
            mean_sinv = Sinv_diag.mean(axis=1)
        psi = var_b - sigma2 * mean_sinv
        # a variance the moments cannot see starts at lme4's 1, not near the boundary
        d = np.minimum(np.maximum(np.sqrt(np.maximum(psi, 0.0) / sigma2), 0.05), 1e4)
        unseen = ~(psi > 0)
        start = np.where(rows == cols, np.where(unseen, 1.0, d)[rows], 0.0)
        if unseen.any() and unseen.sum() < q:
            # a variance the moments cannot see: lme4's 1, or a tenth of it or of the smallest
            # seen ratio when the deviance says so (two evaluations; never near the boundary)
            alt = np.where(rows == cols, np.where(unseen, max(0.1, 0.1 * d[~unseen].min()),
                                                  d)[rows], 0.0)
            if self.work_deviance(alt) < self.work_deviance(start):
                start = alt
        return start

    # --------------------------------------------------------- deviance
    def work_deviance(self, theta_t: np.ndarray) -> float:
        """The deviance (original scale) at theta~ in working coordinates.

        Infinite beyond |theta~| = 1e7 (variance ratios of 1e14 in the working
        units: sigma^2 -> 0, where the map back to the original coordinates
        loses its digits), so that an optimiser following a deviance that
        decreases without end stops there, and says it did not converge.
        """
        self.n_evals += 1
        if not _within_work_bound(theta_t):
            return np.inf
        if self._small_ok:
            out = self._small_eval(self._lambda_of_work(theta_t), grad=False)
            return np.inf if out is None else out
        red = self._reduced(self._lambda_of_work(theta_t))
        return np.inf if red is None else self._profiled(*red[1:]) + self._const

    def __call__(self, theta: np.ndarray) -> float:
        self.n_evals += 1
        red = self._reduced(self._lambda_work_of_theta(theta))
        return np.inf if red is None else self._profiled(*red[1:]) + self._const

    def _gradient_matrix(self, lam_t: np.ndarray) -> tuple[float, np.ndarray] | None:
        """Deviance and its derivative with respect to Lambda~'s entries (q x q)."""
        out = self._gradient_inner(lam_t)
        return None if out is None else (out[0], 2.0 * out[1] @ lam_t)

    def _gradient_inner(self, lam_t: np.ndarray) -> tuple[float, np.ndarray] | None:
        """Deviance and the symmetric q x q matrix B with d deviance / d Lambda~ = 2 B Lambda~.

        B depends on Lambda~ only through Lambda~ Lambda~' (as the deviance does).
        """
        q, p, m = self._q, self._p, self._m
        if not q:
            return None
        if self._small_ok:
            return self._small_eval(lam_t, grad=True) if np.isfinite(lam_t).all() else None
        blocked = m > _CHUNK_GROUPS and self._wg is None     # the blocked kernels are unweighted
        A, logdet_L, Minv = self._system(lam_t, need_inverse=not blocked)
        try:
            R = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        pwrss = R[p, p] ** 2
        if not (np.isfinite(pwrss) and pwrss > 0):
            return None
        RX = R[:p, :p]
        logdet_RX = 2.0 * float(np.log(np.diag(RX)).sum())
        beta = np.linalg.solve(RX.T, R[p, :p]) if p else np.zeros(0)
        u = np.append(-beta, 1.0)
        if blocked:
            inner = self._blocked_gradient_inner(lam_t, RX, u, pwrss)
            dev = self._profiled(pwrss, logdet_L, logdet_RX) + self._const
            return dev, inner
        F, G = self._F, self._Gw
        # sum_j w_j R_j' M_j^-1 R_j
        P = np.einsum("abm,bcm,dcm->ad", F, Minv if self._wg is None else Minv * self._wg, F)
        MG = np.einsum("abm,brm->arm", Minv, G)                    # M_j^-1 G_j
        K = np.einsum("abm,brm->arm", F, MG)                       # R_j' M_j^-1 G_j  (q, r, m)
        v = np.einsum("arm,r->am", K, u)                           # (q, m)
        dof = self._n - p if self.reml else self._n
        inner = P - (dof / pwrss) * (v @ v.T)
        if self.reml and p:
            Kx = K[:, :p, :].transpose(1, 0, 2).reshape(p, q * m)
            Y = np.linalg.solve(RX, Kx).reshape(p, q, m)            # R_X^{-1} K_jx'
            inner = inner - np.einsum("pam,pbm->ab", Y, Y)
        dev = self._profiled(pwrss, logdet_L, logdet_RX) + self._const
        return dev, inner

    def work_gradient(self, theta_t: np.ndarray) -> tuple[float, np.ndarray]:
        """Deviance and its gradient in theta~ (working coordinates)."""
        rows, cols = self._index()
        if not _within_work_bound(theta_t):
            return np.inf, np.full(len(rows), np.nan)
        lam_t = self._lambda_of_work(theta_t)
        # the fused q <= 2 kernel directly (lam_t finite: within the bound)
        out = (self._small_eval(lam_t, grad=True) if self._small_ok
               else self._gradient_inner(lam_t))
        if out is None:
            return np.inf, np.full(len(rows), np.nan)
        if self._q <= 2:            # d/dLambda~ = 2 B Lambda~ on Python floats (tiny q)
            B, L = out[1].tolist(), lam_t.tolist()
            return out[0], np.array([2.0 * sum(B[a][k] * L[k][c] for k in range(len(L)))
                                     for a, c in self._index_list()])
        return out[0], (2.0 * out[1] @ lam_t)[rows, cols]

    def _index_list(self) -> list[tuple[int, int]]:
        """theta's (row, column) positions in Lambda as Python ints."""
        pairs = self.__dict__.get("_index_pairs")
        if pairs is None:
            rows, cols = self._index()
            pairs = self._index_pairs = list(zip(np.asarray(rows).tolist(),
                                                 np.asarray(cols).tolist()))
        return pairs

    def theta_and_gradient(self, theta_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """theta (original coordinates) of theta~, and the gradient of the deviance there.

        The gradient is :meth:`gradient` at that theta, from the inner matrix B
        at theta~ (the same Lambda Lambda' up to rounding; B depends on nothing
        else), so that an end point the optimiser has just evaluated is not
        factored again.
        """
        theta = self.theta_from_work(theta_t)
        rows, cols = self._index()
        lam_t = self._lambda_of_work(theta_t)
        out = self._gradient_inner(lam_t) if np.isfinite(lam_t).all() else None
        if out is None:
            return theta, np.full(len(rows), np.nan)
        return theta, self._original_gradient(2.0 * out[1] @ self._lambda_work_of_theta(theta))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """Gradient of the deviance in theta (original coordinates)."""
        rows, cols = self._index()
        out = self._gradient_matrix(self._lambda_work_of_theta(theta))
        if out is None:
            return np.full(len(rows), np.nan)
        return self._original_gradient(out[1])

    def _original_gradient(self, G: np.ndarray) -> np.ndarray:
        """The gradient in theta from d deviance / d Lambda~ at Lambda~ = T^{-1} Lambda(theta)."""
        rows, cols = self._index()
        g = G if self.reparam.is_identity else self.reparam.Tinv.T @ G
        return g[rows, cols]

    # ------------------------------------------------------------ results
    def terms(self, theta: np.ndarray) -> DevianceTerms | None:
        """All pieces at ``theta`` (original coordinates); None where A is not PD."""
        p = self._p
        red = self._reduced(self._lambda_work_of_theta(theta))
        if red is None:
            return None
        Rw, pwrss_w, logdet_L, logdet_RX_w = red
        rp = self.reparam
        D = rp.D
        beta_w = np.linalg.solve(Rw[:p, :p].T, Rw[p, :p]) if p else np.zeros(0)
        beta = (D[:p, :p] @ beta_w - D[:p, p]) / D[p, p]
        R = np.linalg.solve(D.T, Rw)                   # D^{-T} R~: lower triangular
        return DevianceTerms(theta=np.asarray(theta, float), R=R, beta=beta,
                             pwrss=float(pwrss_w) * np.exp(2.0 * rp.log_scale_y),
                             logdet_L=logdet_L,
                             logdet_RX=logdet_RX_w - 2.0 * rp.logdet_Dx)

    def conditional_modes(self, theta: np.ndarray, beta: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """BLUPs b_j (m, q) and their conditional covariances / sigma^2 (q, q, m).

        b~_j = Lambda~ Lambda~' R_j' M_j^{-1} G_j u~ in working coordinates
        (u~ = (-beta~, 1)); b_j = T b~_j / D[p, p].  The covariance is
        Lambda (I + Lambda' Z_j'Z_j Lambda)^{-1} Lambda'.

        Notes
        -----
        For q <= 2 both come from the closed-form K_j^{-1} = (I + Lambda~' R_j'R_j
        Lambda~)^{-1} (:meth:`~sm_hlm.engine.small.SmallKernel.k_inverse_entries`):
        b~_j = Lambda~ K_j^{-1} Lambda~' R_j' g_j (Lambda~ Lambda~' R_j' M_j^{-1} =
        Lambda~ K_j^{-1} Lambda~' R_j') and cov~_j = Lambda~ K_j^{-1} Lambda~', whose
        entries are linear in those of K_j^{-1} (no difference of large terms).
        """
        q, p, m = self._q, self._p, self._m
        if not q:
            return np.zeros((m, 0)), np.zeros((0, 0, m))
        rp = self.reparam
        D = rp.D
        # u~ proportional to D^{-1} u: beta~ from beta
        uw = np.linalg.solve(D, np.append(-np.asarray(beta, float), 1.0))
        uw = uw / uw[-1]
        lam_t = self._lambda_work_of_theta(theta)
        # Cov(b_j) = sigma^2 T cov~_j T' (sigma~^2 = sigma^2 D[p, p]^2 cancels the 1 / D[p, p])
        if self._small_ok and self._small_kernel().compiled:
            # the same closed forms in one compiled pass over the groups
            return self._small_kernel().conditional_modes(uw, lam_t, rp.T @ lam_t,
                                                          1.0 / D[p, p])
        g = np.einsum("arm,r->am", self._G, uw)                    # (q, m)
        if self._small_ok:
            Kinv = self._small_kernel().k_inverse_entries(lam_t)
            y = lam_t.T @ np.einsum("abm,bm->am", self._F, g)        # Lambda~' R_j' g_j
            if q == 1:
                z = Kinv * y
            else:
                z = Kinv[:2] * y[0]                                  # K_j^{-1} y_j
                z += Kinv[1:] * y[1]
            TLm = rp.T @ lam_t
            b = (TLm @ z) / D[p, p]
            TL = TLm.tolist()
            cov = np.empty((q, q, m))
            if q == 1:
                cov[0, 0] = TL[0][0] ** 2 * Kinv[0]
                return b.T, cov
            (a0, a1), (b0, b1) = TL
            E = np.array([[a0 * a0, 2.0 * a0 * a1, a1 * a1],
                          [a0 * b0, a0 * b1 + a1 * b0, a1 * b1],
                          [b0 * b0, 2.0 * b0 * b1, b1 * b1]]) @ Kinv
            cov[0, 0], cov[0, 1], cov[1, 1] = E
            cov[1, 0] = E[1]
            return b.T, cov
        Minv = self._system(lam_t, need_inverse=True)[2]
        Mg = np.einsum("abm,bm->am", Minv, g)
        Rt = np.einsum("abm,bm->am", self._F, Mg)                  # R_j' M_j^-1 g_j
        LLt = lam_t @ lam_t.T
        b = (rp.T @ (LLt @ Rt)) / D[p, p]
        # conditional covariance / sigma^2 in working coordinates (Woodbury):
        # Lambda~ (I + Lambda~' S_j Lambda~)^{-1} Lambda~' = LLt - LLt R_j' M_j^{-1} R_j LLt
        RL = np.einsum("bam,bc->acm", self._F, LLt)               # R_j LLt (q, q, m)
        MRL = np.einsum("abm,bcm->acm", Minv, RL)                  # M_j^{-1} R_j LLt
        cov_w = LLt[:, :, None] - np.einsum("acm,adm->cdm", RL, MRL)
        cov = np.einsum("acm,dc->adm", np.einsum("ab,bcm->acm", rp.T, cov_w), rp.T)
        return b.T, cov

    def from_terms(self, t: DevianceTerms) -> float:
        return self._profiled(t.pwrss, t.logdet_L, t.logdet_RX)

    def scale(self, t: DevianceTerms) -> float:
        """The profiled sigma^2: r^2 / n (ML) or r^2 / (n - p) (REML); N_w for n
        under survey weights."""
        n, p = self._n, self.stats.k_fe
        return t.pwrss / (n - p if self.reml else n)

    def deviance_at(self, theta: np.ndarray, beta: np.ndarray, scale: float) -> float:
        """-2 log-likelihood (or REML criterion) at given theta, beta and sigma^2.

        Not profiled: used for the observed information of the covariance
        parameters.  For REML ``beta`` is ignored (the criterion does not
        depend on it).
        """
        n, p = self._n, self.stats.k_fe
        t = self.terms(theta)
        if t is None:
            return np.inf
        if self.reml:
            return (t.logdet_L + t.logdet_RX + (n - p) * (LOG2PI + np.log(scale))
                    + t.pwrss / scale - self._logw)
        # pwrss(beta) = r^2 + |R_X'(beta - beta_theta)|^2
        RX = t.R[:p, :p]
        pw = t.pwrss + float(np.sum((RX.T @ (np.asarray(beta) - t.beta)) ** 2))
        return t.logdet_L + n * (LOG2PI + np.log(scale)) + pw / scale - self._logw
