"""Batched small-matrix linear algebra over groups.

Per-group matrices are stored *q-major*: a stack of m matrices of size
q x r is an array of shape ``(q, r, m)``.  Loops run over the tiny matrix
dimensions (q is the number of random effects per group, usually 1-3) while
every operation is vectorised over the m groups, which keeps the number of
numpy calls per objective evaluation small and independent of m.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
from threadpoolctl import ThreadpoolController

__all__ = [
    "aliased_columns",
    "batched_cholesky",
    "single_blas_thread",
    "batched_forward_solve",
    "batched_forward_solve_T",
    "batched_back_solve",
    "batched_inverse_lower",
    "group_crossprod",
    "sequential_rank_cholesky",
    "ALIAS_TOL",
]


def batched_cholesky(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack of SPD matrices.

    Parameters
    ----------
    M : ndarray, shape (q, q, m)
        Symmetric positive-definite matrices, q-major.

    Returns
    -------
    L : ndarray, shape (q, q, m)
        Lower-triangular, ``M[:, :, j] = L[:, :, j] @ L[:, :, j].T``.
    """
    q = M.shape[0]
    if q <= 4:
        return _cholesky_small(M)
    L = np.zeros_like(M)
    for j in range(q):
        if j:
            s = M[j, j] - np.einsum("km,km->m", L[j, :j], L[j, :j])
        else:
            s = M[j, j]
        d = np.sqrt(s)
        L[j, j] = d
        if j + 1 < q:
            if j:
                L[j + 1:, j] = (M[j + 1:, j] - np.einsum("ikm,km->im", L[j + 1:, :j], L[j, :j])) / d
            else:
                L[j + 1:, j] = M[j + 1:, j] / d
    return L


def _cholesky_small(M: np.ndarray) -> np.ndarray:
    """Cholesky for q <= 4 with scalar loops over the tiny dimension."""
    q = M.shape[0]
    L = np.zeros_like(M)
    for j in range(q):
        s = M[j, j]
        for k in range(j):
            s = s - L[j, k] * L[j, k]
        d = np.sqrt(s)
        L[j, j] = d
        inv = 1.0 / d
        for i in range(j + 1, q):
            v = M[i, j]
            for k in range(j):
                v = v - L[i, k] * L[j, k]
            L[i, j] = v * inv
    return L


