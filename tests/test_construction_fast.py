"""The blocked construction path (issue 10): the same statistics and checks as before, cheaper."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import sm_hlm
import sm_hlm.engine.deviance as deviance_mod
from sm_hlm import HLM
from sm_hlm.crosslevel import Level2InRandomWarning
from sm_hlm.data import _bad_mask, factorize_sorted, formula_variables, group_order
from sm_hlm.simulate import simulate_nels

FORMULA = "mscore ~ flp*ses + (ses|school)"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return simulate_nels(n_schools=120, seed=5)


def _stats(mod: HLM) -> list[np.ndarray]:
    w = mod._work
    return [w.WtW, w.within, w.root, w.proj, w.ZtZ, w.ZtW, mod._reparam.D, mod._reparam.T]


def test_group_order_is_the_stable_sort() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 37, size=5000)
    np.testing.assert_array_equal(group_order(codes, 37), np.argsort(codes, kind="stable"))
    v = np.sort(rng.integers(5, 99, 400))                   # sorted labels: no hashing
    c, lab = factorize_sorted(pd.Series(v))
    rc, rl = pd.factorize(v, sort=True)
    assert c.dtype == np.intp
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_array_equal(lab.to_numpy(), rl)


def test_shuffled_rows_give_the_same_statistics_and_fit(data) -> None:
    shuffled = data.sample(frac=1.0, random_state=2)
    a, b = HLM.from_formula(FORMULA, data), HLM.from_formula(FORMULA, shuffled)
    assert a._sorted and not b._sorted
    np.testing.assert_array_equal(b.group_codes[b._order],
                                  np.sort(b.group_codes, kind="stable"))
    for x, y in zip(_stats(a), _stats(b)):
        np.testing.assert_allclose(y, x, rtol=1e-11, atol=1e-11)
    ra, rb = a.fit(reml=False), b.fit(reml=False)
    assert rb.llf == pytest.approx(ra.llf, rel=1e-12)
    np.testing.assert_allclose(rb.fe_params, ra.fe_params, rtol=1e-9)


@pytest.mark.parametrize("weights", [None, "precision", "survey"])
def test_row_blocks_do_not_change_the_statistics(data, monkeypatch, weights) -> None:
    """Blocks of whole groups (one group larger than a block) agree with one block."""
    big = simulate_nels(n_schools=3, mean_size=300, seed=9)
    big["school"] += 10_000
    d = pd.concat([data, big], ignore_index=True).sample(frac=1.0, random_state=4)
    kw = {}
    if weights == "precision":
        d["w"] = np.random.default_rng(3).uniform(0.5, 2.0, len(d))
        kw = {"weights": "w"}
    elif weights == "survey":
        d["w1"] = np.random.default_rng(3).uniform(0.5, 2.0, len(d))
        d["w2"] = d.groupby("school")["school"].transform(lambda s: 1.0 + (s.iloc[0] % 3))
        kw = {"survey_weights": ["w1", "w2"]}
    one = HLM.from_formula(FORMULA, d, **kw)
    monkeypatch.setattr(deviance_mod, "_ROW_BLOCK", 97)
    many = HLM.from_formula(FORMULA, d, **kw)
    assert len(deviance_mod._group_blocks(many._starts, len(d))) > 20
    for x, y in zip(_stats(one), _stats(many)):
        np.testing.assert_allclose(y, x, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(many._work_q, one._work_q, rtol=1e-12, atol=1e-13)


def test_rank_check_with_and_without_the_screen(data) -> None:
    rng = np.random.default_rng(7)
    n = len(data)
    y, g = data["mscore"].to_numpy(), data["school"].to_numpy()
    x = data["ses"].to_numpy()
    noise = rng.normal(size=n)
    # intercept first: the screen (working statistics) then the QR decide
    ok = np.column_stack([np.ones(n), x, x + 1e-6 * noise])
    HLM(y, ok, g)                                              # R's qr keeps the column
    with pytest.raises(sm_hlm.IdentificationError, match="rank deficient"):
        HLM(y, np.column_stack([np.ones(n), x, 2.0 * x - 1.0]), g)
    # intercept last, or two constant columns: the QR path on the columns
    with pytest.raises(sm_hlm.IdentificationError, match="rank deficient"):
        HLM(y, np.column_stack([x, 3.0 * x, np.ones(n)]), g)
    with pytest.raises(sm_hlm.IdentificationError, match="rank deficient"):
        HLM(y, np.column_stack([np.ones(n), x, np.full(n, 2.0)]), g)
    HLM(y, np.column_stack([x, np.ones(n)]), g)
    # no constant column at all
    with pytest.raises(sm_hlm.IdentificationError, match="rank deficient"):
        HLM(y, np.column_stack([x + 5.0, 2.0 * x + 10.0]), g)


def test_level2_warning_from_group_ranges(data) -> None:
    d = data.assign(smean=data.groupby("school")["ses"].transform("mean"))
    with pytest.warns(Level2InRandomWarning, match="smean"):
        HLM.from_formula("mscore ~ smean + (smean | school)", d.sample(frac=1.0, random_state=1))
    # within the tolerance (1e-10) it is still constant; a spread above it in one group is not
    d2 = d.assign(smean=d["smean"] + 1e-12 * np.arange(len(d)) / len(d))
    with pytest.warns(Level2InRandomWarning, match="smean"):
        HLM.from_formula("mscore ~ smean + (smean | school)", d2)
    d3 = d.copy()
    d3.loc[d3.index[0], "smean"] += 1e-8
    with warnings.catch_warnings():
        warnings.simplefilter("error", Level2InRandomWarning)
        warnings.simplefilter("ignore", sm_hlm.SingularFitWarning)
        HLM.from_formula("mscore ~ smean + (smean | school)", d3)


def test_finite_screen_and_cached_formula_variables() -> None:
    big = np.array([1e308, 1e308, 1.0])                     # the sum overflows, all finite
    assert not _bad_mask(big).any()
    bad = np.array([[1.0, np.nan], [np.inf, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(_bad_mask(bad), [True, True, False])
    a = formula_variables("y ~ x + np.log(z)")
    a.add("junk")
    assert formula_variables("y ~ x + np.log(z)") == {"y", "x", "z"}


def test_workspace_kernels_equal_the_allocating_ones(data) -> None:
    """The in-place forms used by working_stats give bitwise the allocating forms' values."""
    mod = HLM.from_formula(FORMULA, data)
    X, y, Z, st = mod.exog, mod.endog, mod.exog_re, mod._starts
    D = mod._reparam.D
    p = X.shape[1]
    ref = deviance_mod._w_times(X, y, slice(0, len(y)), D)
    buf = np.full((len(y) + 5, p + 2), np.nan, order="F")      # leading rows of a larger buffer
    got = deviance_mod._w_times(X, y, slice(0, len(y)), D, out=buf[:len(y)])
    np.testing.assert_array_equal(got, ref)
    Q0, F0, k0 = deviance_mod.group_qr(Z, st)
    Zw = np.array(Z, order="F")
    Q1, F1, k1 = deviance_mod.group_qr(Zw, st, out=Zw, overwrite_z=True, buf=np.empty(len(y)))
    assert Q1 is Zw
    for a, b in ((Q0, Q1), (F0, F1), (k0, k1)):
        np.testing.assert_array_equal(a, b)
    G = deviance_mod.group_crossprod(Q0, ref, st)
    E0 = deviance_mod._within_crossprod(ref, Q0, G, st)
    W = np.array(ref, order="F")
    E1 = deviance_mod._within_crossprod(W, Q0, G, st, overwrite_w=True, buf=np.empty(len(y)))
    np.testing.assert_array_equal(E0, E1)
    assert not np.array_equal(W, ref)                       # W now holds the residuals E


