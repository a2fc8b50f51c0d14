"""Several grouping factors from per-cell statistics (Dask, parquet) match the in-memory fit."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM
from sm_hlm.scale.cells import CellRows, gram_rows
from validation.multilevel_data import simulate_crossed, simulate_hierarchy

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    # rows in random order: most cells (innermost units, subject-item pairs) are spread
    # over several partitions, so their partial statistics must be summed
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def three_level() -> pd.DataFrame:
    df = simulate_hierarchy(names=["district", "school", "klass"], n_top=12,
                            mean_children=[4, 4, 8],
                            cov_re={"district": [[0.8, 0.0], [0.0, 0.1]],
                                    "school": [[0.5, 0.1], [0.1, 0.2]],
                                    "klass": [[0.3, 0.0], [0.0, 0.1]]}, seed=21)
    rng = np.random.default_rng(4)
    df["track"] = rng.choice(["academic", "general", "vocational"], size=len(df))
    df.loc[[5, 17], "x"] = np.nan                      # dropped rows, as in memory
    return _shuffled(df, 1)


@pytest.fixture(scope="module")
def two_level() -> pd.DataFrame:
    df = simulate_hierarchy(names=["school", "klass"], n_top=40, mean_children=[4, 10],
                            cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                                    "klass": [[0.5, -0.1], [-0.1, 0.2]]}, seed=7)
    # string and categorical labels: the cells are keyed by codes on levels found up front
    df["school"] = "s" + df["school"].astype(str)
    df["klass"] = df["klass"].astype("category")
    return _shuffled(df, 2)


@pytest.fixture(scope="module")
def crossed() -> pd.DataFrame:
    df = simulate_crossed(n_subj=30, n_item=20, p_obs=0.8, cov_subj=[[0.6, 0.1], [0.1, 0.2]],
                          cov_item=[[0.4, 0.0], [0.0, 0.1]], seed=3)
    rng = np.random.default_rng(5)
    # a second observation of every (subject, item) pair: cells of two rows
    rep = df.assign(y=df.y + rng.normal(size=len(df)), w=rng.normal(size=len(df)),
                    cond=rng.choice([-0.5, 0.5], size=len(df)))
    return _shuffled(pd.concat([df, rep]), 3)


CASES = {
    "nested3": ("three_level",
                "y ~ x * C(track) + sector + (1 | district/school/klass)"),
    "slope_and_inner": ("two_level", "y ~ x + tq + (x | school) + (1 | school:klass)"),
    "crossed": ("crossed", "y ~ cond + w + (cond | subj) + (1 | item)"),
}


def _fits(request, case: str, reml: bool, npartitions: int = 5):
    fixture, formula = CASES[case]
    df = request.getfixturevalue(fixture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # the same warnings on both sides
        mem = HLM.from_formula(formula, df)
        r_mem = mem.fit(reml=reml, ftol_abs=1e-13)
        big = HLM.from_formula(formula, dd.from_pandas(df, npartitions=npartitions))
        r_big = big.fit(reml=reml, ftol_abs=1e-13)
    return df, mem, r_mem, big, r_big


def _agree(r_mem, r_big) -> None:
    assert r_big.llf == pytest.approx(r_mem.llf, abs=1e-6)
    np.testing.assert_allclose(r_big.fe_params, r_mem.fe_params, rtol=1e-7)
    np.testing.assert_allclose(r_big.bse_fe, r_mem.bse_fe, rtol=1e-6)
    np.testing.assert_allclose(r_big.theta, r_mem.theta, rtol=1e-5, atol=1e-6)
    assert r_big.scale == pytest.approx(r_mem.scale, rel=1e-7)
    for f, cov in r_mem.cov_re.items():
        np.testing.assert_allclose(r_big.cov_re[f], cov, rtol=1e-5, atol=1e-8)
    for f, re in r_mem.random_effects.items():
        got = r_big.random_effects[f]
        assert list(got.index) == list(re.index)            # same levels, same labels
        np.testing.assert_allclose(got, re, rtol=1e-5, atol=1e-7)
    assert r_big.model.n_groups == r_mem.model.n_groups
    assert r_big.nobs == r_mem.nobs
    assert r_big.df_resid == r_mem.df_resid
    assert r_big.converged


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_dask_matches_memory(request, client, case: str, reml: bool) -> None:
    df, mem, r_mem, big, r_big = _fits(request, case, reml)
    _agree(r_mem, r_big)
    assert big.n_dropped == mem.n_dropped
    # pseudo-rows: at most rank(G_c) <= min(n_c, c) per cell
    n_rows = len(df) - mem.n_dropped
    assert big.n_cells == mem.factors[mem.factor_names[0]].n_levels or case == "crossed"
    assert len(big.endog) <= min(n_rows, big.n_cells * big._layout.c)
    if case == "slope_and_inner":        # cells of ~10 rows of rank 3: far fewer pseudo-rows
        assert len(big.endog) < 0.5 * n_rows
    # the same deviance at the same theta (working coordinates from the data's moments)
    d_mem, d_big = mem.deviance_function(reml=reml), big.deviance_function(reml=reml)
    tw = np.asarray(r_mem.theta) / mem._theta_scale()
    np.testing.assert_allclose(big._theta_scale(), mem._theta_scale(), rtol=1e-12)
    for th in (tw, tw * 1.7):
        assert d_big(th) == pytest.approx(d_mem(th), rel=1e-11)
    # the log-likelihood recomputed at the estimates (the fit's check) is the in-memory one
    p = mem.k_fe
    at = np.asarray(r_mem.theta)
    assert big.deviance_at_estimates(at, r_mem.fe_params.to_numpy(), r_mem.scale, reml=reml) \
        == pytest.approx(mem.deviance_at_estimates(at, r_mem.fe_params.to_numpy(), r_mem.scale,
                                                   reml=reml), rel=1e-11)
    np.testing.assert_allclose(big.moment_start(), mem.moment_start(), rtol=1e-9)
    assert p == big.k_fe and list(big.exog_names) == list(mem.exog_names)


def test_lazy_fitted_and_resid(request, client) -> None:
    df, mem, r_mem, big, r_big = _fits(request, "nested3", True, npartitions=4)
    fv, rs = r_big.fittedvalues, r_big.resid
    assert hasattr(fv, "dask") and hasattr(rs, "dask")          # lazy, nothing gathered yet
    fv, rs = fv.compute().sort_index(), rs.compute().sort_index()
    exp_f, exp_r = r_mem.fittedvalues.sort_index(), r_mem.resid.sort_index()
    assert fv.index.equals(exp_f.index)                          # the dropped rows are absent
    np.testing.assert_allclose(fv, exp_f, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(rs, exp_r, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r_big.resid_scaled.compute().sort_index(),
                               r_mem.resid_scaled.sort_index(), rtol=1e-6, atol=1e-7)
    # one chunk on the client; a new class in a known school gets the school's effects
    chunk = df.iloc[:50]
    np.testing.assert_allclose(r_big.fittedvalues_of(chunk), exp_f.reindex(
        r_big.fittedvalues_of(chunk).index), rtol=1e-7, atol=1e-7)
    new = df.dropna().iloc[:1].assign(klass=999)
    row = new.iloc[0]
    lab = f"{row.district}:{row.school}"
    expect = (r_mem.fe_params @ r_mem.model.exog[[r_mem.model.row_index.get_loc(new.index[0])]].T
              ).item() + r_mem.random_effects["district"].loc[row.district, "Intercept"] \
        + r_mem.random_effects["district:school"].loc[lab, "Intercept"]
    assert r_big.fittedvalues_of(new).iloc[0] == pytest.approx(expect, rel=1e-7)
    assert r_big.fittedvalues_of(new, include_re=False).iloc[0] == pytest.approx(
        (r_mem.fe_params @ r_mem.model.exog[[r_mem.model.row_index.get_loc(new.index[0])]].T
         ).item(), rel=1e-7)


def test_inference_from_cells(request, client) -> None:
    df, mem, r_mem, big, r_big = _fits(request, "slope_and_inner", True)
    s_mem, s_big = r_mem.satterthwaite(), r_big.satterthwaite()
    np.testing.assert_allclose(s_big["df"], s_mem["df"], rtol=1e-5)
    np.testing.assert_allclose(s_big["Std. Error"], s_mem["Std. Error"], rtol=1e-6)
    np.testing.assert_allclose(r_big.bse_re, r_mem.bse_re, rtol=1e-4)
    pd.testing.assert_frame_equal(r_big.reliability(), r_mem.reliability(), rtol=1e-6)
    pd.testing.assert_frame_equal(r_big.icc(), r_mem.icc(), rtol=1e-6)
    text = r_big.summary().as_text()
    assert "Number of obs: " + str(int(r_mem.nobs)) in text
    assert "Scaled residuals" not in text                      # would need every row
    assert "Scaled residuals" in r_mem.summary().as_text()


def test_what_needs_rows_says_so(request, client) -> None:
    df, mem, r_mem, big, r_big = _fits(request, "crossed", False, npartitions=3)
    for call in (lambda: r_big.cov_robust("CR2", cluster="subj"),
                 lambda: r_big.coef_test_robust("CR2", cluster="subj"),
                 lambda: r_big.simulate(2, seed=1), lambda: r_big.refit(df.y),
                 lambda: r_big.bootstrap(5, seed=1)):
        with pytest.raises(NotImplementedError, match="rows of the data in memory"):
            call()
    with pytest.raises(NotImplementedError, match="fittedvalues_of"):
        r_big.predict()
    with pytest.raises(TypeError, match="bogus"):
        big.fit(bogus=1)
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(TypeError, match="bogus"):
        HLM.from_formula("y ~ cond + (1 | subj) + (1 | item)", ddf, bogus=1)
    with pytest.raises(NotImplementedError, match="residual structures"):
        HLM.from_formula("y ~ cond + (1 | subj) + (1 | item)", ddf, residual="ar1")
    with pytest.raises(NotImplementedError, match="vc_formula"):
        HLM.from_formula("y ~ cond", ddf, vc_formula={"item": "0 + C(item)"})
    with pytest.raises(KeyError, match="site"):
        HLM.from_formula("y ~ cond + (1 | subj) + (1 | site:item)", ddf)


def test_identification_checks_use_the_rows(client) -> None:
    # every row its own (subj, item) cell and an inner factor with as many levels as rows:
    # lme4's checkNlevels on the true counts, not on the pseudo-rows
    df = simulate_crossed(n_subj=8, n_item=6, p_obs=1.0, cov_subj=[[0.5, 0], [0, 0.1]],
                          cov_item=[[0.3, 0], [0, 0.1]], seed=2)
    df["obs"] = np.arange(len(df))
    ddf = dd.from_pandas(df, npartitions=2)
    from sm_hlm.exceptions import IdentificationError
    with pytest.raises(IdentificationError, match="levels for 48 observations"):
        HLM.from_formula("y ~ cond + (1 | subj) + (1 | obs)", ddf)
    with pytest.raises(IdentificationError, match="constant"):
        HLM.from_formula("c ~ cond + (1 | subj) + (1 | item)", ddf.assign(c=1.0))


def test_parquet_batches(tmp_path, three_level) -> None:
    from sm_hlm.scale import from_parquet
    formula = CASES["nested3"][1]
    path = tmp_path / "three.parquet"
    three_level.to_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_mem = HLM.from_formula(formula, three_level).fit(reml=False, ftol_abs=1e-13)
        mod = from_parquet(formula, path, batch_size=97, combine_every=3, progress=False)
        r_pq = mod.fit(reml=False, ftol_abs=1e-13)
    _agree(r_mem, r_pq)
    assert mod.n_dropped == 2
    with pytest.raises(NotImplementedError, match="resid_of"):
        r_pq.resid
    chunk = three_level.iloc[100:160]
    got = r_pq.resid_of(chunk)
    np.testing.assert_allclose(got, r_mem.resid.reindex(got.index), rtol=1e-6, atol=1e-7)


def test_gram_rows_against_dense_algebra() -> None:
    rng = np.random.default_rng(0)
    c = 5
    sizes = [1, 2, 4, 5, 9, 30]                       # fewer rows than columns, and more
    A = [rng.normal(size=(n, c)) for n in sizes]
    A[4][:, 3] = 2.0 * A[4][:, 1] - A[4][:, 0]       # a rank-deficient cell with many rows
    G = np.stack([a.T @ a for a in A])
    rows, cell = gram_rows(G)
    assert np.all(np.diff(cell) >= 0)
    counts = np.bincount(cell, minlength=len(sizes))
    np.testing.assert_array_equal(counts, [min(n, c) for n in sizes[:4]] + [4, 5])
    for k, a in enumerate(A):
        R = rows[cell == k]
        np.testing.assert_allclose(R.T @ R, a.T @ a, rtol=1e-12, atol=1e-12 * np.abs(G[k]).max())
    # an all-zero cell keeps one (zero) row: its levels still occur
    rows0, cell0 = gram_rows(np.zeros((1, c, c)))
    assert rows0.shape == (1, c) and not rows0.any()
    # cells from several buckets come back sorted by key, rows following their cell
    part = [CellRows(np.array([7, 2]), np.array([1.0, 3.0]), np.ones((2, c)),
                     np.arange(3 * c, dtype=float).reshape(3, c), np.array([0, 1, 1])),
            CellRows(np.array([5]), np.array([2.0]), np.ones((1, c)),
                     -np.ones((1, c)), np.array([0]))]
    cat = CellRows.concat(part)
    np.testing.assert_array_equal(cat.keys, [2, 5, 7])
    np.testing.assert_array_equal(cat.n, [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(cat.cell, [0, 0, 1, 2])
    np.testing.assert_array_equal(cat.rows[:2], np.arange(c, 3 * c, dtype=float).reshape(2, c))
    np.testing.assert_array_equal(cat.rows[2], -np.ones(c))
    np.testing.assert_array_equal(cat.rows[3], np.arange(c, dtype=float))


def test_profile_intervals_from_cells(tmp_path) -> None:
    from sm_hlm.scale import from_parquet
    df = simulate_hierarchy(names=["school", "klass"], n_top=30, mean_children=[4, 10],
                            cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                                    "klass": [[0.5, -0.1], [-0.1, 0.2]]}, seed=7)
    path = tmp_path / "two.parquet"
    df.to_parquet(path)
    formula = "y ~ x + (1 | school) + (1 | school:klass)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = HLM.from_formula(formula, df).fit().conf_int_profile()
        b = from_parquet(formula, path, progress=False).fit().conf_int_profile()
    pd.testing.assert_frame_equal(b, a, rtol=1e-5)