def batched_forward_solve_T(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L X_j = B_j`` with right-hand sides stored (r, q, m).

    The same as :func:`batched_forward_solve` in the transposed layout used by
    the deviance kernel (so that sum_j X_j'X_j is one matrix product).
    """
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q):
        v = B[:, i]
        for k in range(i):
            v = v - L[i, k] * X[:, k]
        X[:, i] = v / L[i, i]
    return X


def batched_forward_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L X = B`` for lower-triangular ``L`` (q, q, m) and ``B`` (q, r, m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q):
        if i:
            X[i] = (B[i] - np.einsum("km,krm->rm", L[i, :i], X[:i])) / L[i, i]
        else:
            X[i] = B[i] / L[i, i]
    return X


def batched_back_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L' X = B`` for lower-triangular ``L`` (q, q, m) and ``B`` (q, r, m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q - 1, -1, -1):
        if i < q - 1:
            X[i] = (B[i] - np.einsum("km,krm->rm", L[i + 1:, i], X[i + 1:])) / L[i, i]
        else:
            X[i] = B[i] / L[i, i]
    return X


def batched_inverse_lower(L: np.ndarray) -> np.ndarray:
    """Inverse of each lower-triangular matrix of a (q, q, m) stack."""
    q, _, m = L.shape
    eye = np.broadcast_to(np.eye(q)[:, :, None], (q, q, m))
    return batched_forward_solve(L, np.ascontiguousarray(eye))


def group_crossprod(A: np.ndarray, B: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-group cross products ``A_j' B_j`` of row-sorted matrices.

    Parameters
    ----------
    A : ndarray, shape (n, a)
    B : ndarray, shape (n, b)
        Rows sorted by group.
    starts : ndarray of int, shape (m,)
        Index of each group's first row.

    Returns
    -------
    ndarray, shape (a, b, m)
        q-major stack of ``A_j' B_j``.
    """
    n, a = A.shape
    b = B.shape[1]
    out = np.empty((a, b, len(starts)))
    if n == 0 or not len(starts):
        out[...] = 0.0
        return out
    # one contiguous column at a time (a 1-d reduceat is several times faster than a 2-d
    # one along axis 0), the row products in one reused buffer
    Af = [np.ascontiguousarray(A[:, k]) for k in range(a)]
    Bf = Af if B is A else [np.ascontiguousarray(B[:, c]) for c in range(b)]
    buf = np.empty(n)
    for k in range(a):
        for c in range(b):
            if B is A and c < k:
                out[k, c] = out[c, k]
                continue
            np.multiply(Af[k], Bf[c], out=buf)
            out[k, c] = np.add.reduceat(buf, starts)
    return out


#: Squared-norm tolerance for an aliased column: R's ``lm`` drops a column whose
#: norm after projection is below 1e-7 of its own (about 1e-14 on squared norms);
#: 1e-12 leaves room for rounding in a Gram matrix.
ALIAS_TOL = 1e-12


def sequential_rank_cholesky(M: np.ndarray, tol: float = ALIAS_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky of a stack of PSD matrices that drops aliased columns in order.

    Column k is declared aliased in matrix j when its squared residual after
    projecting on the kept earlier columns is at most ``tol`` times its squared
    norm, which is what R's ``lm`` (Gram-Schmidt with pivoting of later
    columns) does.  A dropped column gets a unit row and column in ``L``, so
    ``L`` restricted to the kept columns is their Cholesky factor and ``L``
    itself solves systems whose right-hand side is zero at dropped columns.

    Parameters
    ----------
    M : ndarray, shape (q, q, m)
        Gram matrices ``X_j' X_j`` (q-major).

    Returns
    -------
    L : ndarray, shape (q, q, m)
        Lower factor of the kept columns (dropped rows/columns zero off the
        diagonal, one on it).
    kept : ndarray of bool, shape (q, m)
    """
    q, _, m = M.shape
    L = np.zeros_like(M)
    kept = np.zeros((q, m), dtype=bool)
    for j in range(q):
        s = M[j, j] - np.einsum("km,km->m", L[j, :j], L[j, :j]) if j else M[j, j].copy()
        ok = s > tol * np.maximum(M[j, j], np.finfo(float).tiny)
        kept[j] = ok
        L[j, :j] = np.where(ok, L[j, :j], 0.0)     # a dropped row is a unit row
        d = np.where(ok, np.sqrt(np.where(ok, s, 1.0)), 1.0)
        L[j, j] = d
        if j + 1 < q:
            num = M[j + 1:, j] - (np.einsum("ikm,km->im", L[j + 1:, :j], L[j, :j]) if j else 0.0)
            L[j + 1:, j] = np.where(ok, num / d, 0.0)
    return L, kept


def aliased_columns(exog: np.ndarray) -> list[int]:
    """Columns of X that R's ``qr(X, tol = 1e-7)`` (lme4's rank check) finds aliased.

    A column is aliased when the norm of its residual on the earlier
    columns is below 1e-7 of its own norm (columns centred when X has a
    constant column, so that the answer does not depend on where a
    predictor's zero is).  A Cholesky of the normalised cross product
    answers at once where every column is far from that line; otherwise a
    QR decomposition of the columns decides, as R does.
    """
    X = np.array(exog, dtype=float)
    const = (np.ptp(X, axis=0) == 0) & (X[0] != 0) if len(X) else np.zeros(0, bool)
    if const.any():
        # with an intercept, a shift of a column changes nothing: judge centred columns
        # (the check is invariant under the reparametrisations the estimates are)
        X[:, ~const] -= X[:, ~const].mean(axis=0)
    X = X / np.maximum(np.linalg.norm(X, axis=0), np.finfo(float).tiny)
    L, kept = sequential_rank_cholesky((X.T @ X)[:, :, None], tol=1e-10)
    if kept.all():
        return []
    R = np.linalg.qr(X, mode="r")
    norms = np.linalg.norm(X, axis=0)
    return [int(i) for i in np.flatnonzero(np.abs(np.diag(R)) < 1e-7 * norms)]


_CONTROLLER: ThreadpoolController | None = None


def single_blas_thread() -> AbstractContextManager:
    """A context in which BLAS runs on one thread (restored on exit).

    Used around the dense factorisation of the blocked engine, where threaded
    BLAS competes with the caller on a machine with few cores; entering and
    leaving costs ~25 us (the controller, which inspects the loaded libraries,
    is created once).  (For the one-factor kernels pinning made no measurable
    difference on this 2-core machine: OpenBLAS runs their small products on
    one thread anyway.)
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
