"""The direct numpy design path gives patsy's design matrices exactly."""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from patsy import EvalEnvironment, dmatrices, dmatrix

from sm_hlm import HLM
from sm_hlm.formula.fast import dmatrices_fast, dmatrix_fast


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 300
    return pd.DataFrame({"y": rng.standard_normal(n), "x": rng.standard_normal(n),
                         "k": rng.integers(0, 5, n), "b": rng.random(n) > 0.5,
                         "c": rng.choice(["u", "v", "w"], n), "g": np.repeat(np.arange(30), 10)})


@pytest.mark.parametrize("formula", ["y ~ x", "y ~ x * k", "y ~ 0 + x + x:k", "y ~ x + c",
                                     "y ~ x + C(c, Treatment('w'))",
                                     "y ~ b + x", "y ~ np.exp(x) + k", "y ~ I(x ** 2) + x",
                                     "k ~ x"])
def test_same_as_patsy(frame: pd.DataFrame, formula: str) -> None:
    env = EvalEnvironment.capture(0)
    y0, X0 = dmatrices(formula, frame, return_type="dataframe", NA_action="raise", eval_env=env)
    for _ in range(2):                                     # the second from the cache
        y1, X1 = dmatrices_fast(formula, frame, eval_env=env)
        pd.testing.assert_frame_equal(X1, X0)
        pd.testing.assert_frame_equal(y1, y0)
    # the same formula once the column is categorical: patsy's coding, not a cached numeric one
    fc = frame.assign(k=frame["k"].astype(str))
    yc, Xc = dmatrices(formula, fc, return_type="dataframe", NA_action="raise", eval_env=env)
    pd.testing.assert_frame_equal(dmatrices_fast(formula, fc, eval_env=env)[1], Xc)
    assert X1.design_info.column_names == X0.design_info.column_names
    rhs = formula.split("~")[1]
    Z0 = dmatrix(rhs, frame, return_type="dataframe", NA_action="raise", eval_env=env)
    pd.testing.assert_frame_equal(dmatrix_fast(rhs, frame, eval_env=env), Z0)


def test_model_from_direct_path_predicts_and_pickles(frame: pd.DataFrame,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sm_hlm.formula.fast as fast
    f = "y ~ x * k + (x | g)"
    res = HLM.from_formula(f, frame).fit(reml=False)
    monkeypatch.setattr(fast, "_HEAD", 10 ** 6)            # patsy on the whole frame
    ref = HLM.from_formula(f, frame).fit(reml=False)
    new = frame.iloc[:7].assign(g=[0, 1, 2, 99, 3, 4, 5])
    np.testing.assert_allclose(np.asarray(res.predict(new)), np.asarray(ref.predict(new)),
                               rtol=1e-12)
    res2 = pickle.loads(pickle.dumps(res))
    np.testing.assert_allclose(np.asarray(res2.predict(new)), np.asarray(ref.predict(new)),
                               rtol=1e-12)


def test_level_missing_from_head_falls_back_to_patsy(frame: pd.DataFrame) -> None:
    f = frame.assign(c=np.where(np.arange(len(frame)) < 50, "u", frame["c"]))
    env = EvalEnvironment.capture(0)
    formula = "y ~ x + C(c, Treatment('w'))"                # 'w' only after the first rows
    X0 = dmatrices(formula, f, return_type="dataframe", NA_action="raise", eval_env=env)[1]
    pd.testing.assert_frame_equal(dmatrices_fast(formula, f, eval_env=env)[1], X0)


@pytest.mark.parametrize("values", [[3, 3, 5, 7, 7, 7], [5, 3, 3], [1, 2, 2, 9], [0],
                                    np.array([2, 1, 1], dtype=np.uint8)])
def test_factorize_sorted_integer_path(values) -> None:
    from sm_hlm.data import factorize_sorted
    s = pd.Series(values, name="g")
    codes, labels = factorize_sorted(s)
    c2, l2 = pd.factorize(s, sort=True)
    np.testing.assert_array_equal(codes, c2)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(l2))
    assert labels.name == "g"
