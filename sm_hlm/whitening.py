"""Whitening a model's data by a residual structure, vectorised over groups.

Notes
-----
With e_j ~ N(0, sigma^2 R_j) and R_j = U_j U_j' (U_j lower triangular), the
transformed model U_j^{-1} y_j = U_j^{-1} X_j beta + U_j^{-1} Z_j b_j + e*_j has
independent homoscedastic errors, and

    log|V_j| = log|R_j| + log|I + Lambda' Z_j' R_j^{-1} Z_j Lambda| + n_j log sigma^2.

So the profiled ML/REML deviance of (theta, structure parameters) is the
deviance of :mod:`sm_hlm.engine.deviance` on the whitened sufficient statistics plus
log|R| = sum_j log|R_j|.  R_j = S_j C_j S_j: rows are first divided by their SD
ratio, then decorrelated:

- ``markov`` (AR(1), continuous AR(1)): rows sorted by time within groups,
  e*_i = (e_i - phi^d_i e_{i-1}) / sqrt(1 - phi^(2 d_i)), the closed-form
  (bidiagonal) inverse Cholesky factor; log|C_j| = sum log(1 - phi^(2 d_i)).
  The whitened cross products are linear in three weights per code
  (gap, variance level of the row, of its predecessor), so with few codes
  (integer times) the per-group sums of the row products are formed once and
  an evaluation is a few axpy's over the groups; with real-valued gaps the
  rows are whitened directly in one vectorised pass.
- ``dense`` (unstructured, exchangeable): groups sharing a pattern of
  positions share one Cholesky factor; the factors of all patterns of one
  size are computed in one batched call (loops run over the few sizes), and
  every group's rows are whitened by one batched product on a padded
  (groups x positions) layout.  Without random effects and with the
  variances a function of position, W' R^{-1} W is a contraction of the
  per-pattern cross products, computed once: an evaluation then costs
  nothing per group.

No n x n matrix is formed and nothing loops over groups or rows.
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .data import factorize_sorted
from .engine.deviance import ProfiledDeviance, SufficientStats
from .exceptions import IdentificationError
from .engine.linalg import group_crossprod
from .residual import (ResidualIdentificationWarning, ResidualIndex, ResidualStructure,
                       StartContext, _fmt_level, external_stacklevel)

if TYPE_CHECKING:
    from .model import HLM

__all__ = ["ResidualKernel"]

#: largest per-pattern cross-product store (floats) for the gls contraction path
_MAX_PATTERN_STORE = 4_000_000
#: largest per-group AR(1) term store (floats); beyond it rows are whitened directly
_MAX_TERM_STORE = 8_000_000
#: most (gap, level, level) codes for the AR(1) term store (real-valued gaps: rows instead)
_MAX_TERMS = 64


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _numeric_time(values: Any, structure: ResidualStructure) -> np.ndarray:
    name = structure.index_name
    dtype = getattr(values, "dtype", np.asarray(values).dtype)
    if not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
        raise TypeError(f"the time variable {name!r} of {structure!r} must be numeric, got dtype "
                        f"{dtype}")
    t = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"the time variable {name!r} has missing or infinite values")
    if structure.integer_time and not np.all(t == np.round(t)):
        bad = [float(v) for v in t[t != np.round(t)][:3]]
        raise ValueError(f"{type(structure).__name__} needs integer times but {name!r} has "
                         f"values such as {bad}; use ContinuousAR1 for real-valued times")
    return t


def _factorize_sorted(values: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if s.isna().any():
        raise ValueError(f"the {what} has missing values")
    codes, levels = factorize_sorted(s)
    return codes, np.asarray(levels)


class ResidualKernel:
    """A residual structure bound to a model: whitened statistics of its parameters.

    Parameters
    ----------
    model
        The :class:`~sm_hlm.HLM` (its arrays, groups and random effects).
    structure
        The residual structure with its variables resolved (arrays aligned
        with the model's rows).

    Attributes
    ----------
    info : ResidualIndex
    n_params : int
    order : ndarray
        Rows sorted by group, then time/position (caller's order within ties).
    """

    def __init__(self, model: "HLM", structure: ResidualStructure):
        self.structure = structure
        n = len(model.endog)
        m = model.n_groups
        codes = model.group_codes
        self.n_groups = m
        self.nobs = n
        self.k_fe = model.k_fe
        self.q = model.k_re
        self.group_labels = model.group_labels
        self.group_name = model.group_name
        self.lambda_ = model.re_design.lambda_
        vals = structure.values(n)
        kind = structure.whitening
        self.kind = kind
        # ------------------------------------------------ index and ordering
        self.slot_levels: np.ndarray | None = None
        if kind == "markov":
            key = _numeric_time(vals["index"], structure)
        elif kind == "dense":
            if "index" in vals:
                key_codes, self.slot_levels = _factorize_sorted(
                    vals["index"], f"position variable {structure.index_name!r}")
                key = key_codes.astype(float)
            else:  # exchangeable rows without positions: rank within group, data order
                o = np.argsort(codes, kind="stable")
                rank = np.empty(n)
                rank[o] = np.arange(n) - np.repeat(model._starts, model.group_sizes.to_numpy())
                key = rank
        else:
            key = np.zeros(n)
        self.key = key
        order = np.lexsort((key, codes)) if kind != "identity" else model._order
        self.order = order
        g_s = codes[order]
        key_s = key[order]
        first = np.r_[True, g_s[1:] != g_s[:-1]]
        self.first = first
        self.g_sorted = g_s
        self.key_sorted = key_s
        self.starts = model._starts
        self.sizes = model.group_sizes.to_numpy()
        if kind in ("markov", "dense") and "index" in vals:
            dup = np.flatnonzero(~first[1:] & (key_s[1:] == key_s[:-1])) + 1
            if len(dup):
                i = dup[0]
                what = "time" if kind == "markov" else "position"
                val = key_s[i] if kind == "markov" else self.slot_levels[int(key_s[i])]
                grp = _plain(model.group_labels[g_s[i]])
                raise ValueError(
                    f"duplicate {what} {_fmt_level(_plain(val))} of {structure.index_name!r} in "
                    f"group {grp!r} of {model.group_name!r} ({len(dup)} duplicate "
                    f"row(s) in all): {type(structure).__name__} needs one observation per "
                    f"{what} within a group")
        # ------------------------------------------------ variance covariate
        if "by" in vals:
            by_codes, by_levels = _factorize_sorted(
                vals["by"], f"variance covariate {structure.by_name!r}")
        else:
            by_codes, by_levels = np.zeros(n, dtype=np.intp), np.zeros(0)
        self.by_codes = by_codes
        self.by_sorted = by_codes[order]
        self.has_by = "by" in vals
        # ------------------------------------------------ structure info
        if kind == "dense":
            n_slots = (len(self.slot_levels) if self.slot_levels is not None
                       else int(self.sizes.max()))
            slot_labels = (tuple(self.slot_levels) if self.slot_levels is not None
                           else tuple(range(n_slots)))
        else:
            n_slots, slot_labels = 0, ()
        self.info = ResidualIndex(group_name=model.group_name, index_name=structure.index_name,
                                  n_slots=n_slots, slot_labels=slot_labels,
                                  by_name=structure.by_name, by_levels=tuple(by_levels))
        self.n_params = structure.n_params(self.info)
        self.param_names = structure.param_names(self.info)
        self.free_lower, self.free_upper = structure.free_bounds(self.info)
        # ------------------------------------------------ sorted data
        X = model.exog[order]
        y = model.endog[order]
        Z = model.exog_re[order]
        self.D_sorted = np.column_stack([Z, X, y])      # [Z X y], sorted
        self._check_identification(model)
        if kind == "markov":
            self._setup_markov()
        elif kind == "dense":
            self._setup_dense()

    def with_endog(self, endog: np.ndarray) -> "ResidualKernel":
        """The kernel of the same model with another response (caller's row order).

        For refits on simulated responses (the parametric bootstrap): the
        designs, ordering and structure are shared; only what involves y
        (the sorted data and the per-group/per-pattern product stores) is
        recomputed.
        """
        y = np.asarray(endog, dtype=float)
        if y.shape != (self.nobs,):
            raise ValueError(f"endog must have {self.nobs} values, got shape {y.shape}")
        out = copy.copy(self)
        D = self.D_sorted.copy()
        D[:, -1] = y[self.order]
        out.D_sorted = D
        if self.kind == "markov":
            out._setup_markov_terms()
        elif self.kind == "dense":
            out._setup_dense()
        return out

    # ============================================================ setup
    def _setup_markov(self) -> None:
        gap = np.r_[0.0, np.diff(self.key_sorted)]
        gap[self.first] = 0.0
        self.prev_ok = ~self.first
        ug, gap_code = np.unique(gap[self.prev_ok], return_inverse=True)
        self.gaps = ug
        self.gap_code = gap_code
        self._setup_markov_terms()

    def _setup_markov_terms(self) -> None:
        """Per-group sums of the row products that the AR(1) whitening combines.

        With w_i = d_i / s_i and the predecessor p of row i (gap d), the whitened
        product z*_i d*_i' is c^2 [z_i d_i'/s_i^2 - a (z_i d_p' + z_p d_i')/(s_i s_p)
        + a^2 z_p d_p'/s_p^2] with a = phi^d, c^2 = 1/(1 - a^2): linear in three
        weights per (gap, level of i, level of p) code.  Summing the products by
        group and code once makes an evaluation one matrix-vector product with
        the code weights.  Skipped (row-wise whitening instead) when the codes
        are many (real-valued gaps) and the store would be large.
        """
        self.term_store = None
        L = max(len(self.info.by_levels), 1)
        by = self.by_sorted
        nf = np.flatnonzero(self.prev_ok)
        first = np.flatnonzero(self.first)
        key = (self.gap_code * L + by[nf]) * L + by[nf - 1]
        upair, pair_code = np.unique(key, return_inverse=True)
        ufirst, first_code = np.unique(by[first], return_inverse=True)
        K, F = len(upair), len(ufirst)
        n_terms = 3 * K + F
        m, q = self.n_groups, self.q
        c = self.D_sorted.shape[1]
        cw = c - q
        if n_terms > _MAX_TERMS or m * q * c * n_terms + cw * cw * n_terms > _MAX_TERM_STORE:
            return
        self.pair_gap_code = upair // (L * L)
        self.pair_by = (upair // L) % L
        self.pair_byp = upair % L
        self.first_by = ufirst
        self.pair_count = np.bincount(pair_code, minlength=K).astype(float)
        D = self.D_sorted
        rows = [nf, nf, nf, first]
        partners = [nf, nf - 1, nf - 1, first]
        codes = [pair_code, pair_code + K, pair_code + 2 * K, first_code + 3 * K]
        SZ = np.zeros((m * n_terms, q * c))
        SW = np.zeros((n_terms, cw * cw))
        for kind, (r, pr, tc) in enumerate(zip(rows, partners, codes)):   # four term kinds
            U, V = (D[r], D[r]) if kind in (0, 3) else ((D[r], D[pr]) if kind == 1
                                                         else (D[pr], D[pr]))
            pz = U[:, :q, None] * V[:, None, :]
            pw = U[:, q:, None] * V[:, None, q:]
            if kind == 1:
                pz = pz + V[:, :q, None] * U[:, None, :]
                pw = pw + V[:, q:, None] * U[:, None, q:]
            ones = np.ones(len(r))
            cols = np.arange(len(r))
            if q:
                Sg = sparse.csr_matrix((ones, (self.g_sorted[r] * n_terms + tc, cols)),
                                       shape=(m * n_terms, len(r)))
                SZ += Sg @ pz.reshape(len(r), q * c)
            St = sparse.csr_matrix((ones, (tc, cols)), shape=(n_terms, len(r)))
            SW += St @ pw.reshape(len(r), cw * cw)
        SZ = SZ.reshape(m, n_terms, q, c).transpose(0, 2, 3, 1)
        SW = SW.T.reshape(cw, cw, n_terms)
        # groups sharing the set of terms they use share one dense block (most groups
        # use only a few of the terms: no gap, one variance level...)
        present = np.zeros((m, n_terms), dtype=bool)
        for tc, r in zip(codes, rows):
            present[self.g_sorted[r], tc] = True
        blocks = []
        if q:
            if n_terms <= 62:
                packed = present.astype(np.int64) @ (np.int64(1) << np.arange(n_terms,
                                                                             dtype=np.int64))
                _, first_of, sig_of = np.unique(packed, return_index=True, return_inverse=True)
                sigs = present[first_of]
            else:
                sigs, sig_of = np.unique(present, axis=0, return_inverse=True)
            sig_of = sig_of.ravel()
            for k in range(len(sigs)):      # loops over the few term signatures
                gi = np.flatnonzero(sig_of == k)
                ti = np.flatnonzero(sigs[k])
                blk = np.ascontiguousarray(SZ[gi][:, :, :, ti].transpose(3, 1, 2, 0)
                                           ).reshape(len(ti), q * c, len(gi))
                blocks.append((gi, ti, blk))
        self.term_store = (blocks, SW.reshape(cw * cw, n_terms))
        self.row_count_by = np.bincount(by, minlength=L).astype(float)

    def _markov_term_stats(self, nat: np.ndarray) -> tuple[SufficientStats, float] | None:
        SZ, SW = self.term_store
        coefs = self._gap_coefs(nat)
        if coefs is None:
            return None
        a, om = coefs[0][self.pair_gap_code], coefs[1][self.pair_gap_code]
        c2 = 1.0 / om
        if self.has_by:
            sd = self.structure.sd_levels(nat, self.info)
        else:
            sd = np.ones(1)
        si, sp = sd[self.pair_by], sd[self.pair_byp]
        wts = np.concatenate([c2 / si ** 2, -a * c2 / (si * sp), a * a * c2 / sp ** 2,
                              1.0 / sd[self.first_by] ** 2])
        logdet = float(self.pair_count @ np.log(om))
        if self.has_by:
            logdet += 2.0 * float(self.row_count_by @ np.log(sd))
        m, q, p = self.n_groups, self.q, self.k_fe
        WtW = (SW @ wts).reshape(p + 1, p + 1)
        if q:
            c = q + p + 1
            ZtD = np.empty((q * c, m))
            for gi, ti, blk in SZ:            # loops over the few term signatures
                # axpy over the block's terms: memory-bound and free of BLAS threading,
                # which stalls on tall matrix-vector products on a busy machine
                w = wts[ti]
                acc = w[0] * blk[0]
                for k in range(1, len(ti)):
                    acc += w[k] * blk[k]
                ZtD[:, gi] = acc
            ZtD = ZtD.reshape(q, c, m)
            ZtZ, ZtW = np.ascontiguousarray(ZtD[:, :q]), np.ascontiguousarray(ZtD[:, q:])
        else:
            ZtZ, ZtW = np.zeros((0, 0, m)), np.zeros((0, p + 1, m))
        return SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=WtW, nobs=self.nobs, k_fe=p), logdet

    def _setup_dense(self) -> None:
        m, T = self.n_groups, self.info.n_slots
        slot = self.key_sorted.astype(np.intp)
        self.pad_index = self.g_sorted * T + slot
        mask = np.zeros((m, T), dtype=bool)
        mask[self.g_sorted, slot] = True
        patterns, pat_of_group = np.unique(mask, axis=0, return_inverse=True)
        self.patterns = patterns
        self.pat_of_group = pat_of_group.ravel()
        nP = len(patterns)
        self.pattern_count = np.bincount(self.pat_of_group, minlength=nP).astype(float)
        psize = patterns.sum(axis=1)
        self.size_classes: list[tuple[np.ndarray, np.ndarray]] = []
        for k in np.unique(psize):           # loops over pattern sizes only
            pids = np.flatnonzero(psize == k)
            idx = np.nonzero(patterns[pids])[1].reshape(len(pids), k)
            self.size_classes.append((pids, idx))
        # variances folded into the pattern factors when they are a function of position
        if self.has_by:
            pair = np.unique(slot * (len(self.info.by_levels) + 1) + self.by_sorted)
            slots_seen = pair // (len(self.info.by_levels) + 1)
            self.folded = len(np.unique(slots_seen)) == len(slots_seen)
            slot_by = np.zeros(T, dtype=np.intp)
            slot_by[slots_seen] = pair % (len(self.info.by_levels) + 1)
            self.slot_by = slot_by
        else:
            self.folded = True
            self.slot_by = None
        c = self.D_sorted.shape[1]
        Dpad = np.zeros((m * T, c))
        Dpad[self.pad_index] = self.D_sorted
        self.Dpad = Dpad.reshape(m, T, c)
        self.pattern_store = None
        cw = c - self.q
        if self.q == 0 and self.folded and nP * T * T * cw * cw <= _MAX_PATTERN_STORE:
            store = np.zeros((nP, T, T, cw, cw))
            order = np.argsort(self.pat_of_group, kind="stable")
            bounds = np.r_[0, np.cumsum(np.bincount(self.pat_of_group, minlength=nP))]
            for p in range(nP):               # once, over patterns
                W = self.Dpad[order[bounds[p]:bounds[p + 1]]].reshape(-1, T * cw)
                store[p] = (W.T @ W).reshape(T, cw, T, cw).transpose(0, 2, 1, 3)
            self.pattern_store = store.reshape(nP * T * T, cw * cw)

    def _check_identification(self, model: "HLM") -> None:
        s = self.structure
        self.confounded: list[str] = []
        name = type(s).__name__
        if s.whitening in ("markov", "dense") and self.sizes.max() < 2:
            raise IdentificationError(
                f"every group of {self.group_name!r} has one observation: the correlation "
                f"parameters of {name} are not identifiable")
        k = self.n_params + model.re_design.n_theta + 1 + model.k_fe
        if k >= self.nobs:
            raise IdentificationError(
                f"{s!r} has {self.n_params} parameters; with the fixed effects and the random-"
                f"effects covariance that is {k} parameters for {self.nobs} observations")
        if s.whitening != "dense":
            return
        T = self.info.n_slots
        if name == "Unstructured" or s.n_corr(self.info) > 1:
            slot = self.key_sorted.astype(np.intp)
            M = np.zeros((self.n_groups, T))
            M[self.g_sorted, slot] = 1.0
            co = M.T @ M
            s_i, t_i = np.triu_indices(T, k=1)
            never = [(_plain(self.info.slot_labels[a]), _plain(self.info.slot_labels[b]))
                     for a, b in zip(s_i, t_i) if co[a, b] == 0]
            if never:
                shown = ", ".join(f"({a!r}, {b!r})" for a, b in never[:5])
                raise IdentificationError(
                    f"{s!r} has {self.n_params} parameters but the data cannot identify them: "
                    f"position pair(s) {shown}{' ...' if len(never) > 5 else ''} are never "
                    f"observed together in a group of {self.group_name!r}, so their correlation "
                    "is not identifiable; use fewer positions or a structured correlation "
                    "(AR1, Exchangeable)")
        if self.q:
            Zs = self.D_sorted[:, :self.q]
            names = list(model.re_design.names)
            if name == "Unstructured":
                slot = self.key_sorted.astype(np.intp)
                cnt = np.bincount(slot, minlength=T)
                mean = np.stack([np.bincount(slot, weights=Zs[:, i], minlength=T)
                                 for i in range(self.q)], axis=1) / np.maximum(cnt, 1)[:, None]
                dev = np.abs(Zs - mean[slot]).max(axis=0)
                tol = 1e-12 * (1 + np.abs(Zs).max(axis=0))
                conf = [names[i] for i in range(self.q) if dev[i] <= tol[i]]
            else:
                conf = [names[i] for i in range(self.q) if np.ptp(Zs[:, i]) == 0]
            self.confounded = conf
            if conf:
                warnings.warn(
                    f"the random effect(s) {conf} are constant within each position, so their "
                    f"variance is confounded with the {name} residual covariance: only the sum "
                    "(the marginal covariance) is identified, the split between them is not; "
                    "their standard errors are not reported",
                    ResidualIdentificationWarning, stacklevel=external_stacklevel())

    # ============================================================ evaluation
    def natural(self, u: np.ndarray) -> np.ndarray:
        return self.structure.from_free(u, self.info)

    def sd_rows_sorted(self, nat: np.ndarray) -> np.ndarray | None:
        if not self.has_by:
            return None
        return self.structure.sd_levels(nat, self.info)[self.by_sorted]

    def _gap_coefs(self, nat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """a = phi^d and 1 - a^2 for every distinct gap d (None if 1 - a^2 <= 0)."""
        phi = self.structure.phi(nat)
        d = self.gaps
        with np.errstate(divide="ignore"):
            om = -np.expm1(2.0 * d * np.log(abs(phi)))     # 1 - phi^(2d), exact near |phi| = 1
        if np.any(om <= 0) or not np.all(np.isfinite(om)):
            return None
        return phi ** d, om

    def _markov_coefs(self, nat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """a_i = phi^d_i and 1 - a_i^2 for the rows with a predecessor (None if not PD)."""
        coefs = self._gap_coefs(nat)
        return None if coefs is None else (coefs[0][self.gap_code], coefs[1][self.gap_code])

    def _dense_factors(self, nat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Inverse Cholesky factors of every pattern (padded) and their log-determinants."""
        info = self.info
        T = info.n_slots
        R = self.structure.corr_matrix(nat, info)
        if self.has_by and self.folded:
            sd = self.structure.sd_levels(nat, info)[self.slot_by]
            R = R * np.outer(sd, sd)
        nP = len(self.patterns)
        Linv = np.zeros((nP, T, T))
        logdet = np.zeros(nP)
        try:
            for pids, idx in self.size_classes:    # loops over pattern sizes only
                Rs = R[idx[:, :, None], idx[:, None, :]]
                Lc = np.linalg.cholesky(Rs)
                logdet[pids] = 2.0 * np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum(axis=1)
                Linv[pids[:, None, None], idx[:, :, None], idx[:, None, :]] = np.linalg.inv(Lc)
        except np.linalg.LinAlgError:
            return None
        return Linv, logdet

    def _whiten_sorted(self, nat: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Whitened rows of sorted ``A`` (n, k) for markov/identity; and log|R|."""
        sd = self.sd_rows_sorted(nat)
        logdet = 0.0
        if sd is not None:
            A = A / sd[:, None]
            logdet += 2.0 * float(np.log(sd).sum())
        if self.kind == "markov":
            coefs = self._markov_coefs(nat)
            if coefs is None:
                return None
            a, om = coefs
            ok = self.prev_ok
            out = A.copy()
            out[ok] = (A[ok] - a[:, None] * A[np.flatnonzero(ok) - 1]) / np.sqrt(om)[:, None]
            A = out
            logdet += float(np.log(om).sum())
        return A, logdet

    def stats(self, u: np.ndarray) -> tuple[SufficientStats, float] | None:
        """Whitened sufficient statistics and log|R| at unconstrained ``u``."""
        nat = self.natural(u)
        q, p, m = self.q, self.k_fe, self.n_groups
        if self.kind == "dense":
            fac = self._dense_factors(nat)
            if fac is None:
                return None
            Linv, logdet_p = fac
            logdet = float(self.pattern_count @ logdet_p)
            if self.pattern_store is not None:
                Rinv = np.matmul(Linv.transpose(0, 2, 1), Linv)
                WtW = (Rinv.reshape(-1) @ self.pattern_store).reshape(p + 1, p + 1)
                return SufficientStats(ZtZ=np.zeros((0, 0, m)), ZtW=np.zeros((0, p + 1, m)),
                                       WtW=WtW, nobs=self.nobs, k_fe=p), logdet
            D = self.Dpad
            if self.has_by and not self.folded:
                sd = self.sd_rows_sorted(nat)
                inv = np.zeros(D.shape[0] * D.shape[1])
                inv[self.pad_index] = 1.0 / sd
                D = D * inv.reshape(D.shape[0], D.shape[1], 1)
                logdet += 2.0 * float(np.log(sd).sum())
            Ds = np.matmul(Linv[self.pat_of_group], D)          # (m, T, c)
            W = Ds[:, :, q:].reshape(-1, p + 1)
            WtW = W.T @ W
            if q:
                Zs = Ds[:, :, :q]
                ZtD = np.matmul(Zs.transpose(0, 2, 1), Ds).transpose(1, 2, 0)   # (q, c, m)
                ZtZ, ZtW = ZtD[:, :q], ZtD[:, q:]
            else:
                ZtZ, ZtW = np.zeros((0, 0, m)), np.zeros((0, p + 1, m))
            return SufficientStats(ZtZ=np.ascontiguousarray(ZtZ), ZtW=np.ascontiguousarray(ZtW),
                                   WtW=WtW, nobs=self.nobs, k_fe=p), logdet
        if self.kind == "markov" and self.term_store is not None:
            return self._markov_term_stats(nat)
        res = self._whiten_sorted(nat, self.D_sorted)
        if res is None:
            return None
        A, logdet = res
        W = A[:, q:]
        WtW = W.T @ W
        if q:
            ZtD = group_crossprod(A[:, :q], A, self.starts)            # (q, c, m)
            ZtZ, ZtW = np.ascontiguousarray(ZtD[:, :q]), np.ascontiguousarray(ZtD[:, q:])
        else:
            ZtZ, ZtW = np.zeros((0, 0, m)), np.zeros((0, p + 1, m))
        return SufficientStats(ZtZ=ZtZ, ZtW=ZtW, WtW=WtW, nobs=self.nobs, k_fe=p), logdet

    def deviance(self, u: np.ndarray, *, reml: bool) -> tuple[ProfiledDeviance, float]:
        """The profiled deviance of theta at fixed ``u`` (whitened) and log|R|."""
        res = self.stats(u)
        if res is None:
            raise FloatingPointError("the residual covariance is not positive definite at "
                                     f"{self.natural(u)}")
        st, logdet = res
        return ProfiledDeviance(st, self.lambda_, reml=reml), logdet

    def objective(self, n_theta: int, *, reml: bool):
        """Profiled deviance of x = (theta, u): whitened deviance + log|R|."""
        lambda_ = self.lambda_

        def f(x: np.ndarray) -> float:
            res = self.stats(x[n_theta:])
            if res is None:
                return np.inf
            st, logdet = res
            v = ProfiledDeviance(st, lambda_, reml=reml)(x[:n_theta])
            return v + logdet

        return f

    # ============================================================ start
    def start_free(self, model: "HLM") -> np.ndarray:
        """Unconstrained starting values from OLS residuals."""
        p = model.k_fe
        WtW = model._stats.WtW
        beta = np.linalg.solve(WtW[:p, :p], WtW[:p, p])
        r = (model.endog - model.exog @ beta)[self.order]
        ctx = StartContext(info=self.info, resid=r, first=self.first, key=self.key_sorted,
                           group=self.g_sorted, by_codes=self.by_sorted, n_groups=self.n_groups,
                           has_random=self.q > 0)
        u0 = self.structure.start(ctx)
        u0 = np.where(np.isfinite(u0), u0, 0.0)
        return np.clip(u0, self.free_lower + 0.5, self.free_upper - 0.5)

    # ============================================================ vectors
    def _dense_apply(self, M: np.ndarray, Es: np.ndarray) -> np.ndarray:
        """Each group's pattern matrix of ``M`` (patterns, T, T) applied to sorted rows ``Es``."""
        T = self.info.n_slots
        pad = np.zeros((self.n_groups * T, Es.shape[1]))
        pad[self.pad_index] = Es
        out = np.matmul(M[self.pat_of_group], pad.reshape(self.n_groups, T, -1))
        return out.reshape(-1, Es.shape[1])[self.pad_index]

    def _whiten_rows(self, nat: np.ndarray,
                     Es: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """U^{-1} applied to sorted rows ``Es``; and the dense patterns' inverse factors."""
        if self.kind == "dense":
            fac = self._dense_factors(nat)
            if fac is None:
                raise FloatingPointError("the residual covariance is not positive definite")
            Linv = fac[0]
            if self.has_by and not self.folded:
                Es = Es / self.sd_rows_sorted(nat)[:, None]
            return self._dense_apply(Linv, Es), Linv
        res = self._whiten_sorted(nat, Es)
        if res is None:
            raise FloatingPointError("the residual covariance is not positive definite")
        return res[0], None

    def _caller_order(self, out_s: np.ndarray, vec: bool) -> np.ndarray:
        out = np.empty_like(out_s)
        out[self.order] = out_s
        return out[:, 0] if vec else out

    def whiten(self, u: np.ndarray, E: np.ndarray) -> np.ndarray:
        """U_j^{-1} applied to the rows of ``E`` (caller's order in and out), R_j = U_j U_j'."""
        E = np.asarray(E, dtype=float)
        vec = E.ndim == 1
        out_s, _ = self._whiten_rows(self.natural(u), (E[:, None] if vec else E)[self.order])
        return self._caller_order(out_s, vec)

    def solve(self, u: np.ndarray, E: np.ndarray) -> np.ndarray:
        """R_j^{-1} applied to the rows of ``E`` (caller's order in and out)."""
        E = np.asarray(E, dtype=float)
        vec = E.ndim == 1
        nat = self.natural(u)
        Ew, Linv = self._whiten_rows(nat, (E[:, None] if vec else E)[self.order])  # U^-1 e
        if self.kind == "dense":
            out_s = self._dense_apply(Linv.transpose(0, 2, 1), Ew)
            if self.has_by and not self.folded:
                out_s = out_s / self.sd_rows_sorted(nat)[:, None]
        else:
            out_s = Ew
            if self.kind == "markov":
                # U^-T: w_i = c_i v_i - a_{i+1} c_{i+1} v_{i+1} (i+1 in the same group)
                a, om = self._markov_coefs(nat)
                ok = np.flatnonzero(self.prev_ok)
                c = 1.0 / np.sqrt(om)
                out_s = Ew.copy()
                out_s[ok] *= c[:, None]
                out_s[ok - 1] -= (a * c)[:, None] * Ew[ok]
            sd = self.sd_rows_sorted(nat)
            if sd is not None:
                out_s = out_s / sd[:, None]
        return self._caller_order(out_s, vec)

    # ============================================================ rows
    def slot_of(self, values: Any) -> np.ndarray:
        """Position codes of new index values (-1 for unseen)."""
        if self.slot_levels is None:
            return np.full(len(values), -1, dtype=np.intp)
        return pd.Index(self.slot_levels).get_indexer(pd.Index(np.asarray(values)))

    def by_code_of(self, values: Any) -> np.ndarray:
        return pd.Index(np.asarray(self.info.by_levels)).get_indexer(pd.Index(np.asarray(values)))

    def cov_rows(self, nat: np.ndarray, scale: float, key_a: np.ndarray, by_a: np.ndarray,
                 key_b: np.ndarray, by_b: np.ndarray) -> np.ndarray:
        """sigma^2 s_a s_b corr(a, b) for rows of one group (broadcasting)."""
        C = self.structure.corr_pairs(nat, key_a, key_b, self.info)
        if self.has_by:
            sd = self.structure.sd_levels(nat, self.info)
            C = C * sd[by_a] * sd[by_b]
        return scale * C

