"""Symbolic analysis of the blocked system: term order, nesting, patterns, cross products.

Everything here is done once per model; an evaluation of the deviance
(:mod:`sm_hlm.engine.blocked`) then does no symbolic work.

Notes
-----
Write Z = [Z_1 ... Z_K] (terms sorted as below) and W = [X y].  The
symmetric matrix

    Omega(theta) = [Lambda'Z'Z Lambda + I   Lambda'Z'W]
                   [W'Z Lambda              W'W       ]

is factored block by block (one block row/column per term, and a last one,
the pseudo-term "[X y]" with one level and S = p + 1 columns).

*Order.*  Terms are sorted by S_k * n_levels_k, largest first (MixedModels.jl).

*Nesting.*  Term l is nested in term k when every level of l occurs with
exactly one level of k.  The leading terms 0..J-1 form the block-diagonal
(BD) prefix: term 0 always, and term k as long as term k-1 is in it and every
earlier term is nested in k.  Their diagonal blocks stay block diagonal
(S_k x S_k per level, stored (S_k, S_k, m_k)) during the factorization: the
rank update of block (k, k) from column l < k only touches (level, level)
blocks because each level of l has one parent level in k.  The levels of each
BD term are renumbered so that they are grouped by their parent in the next
BD term (hence by every ancestor).

*Blocks below a BD column j.*  (a) The later BD terms and [X y]: every level
of j has exactly one block in each of them, so they are stored together as one
(R_j, S_j, m_j) array (R_j = sum of their S); eliminating j updates them by
per-level products summed within each parent level (a fixed 0/1 sparse
matrix, ``aggregate``), and the [X y] x [X y] block by one matrix product.
(b) The terms of the dense block D (crossed with j): block (i, j) is the list
of co-occurring (level of i, level of j) pairs, each an S_i x S_j block,
sorted by the level of j.  Eliminating j updates block (i, k) by
L[i, j] L[k, j]' summed over the levels of j: each pair of stored blocks with
the same level of j (a *triple*) adds an S_i x S_k product into a fixed
position, enumerated here once.  For column 0, whose blocks below are
untouched by earlier columns, that update is linear in
G_c = Lambda_0 M_c^{-1} Lambda_0' (M_c = Lambda_0' Z_c'Z_c Lambda_0 + I), so it
is stored as one sparse matrix P with P @ vec(G) the update before the
Lambda_i, Lambda_k transforms (the pair-product idea of
:mod:`sm_hlm.engine.deviance`): no symbolic work and no gathers per evaluation.  No
fill-in happens outside these patterns: a level of a BD column lies inside
one level of each later BD term.

*Dense block.*  All terms after the BD prefix and the [X y] pseudo-term form
one dense symmetric block D (size N_D = sum S_k m_k + p + 1), filled from the
cross products, updated by the BD columns, and factored by LAPACK.  For a
strictly nested model D is only (p+1) x (p+1); for crossed factors it holds
the smaller factors (InstEval: 1128 + 14 levels).  Before anything large is
allocated its size (and that of the triples) is compared with the available
memory, and a MemoryError names the factors.
"""
from __future__ import annotations

import dataclasses

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .terms import RETerm, parent_levels

__all__ = ["Pattern", "UpdateGroup", "BlockedStructure", "available_memory"]