def test_dropped_rows_and_design_labels(data) -> None:
    d = data.copy()
    d.loc[d.index[[3, 50]], "ses"] = np.nan
    with pytest.warns(sm_hlm.DroppedRowsWarning, match="'ses' \\(2 rows\\)"):
        a = HLM.from_formula(FORMULA, d)
    b = HLM.from_formula(FORMULA, d.dropna(subset=["ses"]))
    assert a.n_dropped == 2 and b.n_dropped == 0
    for x, y in zip(_stats(a), _stats(b)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.row_index, b.row_index)
    # the column labels of every model's design are its own (a cached Index is shared
    # only through views): renaming one leaves the next model's labels alone
    a.data.orig_exog.columns.name = "renamed"
    with pytest.warns(sm_hlm.DroppedRowsWarning):
        c = HLM.from_formula(FORMULA, d)
    assert c.data.orig_exog.columns.name is None
    assert list(c.exog_names) == list(a.exog_names)


def test_bad_mask_of_frames_of_mixed_and_nullable_columns() -> None:
    mixed = pd.DataFrame({"i": [1, 2, 3], "f": [1.0, np.inf, 2.0], "b": [True, False, True]})
    np.testing.assert_array_equal(_bad_mask(mixed), [False, True, False])
    np.testing.assert_array_equal(_bad_mask(mixed[["i", "f"]]), [False, True, False])
    nullable = pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64"), "f": [1.0, 2.0, np.nan]})
    np.testing.assert_array_equal(_bad_mask(nullable), [False, True, True])
    assert not _bad_mask(pd.DataFrame({"i": [1, 2], "u": np.array([3, 4], np.uint8)})).any()


