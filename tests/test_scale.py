"""Fits from summed statistics (Dask, parquet) agree with the in-memory fit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sm_hlm import HLM
from sm_hlm.formula.api import hlm
from sm_hlm.simulate import simulate_nels

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

FORMULA = "mscore ~ flp*ses + (ses|school)"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    df = simulate_nels(n_schools=150, seed=11)
    # shuffled, so that most schools are spread over several partitions
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _agree(r_mem, r_big) -> None:
    assert r_big.llf == pytest.approx(r_mem.llf, abs=1e-6)
    np.testing.assert_allclose(r_big.fe_params.to_numpy(), r_mem.fe_params.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(r_big.bse_fe.to_numpy(), r_mem.bse_fe.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(r_big.cov_re.to_numpy(), np.asarray(r_mem.cov_re), rtol=1e-5)
    assert r_big.scale == pytest.approx(r_mem.scale, rel=1e-7)


@pytest.mark.parametrize("reml", [False, True])
def test_dask_matches_memory(data, client, reml: bool) -> None:
    ddf = dd.from_pandas(data, npartitions=6)
    # a tight optimiser stop on both sides: the comparison is of the estimators
    mod_mem = HLM.from_formula(FORMULA, data)
    r_mem = mod_mem.fit(reml=reml, ftol_abs=1e-13)
    mod_big = HLM.from_formula(FORMULA, ddf)
    r_big = mod_big.fit(reml=reml, ftol_abs=1e-13)
    _agree(r_mem, r_big)
    # the same deviance and GLS estimate at the same theta
    d_mem, d_big = mod_mem.deviance_function(reml=reml), mod_big.deviance_function(reml=reml)
    for th in (r_mem.theta, r_mem.theta * 1.7):
        assert d_big(th) == pytest.approx(d_mem(th), rel=1e-11)
        np.testing.assert_allclose(d_big.terms(th).beta, d_mem.terms(th).beta, rtol=1e-10)
    assert r_big.n_groups == r_mem.n_groups and r_big.nobs == r_mem.nobs
    re_mem = pd.DataFrame(r_mem.random_effects).T if isinstance(r_mem.random_effects, dict) \
        else r_mem.random_effects
    assert hasattr(r_big.random_effects, "dask")           # lazy, not gathered
    re_big = r_big.random_effects.compute()
    assert len(re_big) == r_mem.n_groups and re_big.index.is_unique
    re_mem = re_mem.loc[re_big.index, re_big.columns]
    np.testing.assert_allclose(re_big.to_numpy(), re_mem.to_numpy(), atol=1e-6)
    with pytest.raises(NotImplementedError, match="lazy"):
        r_big.fittedvalues_of(data.head())
    for name in ("fittedvalues", "resid"):
        lazy = getattr(r_big, name)
        assert hasattr(lazy, "dask")                        # lazy, not gathered
        f = lazy.compute().sort_index()
        assert f.index.equals(data.index)
        np.testing.assert_allclose(f.to_numpy(), np.asarray(getattr(r_mem, name).sort_index()),
                                   atol=1e-6)


def test_hlm_function_and_categorical(data, client) -> None:
    df = data.assign(sector=np.where(data["ses"] > 0.3, "high", "low"))
    df.loc[df.index[:5], "sector"] = "mid"
    ddf = dd.from_pandas(df, npartitions=5)
    f = "mscore ~ flp + C(sector) + (1|school)"
    r_mem = HLM.from_formula(f, df).fit(reml=False, ftol_abs=1e-13)
    r_big = hlm(f, ddf).fit(reml=False, ftol_abs=1e-13)
    assert list(r_big.fe_params.index) == list(r_mem.fe_params.index)
    _agree(r_mem, r_big)


def test_missing_rows_dropped(data, client) -> None:
    df = data.copy()
    df.loc[df.index[::17], "ses"] = np.nan
    r_mem = HLM.from_formula(FORMULA, df).fit(reml=False, ftol_abs=1e-13)
    mod = HLM.from_formula(FORMULA, dd.from_pandas(df, npartitions=4))
    assert mod.n_dropped == int(df["ses"].isna().sum())
    _agree(r_mem, mod.fit(reml=False, ftol_abs=1e-13))


def test_clear_errors(data, client) -> None:
    ddf = dd.from_pandas(data, npartitions=3)
    with pytest.raises(NotImplementedError, match="center"):
        HLM.from_formula("mscore ~ center(ses) + (1|school)", ddf)
    with pytest.raises(NotImplementedError, match="residual structures"):
        HLM.from_formula(FORMULA, ddf, residual=object())
    with pytest.raises(KeyError, match="nope"):
        HLM.from_formula("mscore ~ nope + (1|school)", ddf)
    res = HLM.from_formula(FORMULA, ddf).fit(reml=False)
    with pytest.raises(AttributeError, match="whole groups"):
        res.get_prediction


def test_parquet_batches_match_memory(data, tmp_path) -> None:
    pytest.importorskip("pyarrow")
    from sm_hlm.scale import from_parquet
    d = tmp_path / "nels"
    d.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(data)), 3)):
        data.iloc[rows].to_parquet(d / f"part{i}.parquet")
    for reml in (False, True):
        r_mem = HLM.from_formula(FORMULA, data).fit(reml=reml, ftol_abs=1e-13)
        mod = from_parquet(FORMULA, d, batch_size=500, combine_every=2, progress=False)
        _agree(r_mem, mod.fit(reml=reml, ftol_abs=1e-13))
