"""The compiled row loops of the construction path (sm_hlm.engine._crows) against their numpy forms.

:func:`sm_hlm.engine.deviance._intercept_qr_stats` (the closed-form per-group QR of a
random intercept and slope, the projections G_j and sum_j E_j'E_j) runs in C where the
extension is built; the numpy form stays (no compiler, or SM_HLM_NUMPY_KERNELS set) and
both must give the same statistics, and the same fits, up to rounding.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sm_hlm.engine.deviance as deviance_mod
from sm_hlm import HLM
from sm_hlm.engine import compiled
from sm_hlm.simulate import simulate_mixed, simulate_nels

crows = compiled.crows()
needs_crows = pytest.mark.skipif(
    crows is None, reason=f"the compiled row loops are {compiled.status()['_crows']}")
FORMULA = "mscore ~ flp*ses + (ses|school)"


def _design(q: int, const_first: bool, seed: int, *, n_groups: int = 200, mean_size: float = 6.0,
            n_singletons: int = 5, n_aliased: int = 5, big: int = 0):
    """Rows sorted by group: Z (constant first column, a slope), W = [X y], starts, counts.

    Groups of one row, groups whose slope is constant within them (aliased: F_11 = 0),
    unequal sizes, and optionally one group of ``big`` rows.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.poisson(mean_size - 1, n_groups) + 1
    sizes[:n_singletons] = 1
    if big:
        sizes[n_groups // 2] = big
    n = int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    g = np.repeat(np.arange(n_groups), sizes)
    slope = rng.normal(size=n_groups)[g] + rng.normal(size=n)
    aliased = n_singletons + np.arange(n_aliased)
    for j in aliased:                                       # one distinct value in the group
        slope[starts[j]:starts[j] + sizes[j]] = 1.5 + j
    z0 = -2.5                                               # a negative constant: the sign
    Z = np.column_stack([np.full(n, z0), slope])[:, :q]
    x1 = 3.0 + rng.normal(size=n)
    cols = [np.full(n, 0.7)] if const_first else []
    cols += [x1, x1 * slope, rng.normal(size=n_groups)[g], slope + 1e-3 * rng.normal(size=n),
             2.0 * x1 - slope + rng.normal(size=n)]
    W = np.column_stack(cols)
    return Z, W, starts, sizes


def _run(Z, W, starts, counts, const_first, *, use_c: bool, monkeypatch):
    """_intercept_qr_stats with (use_c) or without the compiled loops: F, G, within, Q', E'."""
    with monkeypatch.context() as mp:
        if not use_c:
            mp.setattr(compiled, "crows", lambda: None)
        Zt = np.array(Z.T, order="C")
        Wt = np.array(W.T, order="C")
        F, G, within = deviance_mod._intercept_qr_stats(Zt, Wt, starts, counts,
                                                        const_first=const_first)
    return F, G, within, Zt, Wt


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> None:
    """Entries agree to rtol relative to the array's scale (entries that are zero in
    exact arithmetic, e.g. off-diagonal cancellations, are rounding noise there)."""
    scale = max(float(np.abs(b).max()), 1e-300)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@needs_crows
@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_intercept_qr_matches_numpy(q, const_first, seed, monkeypatch) -> None:
    Z, W, starts, counts = _design(q, const_first, seed)
    Fc, Gc, Ec, Qc, Rc = _run(Z, W, starts, counts, const_first, use_c=True,
                              monkeypatch=monkeypatch)
    Fn, Gn, En, Qn, Rn = _run(Z, W, starts, counts, const_first, use_c=False,
                              monkeypatch=monkeypatch)
    for a, b in ((Fc, Fn), (Gc, Gn), (Ec, En), (Qc, Qn), (Rc, Rn)):
        assert a.shape == b.shape
        _close(a, b)
    # per-group checks of what the numbers mean, on the compiled output
    m = len(starts)
    np.testing.assert_allclose(Fc[0, 0], 2.5 * np.sqrt(counts), rtol=1e-15)
    assert np.all(Fc[0, 1:] == 0.0) if q == 2 else True
    if q == 2:
        aliased = counts == 1                                # singletons, constant slopes
        aliased[:10] = True
        assert np.all(Fc[1, 1, aliased] == 0.0)
        assert np.all(Fc[1, 1, ~aliased] > 0.0)
        for j in np.flatnonzero(aliased):
            assert np.all(Qc[1, starts[j]:starts[j] + counts[j]] == 0.0)
    # Q orthonormal per group where kept, and Q'W = G
    rows = np.repeat(np.arange(m), counts)
    QtQ = np.einsum("an,bn->nab", Qc, Qc)
    QtQ_g = np.zeros((m, q, q))
    np.add.at(QtQ_g, rows, QtQ)
    kept = np.ones((q, m), dtype=bool) if q == 1 else np.stack([np.ones(m, bool), Fc[1, 1] > 0])
    expect = np.zeros((m, q, q))
    for k in range(q):
        expect[:, k, k] = kept[k]
    np.testing.assert_allclose(QtQ_g, expect, atol=1e-12)
    QtW = np.zeros((m, q, W.shape[1]))
    np.add.at(QtW, rows, np.einsum("an,nr->nar", Qc, W))
    _close(QtW, Gc.transpose(2, 0, 1), rtol=1e-11)
    if const_first:
        assert np.all(Ec[0] == 0.0) and np.all(Ec[:, 0] == 0.0)
        if q == 2:
            assert np.all(Gc[1, 0] == 0.0)


@needs_crows
@pytest.mark.parametrize("q", [1, 2])
def test_compiled_intercept_qr_large_block_and_large_group(q, monkeypatch) -> None:
    """More rows than a block (_ROW_BLOCK = 65536), one group of 70,000 rows."""
    Z, W, starts, counts = _design(q, True, 7, n_groups=3000, mean_size=12.0, big=70_000)
    assert len(Z) > deviance_mod._ROW_BLOCK
    c = _run(Z, W, starts, counts, True, use_c=True, monkeypatch=monkeypatch)
    n_ = _run(Z, W, starts, counts, True, use_c=False, monkeypatch=monkeypatch)
    for a, b in zip(c, n_):
        _close(a, b)


@needs_crows
@pytest.mark.parametrize("r", [1, 5, 6, 9, 12])
def test_compiled_intercept_qr_any_number_of_columns(r, monkeypatch) -> None:
    """The loops specialised for 1 <= r <= 8 and the general one; sum_j E_j'E_j in the
    loop (at most _CROWS_PAIRS_MAX_R columns) or from the residuals it leaves."""
    Z, W, starts, counts = _design(2, False, 11)
    rng = np.random.default_rng(r)
    W = np.column_stack([W, rng.normal(size=(len(W), 12))])[:, :r]
    for const_first in (False, True):
        Wc = W.copy()
        if const_first:
            Wc[:, 0] = -1.25
        c = _run(Z, Wc, starts, counts, const_first, use_c=True, monkeypatch=monkeypatch)
        n_ = _run(Z, Wc, starts, counts, const_first, use_c=False, monkeypatch=monkeypatch)
        for a, b in zip(c, n_):
            _close(a, b)


@needs_crows
def test_compiled_intercept_qr_on_strided_blocks(monkeypatch) -> None:
    """Rows of the transposes of column-major blocks (as working_stats passes them)."""
    Z, W, starts, counts = _design(2, True, 3)
    n = len(Z)
    Zbuf = np.zeros((n + 40, 2), order="F")
    Wbuf = np.zeros((n + 40, W.shape[1] + 1), order="F")
    Zbuf[:n], Wbuf[:n, :-1] = Z, W
    Zt, Wt = Zbuf[:n].T, Wbuf[:n, :-1].T
    assert not Zt.flags.c_contiguous and deviance_mod._contiguous_rows(Zt)
    F, G, within = deviance_mod._intercept_qr_stats(Zt, Wt, starts, counts, const_first=True)
    Fn, Gn, En, Qn, _ = _run(Z, W, starts, counts, True, use_c=False, monkeypatch=monkeypatch)
    for a, b in ((F, Fn), (G, Gn), (within, En), (Zt, Qn)):
        _close(a, b)
    assert np.all(Zbuf[n:] == 0.0) and np.all(Wbuf[n:] == 0.0)     # nothing written beyond


@needs_crows
def test_compiled_intercept_qr_rejects_bad_input() -> None:
    Z, W, starts, counts = _design(2, False, 4, n_groups=20)
    m, r = len(starts), W.shape[1]
    st = starts.astype(np.int64)

    def args(**kw):
        a = dict(Zt=np.ascontiguousarray(Z.T), Wt=np.ascontiguousarray(W.T), starts=st,
                 tol=1e-11, const_first=False, F=np.empty((2, 2, m)), G=np.empty((2, r, m)),
                 within=np.empty((r, r)))
        a.update(kw)
        return tuple(a.values())

    crows.intercept_qr(*args())                               # well formed
    with pytest.raises(TypeError, match="Zt must be a float64 array"):
        crows.intercept_qr(*args(Zt=np.array(Z.T, dtype=np.float32)))
    with pytest.raises(TypeError, match="starts must be an int64 array"):
        crows.intercept_qr(*args(starts=st.astype(np.int32)))
    with pytest.raises(ValueError, match="Zt must have 1 or 2 rows"):
        crows.intercept_qr(*args(Zt=np.ones((3, len(Z)))))
    with pytest.raises(ValueError, match="Wt has 10 columns"):
        crows.intercept_qr(*args(Wt=np.ones((r, 10))))
    with pytest.raises(ValueError, match="G has"):
        crows.intercept_qr(*args(G=np.empty((2, r, m - 1))))
    with pytest.raises(ValueError, match="within has"):
        crows.intercept_qr(*args(within=np.empty((r + 1, r))))
    with pytest.raises(ValueError, match="contiguous"):
        crows.intercept_qr(*args(Zt=np.ones((2, 2 * len(Z)))[:, ::2]))
    with pytest.raises(ValueError, match="2-dimensional"):
        crows.intercept_qr(*args(Zt=np.ones(len(Z))))
    with pytest.raises(ValueError, match="strictly increasing"):
        crows.intercept_qr(*args(starts=np.append(st[:3], st[1:])))
    with pytest.raises(ValueError, match="begin at row 0"):
        crows.intercept_qr(*args(starts=st + 1))
    with pytest.raises(ValueError, match="beyond"):
        crows.intercept_qr(*args(starts=np.append(st, len(Z) + 5)))
    with pytest.raises(ValueError, match="constant and nonzero"):
        crows.intercept_qr(*args(Zt=np.zeros((2, len(Z)))))
    ro = np.ascontiguousarray(Z.T)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        crows.intercept_qr(*args(Zt=ro))


def _fit_both(data: pd.DataFrame, formula: str, monkeypatch, **kw):
    fit_c = HLM.from_formula(formula, data).fit(**kw)
    with monkeypatch.context() as mp:
        mp.setattr(compiled, "crows", lambda: None)
        mod_n = HLM.from_formula(formula, data)
        fit_n = mod_n.fit(**kw)
    return fit_c, fit_n


def _assert_same_fit(fit_c, fit_n) -> None:
    assert fit_c.llf == pytest.approx(fit_n.llf, rel=0, abs=1e-9)
    np.testing.assert_allclose(fit_c.params, fit_n.params, rtol=1e-8, atol=1e-10)


@needs_crows
@pytest.mark.parametrize("formula", [FORMULA, "mscore ~ flp + (1|school)",
                                     "mscore ~ 0 + ses + (ses|school)"])
@pytest.mark.parametrize("reml", [False, True])
def test_fits_with_compiled_and_numpy_row_loops_agree(formula, reml, monkeypatch) -> None:
    data = simulate_nels(n_schools=150, seed=41)
    fit_c, fit_n = _fit_both(data, formula, monkeypatch, reml=reml)
    _assert_same_fit(fit_c, fit_n)


@needs_crows
def test_fits_agree_beyond_one_row_block(monkeypatch) -> None:
    data = simulate_mixed(n_groups=4000, mean_group_size=20.0,
                          fe_params={"Intercept": 1.0, "x": 0.5, "w": -0.3},
                          re_names=("Intercept", "x"), cov_re=[[1.0, 0.3], [0.3, 0.5]], seed=8)
    assert len(data) > deviance_mod._ROW_BLOCK
    fit_c, fit_n = _fit_both(data, "y ~ x + w + (x|group)", monkeypatch, reml=False)
    _assert_same_fit(fit_c, fit_n)


@needs_crows
def test_nels_fit2_with_compiled_and_numpy_row_loops_agree(nels, monkeypatch) -> None:
    fit_c, fit_n = _fit_both(nels, FORMULA, monkeypatch, reml=False)
    _assert_same_fit(fit_c, fit_n)


def test_numpy_row_loops_when_compiled_ones_are_off(monkeypatch) -> None:
    """The numpy form alone (as without a compiler) still gives the statistics."""
    monkeypatch.setattr(compiled, "crows", lambda: None)
    Z, W, starts, counts = _design(2, True, 5)
    Zt, Wt = np.ascontiguousarray(Z.T), np.ascontiguousarray(W.T)
    F, G, within = deviance_mod._intercept_qr_stats(Zt, Wt, starts, counts, const_first=True)
    Q, Fq, _ = deviance_mod.group_qr(Z, starts)
    _close(F, Fq, rtol=1e-10)
    _close(Zt, Q.T, rtol=1e-10)


def _fixed_map_both(X, y, monkeypatch):
    X = np.asfortranarray(X)
    const = deviance_mod.constant_columns(X)
    wbuf = np.empty((len(y), X.shape[1] + 2), order="F")
    c = deviance_mod._fixed_map(X, y, const, wbuf)
    with monkeypatch.context() as mp:
        mp.setattr(compiled, "crows", lambda: None)
        n_ = deviance_mod._fixed_map(X, y, const, wbuf)
    return c, n_


@needs_crows
@pytest.mark.parametrize("layout", ["intercept first", "intercept third", "no intercept",
                                    "one column", "five columns", "six columns"])
def test_compiled_centred_gram_matches_numpy(layout, monkeypatch) -> None:
    """_fixed_map's map D_0 and Gram matrix with the compiled pass and the numpy one
    (centring column first, later, absent; up to and beyond _CROWS_GRAM_MAX_K columns)."""
    rng = np.random.default_rng(len(layout))
    n = 70_001                                             # blocks of rows, and a remainder
    cols = [1e4 + rng.normal(size=n), 3.0 * rng.normal(size=n), rng.integers(0, 5, n) * 1.0,
            1e-3 * rng.normal(size=n), rng.normal(size=n)]
    one = np.full(n, 2.0)
    X = {"intercept first": [one] + cols[:3], "intercept third": cols[:2] + [one] + cols[2:4],
         "no intercept": cols[:3], "one column": [one], "five columns": [one] + cols[:4],
         "six columns": [one] + cols}[layout]
    X = np.column_stack(X)
    y = 50.0 + X[:, -1] + rng.normal(size=n)
    (Dc, gc), (Dn, gn) = _fixed_map_both(X, y, monkeypatch)
    _close(Dc, Dn)
    np.testing.assert_allclose(np.diag(gc), np.diag(gn), rtol=1e-12)
    # off the diagonal, relative to sqrt(g_ii g_jj); the sum of a centred column (zero in
    # exact arithmetic) is rounding noise from the mean of a column whose mean is 1e4
    # times its spread: ~1e-12 of the diagonal in both forms
    d = np.sqrt(np.diag(gn))
    np.testing.assert_allclose(gc / np.outer(d, d), gn / np.outer(d, d), rtol=0, atol=1e-11)


@needs_crows
def test_compiled_centred_gram_rejects_bad_input() -> None:
    n = 50
    Xt, y = np.ones((3, n)), np.arange(n, dtype=float)
    mu, g = np.empty(4), np.empty((4, 4))
    crows.centred_gram(Xt, y, 0, mu, g)                       # well formed
    np.testing.assert_allclose(mu, [0.0, 1.0, 1.0, (n - 1) / 2])
    with pytest.raises(TypeError, match="y must be a float64 array"):
        crows.centred_gram(Xt, y.astype(np.int64), 0, mu, g)
    with pytest.raises(ValueError, match="y has 49 entries, 50 expected"):
        crows.centred_gram(Xt, y[:-1].copy(), 0, mu, g)
    with pytest.raises(ValueError, match="j0 must lie in"):
        crows.centred_gram(Xt, y, 3, mu, g)
    with pytest.raises(ValueError, match="at most 5 columns"):
        crows.centred_gram(np.ones((6, n)), y, 0, np.empty(7), np.empty((7, 7)))
    with pytest.raises(ValueError, match="gram has"):
        crows.centred_gram(Xt, y, 0, mu, np.empty((3, 3)))
    with pytest.raises(ValueError, match="contiguous"):
        crows.centred_gram(np.asfortranarray(Xt), y, 0, mu, g)


def _work(mod: HLM) -> list[np.ndarray]:
    w = mod._work
    return [w.WtW, w.within, w.root, w.proj, w.ZtZ, w.ZtW, w.column_gram, mod._reparam.D,
            mod._reparam.T, mod._work_q]


@needs_crows
@pytest.mark.parametrize("formula", [FORMULA, "mscore ~ flp + (1|school)",
                                     "mscore ~ 0 + ses + flp + (ses|school)",
                                     "mscore ~ flp*ses + (1|school)"])
@pytest.mark.parametrize("block", [None, 97])
def test_working_stats_with_compiled_and_numpy_row_loops_agree(formula, block,
                                                               monkeypatch) -> None:
    """The statistics with the compiled row loops and with the numpy forms (one block,
    and blocks of whole groups of about 97 rows)."""
    data = simulate_nels(n_schools=150, seed=43)
    if block is not None:
        monkeypatch.setattr(deviance_mod, "_ROW_BLOCK", block)
    c = HLM.from_formula(formula, data)
    with monkeypatch.context() as mp:
        mp.setattr(compiled, "crows", lambda: None)
        n_ = HLM.from_formula(formula, data)
    for a, b in zip(_work(c), _work(n_)):
        _close(a, b, rtol=1e-11)


@needs_crows
@pytest.mark.parametrize("n", [1, 2, 5000, 70_000])
def test_compiled_constant_columns_match_numpy(n, monkeypatch) -> None:
    rng = np.random.default_rng(n)
    cols = {"constant": np.full(n, 2.5), "zero": np.zeros(n), "minus zero": np.full(n, -0.0),
            "varying": rng.normal(size=n), "last differs": np.full(n, 3.0),
            "nan first": np.full(n, np.nan), "nan later": np.full(n, -1.0),
            "inf": np.full(n, np.inf)}
    cols["last differs"][-1] = 3.0 + 1e-15 * (n > 1)
    cols["nan later"][n // 2] = np.nan if n > 1 else -1.0
    A = np.asfortranarray(np.column_stack(list(cols.values())))
    with monkeypatch.context() as mp:
        mp.setattr(compiled, "crows", lambda: None)
        expect = deviance_mod.constant_columns(A)
    got = deviance_mod.constant_columns(A)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(
        got, [True, False, False, n == 1, n == 1, False, n == 1, True])
    np.testing.assert_array_equal(deviance_mod.constant_columns(np.ascontiguousarray(A)),
                                  expect)                 # rows contiguous: the numpy form
    out = np.empty(A.shape[1], dtype=bool)
    with pytest.raises(TypeError, match="out must be a bool array"):
        crows.constant_columns(A.T, out.view(np.uint8))
    with pytest.raises(ValueError, match="out has 7 entries, 8 expected"):
        crows.constant_columns(A.T, out[:-1])