def test_response_series_is_the_design_column(data) -> None:
    mod = HLM.from_formula(FORMULA, data)
    y = mod.data.orig_endog
    assert isinstance(y, pd.Series) and y.name == "mscore"
    assert y.index.equals(data.index)
    np.testing.assert_array_equal(y.to_numpy(), data["mscore"].to_numpy())
    y.iloc[0] = y.iloc[0] + 1.0                 # a writable Series, as y.iloc[:, 0] gave


def _general_and_closed_form(monkeypatch, X, y, Z, starts, blocks=None):
    blocks = [(0, Z.shape[1], Z.shape[1] > 1)] if blocks is None else blocks
    fast = deviance_mod.working_stats(X, y, Z, starts, blocks)
    monkeypatch.setattr(deviance_mod, "_CLOSED_FORM_QR", False)
    slow = deviance_mod.working_stats(X, y, Z, starts, blocks)
    monkeypatch.setattr(deviance_mod, "_CLOSED_FORM_QR", True)
    return fast, slow


def _assert_same_stats(fast, slow, rtol=1e-12, *, same_maps=True) -> None:
    (a, ra, qa), (b, rb, qb) = fast, slow
    if same_maps:                                             # the maps are shared code
        np.testing.assert_array_equal(ra.D, rb.D)
        np.testing.assert_array_equal(ra.T, rb.T)
    else:                                                     # Gram matrices summed by blocks
        np.testing.assert_allclose(ra.D, rb.D, rtol=rtol, atol=rtol * np.abs(rb.D).max())
        np.testing.assert_allclose(ra.T, rb.T, rtol=rtol, atol=rtol * np.abs(rb.T).max())
    for name in ("WtW", "within", "root", "proj", "ZtZ", "ZtW"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, np.abs(y).max()),
                                   err_msg=name)
    np.testing.assert_allclose(qa, qb, rtol=rtol, atol=rtol)
    # aliased directions (zero diagonal of the root) are the same groups
    np.testing.assert_array_equal(np.diagonal(a.root) > 0, np.diagonal(b.root) > 0)