def available_memory() -> int:
    """Bytes of memory available (``MemAvailable`` of /proc/meminfo, else physical)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


@dataclass(frozen=True)
class Pattern:
    """Co-occurring (level of i, level of j) pairs of block (i, j), sorted by (j, i) level.

    ``start[c]:start[c+1]`` are the pairs of level c of j.
    """

    rows: np.ndarray
    cols: np.ndarray
    start: np.ndarray
    n_rows: int

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> np.ndarray:
        return self.cols.astype(np.int64) * self.n_rows + self.rows


@dataclass
class UpdateGroup:
    """The products L[i, j]_p L[k, j]_q' of BD column j that update block (i, k).

    Attributes
    ----------
    i, k : int
        Target block (i >= k > j).
    p, q : ndarray
        The stored blocks of L[i, j] and L[k, j] of each triple (same level of j).
    flat : ndarray, shape (S_i, S_k, T)
        Each product entry's position: a flat index into D when ``in_dense``,
        else into the (S_i, S_k, size) storage of block (i, k).
    sym_twice : ndarray of bool
        Products at off-diagonal positions of the symmetric matrix (they
        enter a quadratic form twice; used by the selected inverse).
    mode : str
        How an evaluation applies the group: ``"direct"`` (products then a
        scatter-add) or ``"linear"``
        (column 0 only: the update is linear in G_c = Lambda_0 M_c^{-1} Lambda_0',
        one sparse matrix-vector product ``P @ vec(G)`` followed by the
        Lambda transform of the target blocks).
    d_slot : ndarray or None
        For direct groups into D: index into the column's compressed list of
        touched positions.
    P : scipy.sparse.csr_matrix or None
        Linear mode: rows (alpha, beta, target block), columns (s, t, level of 0).
    lin_flat : ndarray or None
        Linear mode: positions (S_i, S_k, blocks) of the target blocks.
    """

    i: int
    k: int
    p: np.ndarray
    q: np.ndarray
    flat: np.ndarray
    in_dense: bool
    sym_twice: np.ndarray
    mode: str = "direct"
    d_slot: np.ndarray | None = None
    P: object = None
    lin_flat: np.ndarray | None = None

    def __post_init__(self) -> None:
        # ``p`` / ``q`` that take every stored block in order need no gather
        self.p_gather = None if np.array_equal(self.p, np.arange(len(self.p))) else self.p
        self.q_gather = None if np.array_equal(self.q, np.arange(len(self.q))) else self.q


class BlockedStructure:
    """Terms in factorization order, nesting, patterns, cross products and triples.

    Parameters
    ----------
    terms
        Random-effects terms in the caller's order.
    exog, endog
        Fixed-effects design X (n x p) and response y (n,).
    memory_limit
        Bytes the dense block and the update lists may use; default the
        available memory.  A model that needs more raises MemoryError before
        anything large is allocated.
    nobs
        The number of observations the rows stand for (default: the rows).
        Rows whose cross products equal those of ``nobs`` observations
        (e.g. per-cell pseudo-rows, :mod:`sm_hlm.scale.cells`) give the same
        deviance when ``nobs`` is given.

    Attributes
    ----------
    order : ndarray
        Caller's index of each term in factorization order.
    J : int
        Number of block-diagonal columns.
    refs, level_order : list of ndarray
        Level codes used internally and, per term, the caller's level of each
        internal level (the BD terms' levels are sorted by their parent level
        in the next BD term, so that every ancestor's levels are contiguous).
    stack_rows : list of list of (int, int)
        Per BD column j, the blocks below it stored together in one
        (R_j, S_j, m_j) array: the later BD terms (nested parents of j) and
        [X y], each with its first row in the stack.
    crossed_rows : list of list of int
        Per BD column j, the terms of the dense block: their blocks below j
        are pair lists updated through triples.
    aggregate : dict
        (j, k) -> the 0/1 sparse matrix (m_k x m_j) that sums the levels of j
        inside each level of the BD term k > j (the levels of j are sorted
        by their parent, so its rows are contiguous runs).
    updates : list of list of UpdateGroup
        Per BD column j, the triple groups whose target lies in a crossed row
        or in D.
    """

    def __init__(self, terms: Sequence[RETerm], exog: np.ndarray, endog: np.ndarray, *,
                 memory_limit: int | None = None, nobs: int | None = None):
        X = np.asarray(exog, dtype=float)
        y = np.asarray(endog, dtype=float).ravel()
        if X.ndim != 2 or X.shape[0] != len(y):
            raise ValueError(f"exog must be 2-d with {len(y)} rows, got shape {X.shape}")
        if not terms:
            raise ValueError("at least one random-effects term is needed")
        for t in terms:
            if len(t.refs) != len(y):
                raise ValueError(f"factor {t.factor!r} has {len(t.refs)} rows, endog has {len(y)}")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("exog and endog must be finite")
        self.n_rows, self.k_fe = len(y), X.shape[1]
        self.nobs = self.n_rows if nobs is None else int(nobs)
        self.r = self.k_fe + 1
        W = np.column_stack([X, y])
        sizes = np.array([t.S * t.n_levels for t in terms])
        # sort by S_k * levels_k, largest first; stable for ties
        self.order = np.argsort(-sizes, kind="stable")
        self.terms = [terms[k] for k in self.order]
        K = self.K = len(self.terms)
        self.S = [t.S for t in self.terms] + [self.r]
        self.m = [t.n_levels for t in self.terms] + [1]
        nested = [[k != l and parent_levels(self.terms[l].refs, self.terms[k].refs,
                                            self.terms[l].n_levels) is not None
                   for k in range(K)] for l in range(K)]
        J = 1
        while J < K and all(nested[l][J] for l in range(J)):
            J += 1
        self.J = J
        self._order_levels()
        # parent[l][k]: level of k of each (internal) level of l, None if l is not nested in k
        self.parent = [[parent_levels(self.refs[l], self.refs[k], self.m[l]) if nested[l][k]
                        else None for k in range(K)] for l in range(K)]
        # dense block layout: terms J..K-1, then [X y]
        self.d_offset = {}
        off = 0
        for k in range(J, K + 1):
            self.d_offset[k] = off
            off += self.S[k] * self.m[k]
        self.N_D = off
        self.d_terms = off - self.r          # rows of D that belong to random effects
        self._check_memory(memory_limit, before_triples=True)

        # ---- cross products and patterns
        self.A_diag = [self._crossprod(t.z, t.z, self.refs[k], t.n_levels)
                       for k, t in enumerate(self.terms)]
        self.WtW = W.T @ W
        self.patterns: dict[tuple[int, int], Pattern] = {}
        self.A_off: dict[tuple[int, int], np.ndarray] = {}
        for j in range(K):
            tj, rj = self.terms[j], self.refs[j]
            for i in range(j + 1, K + 1):
                if i == K:
                    pat = Pattern(np.zeros(tj.n_levels, np.intp), np.arange(tj.n_levels),
                                  np.arange(tj.n_levels + 1), 1)
                    A = self._crossprod(W, tj.z, rj, tj.n_levels)
                else:
                    ti = self.terms[i]
                    pat, inv = self._pattern(self.refs[i], rj, self.m[i], self.m[j],
                                             self.parent[j][i])
                    A = self._pairprod(ti.z, tj.z, inv, pat.size)
                self.patterns[(i, j)] = pat
                self.A_off[(i, j)] = A

        # ---- the blocks below each BD column
        self.stack_rows, self.crossed_rows, self.A_stack = [], [], []
        self.aggregate: dict[tuple[int, int], sparse.csr_matrix] = {}
        for j in range(J):
            rows, pos = [], 0
            for i in list(range(j + 1, J)) + [K]:
                rows.append((i, pos))
                pos += self.S[i]
            self.stack_rows.append(rows)
            self.crossed_rows.append(list(range(J, K)))
            self.A_stack.append(np.concatenate([self.A_off[(i, j)] for i, _ in rows], axis=0))
            for k in range(j + 1, J):
                par = self.parent[j][k]
                if not np.all(np.diff(par) >= 0):
                    raise AssertionError("levels of a nested term are not grouped by parent")
                self.aggregate[(j, k)] = sparse.csr_matrix(
                    (np.ones(self.m[j]), (par, np.arange(self.m[j]))), shape=(self.m[k], self.m[j]))
        self.R_stack = [sum(self.S[i] for i, _ in rows) for rows in self.stack_rows]

        # ---- triple groups touching the dense block's terms
        self._check_triples(memory_limit)
        self.updates: list[list[UpdateGroup]] = []
        self.d_update_pos: list[np.ndarray] = []
        for j in range(J):
            groups = [self._triples(i, k, j) for k, i in self._crossed_pairs(j)]
            for g in groups:
                self._choose_mode(g, j)
            direct = [g for g in groups if g.in_dense and g.mode == "direct"]
            if direct:
                uniq, inv = np.unique(np.concatenate([g.flat.ravel() for g in direct]),
                                      return_inverse=True)
                pos = 0
                for g in direct:
                    g.d_slot = inv[pos:pos + g.flat.size]
                    pos += g.flat.size
                self.d_update_pos.append(uniq)
            else:
                self.d_update_pos.append(np.zeros(0, np.int64))
            self.updates.append(groups)
        #: whether column j has groups applied through G_c (column 0 only)
        self.linear_columns = [any(g.mode == "linear" for g in gs) for gs in self.updates]

        # ---- where the cross products go in D
        fill_pos = []
        for k in range(J, K + 1):
            for i in range(k, K + 1):
                fill_pos.append(self._dense_flat(i, k, *self._block_levels(i, k)).ravel())
        self.d_fill_pos = np.concatenate(fill_pos)
        dt = np.arange(self.d_terms)
        self.d_term_diag = dt * self.N_D + dt

    def with_response(self, exog: np.ndarray, endog: np.ndarray) -> "BlockedStructure":
        """The same structure for another response and the same number of X columns.

        Only the cross products that involve [X y] are recomputed (W'W and
        W'Z_k); the random-effects cross products, patterns and update plans
        are shared.  Used to evaluate quadratic forms of residuals, e.g. the
        log-likelihood at given estimates.
        """
        import copy

        X = np.asarray(exog, dtype=float)
        y = np.asarray(endog, dtype=float).ravel()
        if X.shape != (self.n_rows, self.k_fe) or len(y) != self.n_rows:
            raise ValueError(f"exog must have shape {(self.n_rows, self.k_fe)} and endog "
                             f"{self.n_rows} rows")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("exog and endog must be finite")
        new = copy.copy(self)
        W = np.asfortranarray(np.column_stack([X, y]))      # contiguous columns for bincount
        K = self.K
        new.WtW = W.T @ W
        new.A_off = dict(self.A_off)
        for j, t in enumerate(self.terms):
            new.A_off[(K, j)] = self._crossprod(W, t.z, self.refs[j], t.n_levels)
        new.A_stack = [np.concatenate([new.A_off[(i, j)] for i, _ in rows], axis=0)
                       for j, rows in enumerate(self.stack_rows)]
        # linear-mode update groups hold products of cross products: redo those with [X y]
        new.updates = [list(gs) for gs in self.updates]
        for j, gs in enumerate(new.updates):
            for idx, g in enumerate(gs):
                if g.mode == "linear" and K in (g.i, g.k):
                    g2 = dataclasses.replace(g, mode="direct", P=None, lin_flat=None)
                    new._choose_mode(g2, j)
                    gs[idx] = g2
        return new

    def _crossed_pairs(self, j: int) -> list[tuple[int, int]]:
        """(k, i), i >= k > j, of the updates of column j that involve a dense-block term."""
        K, J = self.K, self.J
        return [(k, i) for k in range(j + 1, K + 1) for i in range(k, K + 1)
                if J <= i < K or J <= k < K]

    def all_pairs(self, j: int, *, with_x: bool = False) -> list[tuple[int, int]]:
        """(k, i), i >= k > j, of every random-effects block updated by column j.

        With ``with_x`` the [X y] pseudo-term (index K) is included.
        """
        top = self.K + 1 if with_x else self.K
        return [(k, i) for k in range(j + 1, top) for i in range(k, top)]

    def _order_levels(self) -> None:
        """Internal level codes: BD terms' levels grouped by their parent in the next BD term."""
        K, J = self.K, self.J
        self.refs = [t.refs for t in self.terms]
        self.level_order = [np.arange(t.n_levels) for t in self.terms]
        for k in range(J - 2, -1, -1):
            par = parent_levels(self.refs[k], self.refs[k + 1], self.m[k])
            order = np.lexsort((np.arange(self.m[k]), par))
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            self.refs[k] = rank[self.refs[k]]
            self.level_order[k] = order

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _crossprod(a: np.ndarray, b: np.ndarray, refs: np.ndarray, m: int) -> np.ndarray:
        """Per-level a_l'b_l, shape (cols a, cols b, m)."""
        out = np.empty((a.shape[1], b.shape[1], m))
        for s in range(a.shape[1]):
            for t in range(b.shape[1]):
                out[s, t] = np.bincount(refs, weights=a[:, s] * b[:, t], minlength=m)
        return out

    @staticmethod
    def _pairprod(a: np.ndarray, b: np.ndarray, inv: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((a.shape[1], b.shape[1], size))
        for s in range(a.shape[1]):
            for t in range(b.shape[1]):
                out[s, t] = np.bincount(inv, weights=a[:, s] * b[:, t], minlength=size)
        return out

    @staticmethod
    def _pattern(ri: np.ndarray, rj: np.ndarray, mi: int, mj: int,
                 parent: np.ndarray | None) -> tuple[Pattern, np.ndarray]:
        """Co-occurrence pattern of (i, j) and each row's pair index."""
        if parent is not None:                       # j nested in i: one pair per level of j
            return Pattern(parent, np.arange(mj), np.arange(mj + 1), mi), rj
        key = rj.astype(np.int64) * mi + ri
        uniq, inv = np.unique(key, return_inverse=True)
        cols = (uniq // mi).astype(np.intp)
        start = np.searchsorted(cols, np.arange(mj + 1))
        return Pattern((uniq % mi).astype(np.intp), cols, start, mi), inv.ravel()

    def _block_levels(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(level of i, level of k) of the stored blocks of A[i, k] (i >= k)."""
        if i == k:
            lv = np.arange(self.m[k])
            return lv, lv
        pat = self.patterns[(i, k)]
        return pat.rows, pat.cols

    def _dense_flat(self, i: int, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flat positions in D of the S_i x S_k blocks at levels (a, b), (S_i, S_k, len(a))."""
        Si, Sk, N = self.S[i], self.S[k], self.N_D
        row = self.d_offset[i] + a * Si
        col = self.d_offset[k] + b * Sk
        al = np.arange(Si)[:, None, None]
        be = np.arange(Sk)[None, :, None]
        return (row[None, None, :] + al).astype(np.int64) * N + (col[None, None, :] + be)

    def _triples(self, i: int, k: int, j: int) -> UpdateGroup:
        """Pairs of stored blocks of (i, j) and (k, j) sharing a level of j."""
        Pi, Pk = self.patterns[(i, j)], self.patterns[(k, j)]
        cnt_k = np.diff(Pk.start)
        reps = cnt_k[Pi.cols]
        T = int(reps.sum())
        p = np.repeat(np.arange(Pi.size), reps)
        first = np.repeat(np.cumsum(reps) - reps, reps)
        q = Pk.start[Pi.cols][p] + (np.arange(T) - first)
        a, b = Pi.rows[p], Pk.rows[q]
        if i == k:
            keep = a >= b                   # lower triangle of a symmetric target
            p, q, a, b = p[keep], q[keep], a[keep], b[keep]
        sym_twice = (a != b) | (i != k)
        if k >= self.J:
            flat = self._dense_flat(i, k, a, b)
            return UpdateGroup(i, k, p, q, flat, True, sym_twice)
        Si, Sk = self.S[i], self.S[k]
        if i == k:
            blk, size = a, self.m[k]
        else:
            Pik = self.patterns[(i, k)]
            keys = Pik.keys
            want = b.astype(np.int64) * Pik.n_rows + a
            blk = np.searchsorted(keys, want)
            if not np.array_equal(keys[np.minimum(blk, len(keys) - 1)], want):
                raise AssertionError("fill-in outside the pattern of a block-diagonal column")
            size = Pik.size
        idx = np.arange(Si * Sk).reshape(Si, Sk, 1) * size
        return UpdateGroup(i, k, p, q, idx + blk[None, None, :], False, sym_twice)

    def _choose_mode(self, g: UpdateGroup, j: int) -> None:
        """Pick how an evaluation applies group ``g`` of column ``j`` (see UpdateGroup)."""
        T = len(g.p)
        m_j = self.m[j]
        if j != 0 or T <= m_j:
            return
        # column 0, several blocks per level: the update is linear in G_c
        Si, Sk, S0 = self.S[g.i], self.S[g.k], self.S[0]
        Pi, Pk = self.patterns[(g.i, 0)], self.patterns[(g.k, 0)]
        a, b, c = Pi.rows[g.p], Pk.rows[g.q], Pi.cols[g.p]
        key = a.astype(np.int64) * self.m[g.k] + b
        ublk, tinv = np.unique(key, return_inverse=True)
        nu = len(ublk)
        Ai, Ak = self.A_off[(g.i, 0)], self.A_off[(g.k, 0)]
        rows, cols, vals = [], [], []
        for al in range(Si):
            for be in range(Sk):
                r_idx = (al * Sk + be) * nu + tinv
                for s_ in range(S0):
                    for t_ in range(S0):
                        rows.append(r_idx)
                        cols.append((s_ * S0 + t_) * m_j + c)
                        vals.append(Ai[al, s_, g.p] * Ak[be, t_, g.q])
        g.P = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                         np.concatenate(cols))),
                                shape=(Si * Sk * nu, S0 * S0 * m_j))
        ua, ub = ublk // self.m[g.k], ublk % self.m[g.k]
        if g.in_dense:
            g.lin_flat = self._dense_flat(g.i, g.k, ua, ub)
        else:
            if g.i == g.k:
                blk, size = ua, self.m[g.k]
            else:
                Pik = self.patterns[(g.i, g.k)]
                blk = np.searchsorted(Pik.keys, ub.astype(np.int64) * Pik.n_rows + ua)
                size = Pik.size
            g.lin_flat = np.arange(Si * Sk).reshape(Si, Sk, 1) * size + blk[None, None, :]
        g.mode = "linear"

    def _check_triples(self, limit: int | None) -> None:
        """MemoryError before enumerating more update products than memory allows."""
        n_tr = 0
        for j in range(self.J):
            for k, i in self._crossed_pairs(j):
                cnt_k = np.diff(self.patterns[(k, j)].start)
                cnt_i = np.diff(self.patterns[(i, j)].start)
                T = int(np.dot(cnt_i.astype(np.int64), cnt_k))
                n_tr += T * self.S[i] * self.S[k] * (1 + self.S[j] ** 2)
        self._check_memory(limit, before_triples=False, n_products=n_tr)

    def factor_sizes(self) -> str:
        return ", ".join(f"{t.factor} ({t.n_levels} levels x {t.S})" for t in self.terms)

    def _check_memory(self, limit: int | None, *, before_triples: bool,
                      n_products: int = 0) -> None:
        avail = available_memory() if limit is None else int(limit)
        dense_terms = [f"{t.factor} ({t.n_levels} levels x {t.S} = {t.n_levels * t.S})"
                       for t in self.terms[self.J:]]
        need = 3 * 8 * self.N_D ** 2               # D, its factor for solutions, a work copy
        what = f"a dense {self.N_D} x {self.N_D} block"
        if not before_triples:
            need += 4 * 8 * n_products
            what += f" and {n_products} sparse update products"
        if need > avail:
            crossed = ", ".join(dense_terms) if dense_terms else "none"
            raise MemoryError(
                f"the blocked Cholesky needs {what}, about {need / 2**30:.2f} GiB, but only "
                f"{avail / 2**30:.2f} GiB is available. Factors in factorization order: "
                f"{self.factor_sizes()}; the first {self.J} stay block diagonal, the crossed "
                f"factors filled in densely are: {crossed}.")