def _layout(sizes):
    sizes = np.asarray(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return int(sizes.sum()), starts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_qr_equals_the_general_path(monkeypatch, seed) -> None:
    """Random intercept (and slope): the closed form gives the general path's statistics,
    with unbalanced groups, one-row groups, a slope constant within a group (Z_j of rank
    one), a negative constant column and near-collinear fixed effects."""
    rng = np.random.default_rng(seed)
    sizes = rng.poisson(6, 60) + 1
    sizes[[3, 17, 40]] = 1                                    # one row: rank one
    n, starts = _layout(sizes)
    g = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.normal(size=n) + rng.normal(size=len(sizes))[g]
    x[starts[5]:starts[6]] = 2.5                              # constant slope in group 5
    x2 = x + 1e-7 * rng.normal(size=n)                        # near-collinear with x
    X = np.column_stack([np.ones(n), x, x2, x * rng.normal(size=n)])
    y = 3.0 + x + rng.normal(size=len(sizes))[g] + rng.normal(size=n)
    for Z in (np.column_stack([np.ones(n), x]), np.ones((n, 1)),
              np.column_stack([np.full(n, -2.0), 1e3 + x])):
        fast, slow = _general_and_closed_form(monkeypatch, X, y, Z, starts)
        _assert_same_stats(fast, slow)
        if Z.shape[1] == 2:               # the slope is aliased in group 5 and one-row groups
            assert np.all(fast[0].root[1, 1, [3, 5, 17, 40]] == 0.0)
            assert np.all(np.delete(fast[0].root[1, 1], [3, 5, 17, 40]) > 0.0)
    # two uncorrelated blocks (1 | g) + (0 + x | g): no centring of x, the same closed form
    Z = np.column_stack([np.ones(n), x])
    fast, slow = _general_and_closed_form(monkeypatch, X, y, Z, starts,
                                          blocks=[(0, 1, False), (1, 2, False)])
    _assert_same_stats(fast, slow)


def test_closed_form_qr_in_blocks_and_where_it_does_not_apply(monkeypatch) -> None:
    rng = np.random.default_rng(11)
    sizes = rng.poisson(30, 40) + 1
    n, starts = _layout(sizes)
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = x + rng.normal(size=n)
    Z = np.column_stack([np.ones(n), x])
    one = deviance_mod.working_stats(X, y, Z, starts, [(0, 2, True)])
    monkeypatch.setattr(deviance_mod, "_ROW_BLOCK", 97)        # many blocks of whole groups
    many = deviance_mod.working_stats(X, y, Z, starts, [(0, 2, True)])
    _assert_same_stats(many, one, same_maps=False)
    monkeypatch.undo()
    # the first column of Z not constant (slope first, or a slope only): the general path
    calls = []
    real = deviance_mod._intercept_qr_stats
    monkeypatch.setattr(deviance_mod, "_intercept_qr_stats",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    deviance_mod.working_stats(X, y, Z[:, ::-1], starts, [(0, 2, True)])
    deviance_mod.working_stats(X, y, Z[:, 1:], starts, [(0, 1, False)])
    deviance_mod.working_stats(X, y, Z, starts, [(0, 2, True)], precision_weights=np.ones(n))
    assert not calls
    deviance_mod.working_stats(X, y, Z, starts, [(0, 2, True)])
    assert calls


def test_closed_form_qr_fit_equals_the_general_path(monkeypatch) -> None:
    d = simulate_nels(n_schools=80, seed=3)
    a = HLM.from_formula(FORMULA, d).fit(reml=False)
    monkeypatch.setattr(deviance_mod, "_CLOSED_FORM_QR", False)
    b = HLM.from_formula(FORMULA, d).fit(reml=False)
    assert a.llf == pytest.approx(b.llf, rel=1e-12)
    np.testing.assert_allclose(a.fe_params, b.fe_params, rtol=1e-9)
    np.testing.assert_allclose(a.cov_re, b.cov_re, rtol=1e-7)


def _column_by_column_map(X, y):
    """D_0 and the Gram matrix of [X y] D_0, column by column (the fallback of _fixed_map)."""
    p = X.shape[1]
    cols = [X[:, i] for i in range(p)] + [y]
    const = [deviance_mod.is_constant(c) for c in cols]
    D = deviance_mod._column_map(cols, [(0, p + 1, True)], const=const)
    if p and not any(const[:p]):
        D = deviance_mod._column_map(cols, [(0, p + 1, False)], const=const)
    W = deviance_mod._w_times(X, y, slice(0, len(y)), D)
    return D, W.T @ W


@pytest.mark.parametrize("layout", ["first", "middle", "none", "two", "negative"])
def test_fixed_map_equals_the_column_map(layout) -> None:
    rng = np.random.default_rng(4)
    n = 3000
    x1 = 50.0 + 3.0 * rng.normal(size=n)
    x2 = -1e4 + rng.normal(size=n)
    one = np.ones(n)
    X = {"first": [one, x1, x2], "middle": [x1, one, x2], "none": [x1, x2],
         "two": [one, x1, np.full(n, 3.0), x2], "negative": [np.full(n, -2.0), x1]}[layout]
    X = np.column_stack(X)
    y = 7.0 + x1 + rng.normal(size=n)
    const = deviance_mod.constant_columns(X)
    np.testing.assert_array_equal(const, [deviance_mod.is_constant(c) for c in X.T])
    wbuf = np.empty((n, X.shape[1] + 2), order="F")
    mapped = deviance_mod._fixed_map(X, y, const, wbuf)
    if layout == "two":           # a second constant column centres to zero: column by column
        assert mapped is None
        return
    D, gram = mapped
    D_ref, gram_ref = _column_by_column_map(X, y)
    np.testing.assert_allclose(D, D_ref, rtol=1e-12, atol=1e-12 * np.abs(D_ref).max())
    # entries that vanish (a centred column against the constant) are rounding noise of
    # the size of n eps |mean| / sd in both
    tol = 1e-10 * np.abs(gram_ref).max()
    np.testing.assert_allclose(gram, gram_ref, rtol=1e-10, atol=tol)
    W = deviance_mod._w_times(X, y, slice(0, n), D)
    np.testing.assert_allclose(W.T @ W, gram, rtol=1e-10, atol=tol)


def test_fixed_map_falls_back_on_zero_columns() -> None:
    n = 200
    x = np.linspace(-1.0, 1.0, n)
    X = np.column_stack([np.ones(n), x, np.zeros(n)])
    y = x ** 2
    const = deviance_mod.constant_columns(X)
    assert deviance_mod._fixed_map(X, y, const, np.empty((n, 5), order="F")) is None
    assert deviance_mod._fixed_map(X[:, :0], y, const[:0], np.empty((n, 2), order="F")) is None
    st, rp, _ = deviance_mod.working_stats(X, y, np.ones((n, 1)), np.arange(0, n, 10),
                                           [(0, 1, False)])
    D_ref, gram_ref = _column_by_column_map(X, y)
    np.testing.assert_array_equal(st.column_gram, gram_ref)
    assert np.all(np.isfinite(rp.D))


@pytest.mark.parametrize("labels", [[3, 3, 5, 9, 9, 9], [3, 3, 5, 3, 9], [9, 5, 5, 3],
                                    ["b", "a", "b"], [7]])
def test_factorize_groups_layout(labels) -> None:
    from sm_hlm.data import factorize_groups
    s = pd.Series(labels, name="g")
    codes, lab, starts, is_sorted = factorize_groups(s)
    rc, rl = pd.factorize(s, sort=True)
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(lab.to_numpy(), np.asarray(rl))
    assert lab.name == "g" and codes.dtype == np.intp and starts.dtype == np.intp
    sizes = np.bincount(rc)
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    assert is_sorted == bool(np.all(np.diff(rc) >= 0))


def test_scope_names_search_the_namespaces() -> None:
    from patsy import EvalEnvironment

    from sm_hlm.data import ScopeNames
    d = simulate_nels(n_schools=20, seed=1)
    local_only = np.linspace(0.0, 1.0, len(d))                # noqa: F841
    scope = ScopeNames(EvalEnvironment.capture(0), ("C", "np"))
    assert "local_only" in scope and "C" in scope and "pytest" in scope
    assert "no_such_name_anywhere" not in scope
    HLM.from_formula("mscore ~ ses + local_only + (1 | school)", d)   # a name in scope
    with pytest.raises(KeyError, match="no_such_name_anywhere"):
        HLM.from_formula("mscore ~ no_such_name_anywhere + (1 | school)", d)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_lower_times_is_the_batched_product(q) -> None:
    rng = np.random.default_rng(q)
    F = np.tril(rng.normal(size=(5, q, q))).transpose(1, 2, 0).copy()      # (q, q, m)
    B = rng.normal(size=(q, 4, 5))
    np.testing.assert_allclose(deviance_mod._lower_times(F, B),
                               np.einsum("akm,krm->arm", F, B), rtol=1e-14, atol=1e-14)
