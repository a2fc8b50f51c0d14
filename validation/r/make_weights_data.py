"""Write the data sets that ``weights_lme4.R`` fits with lme4 (issue 9, weights).

Run from the repository root::

    python -m validation.r.make_weights_data

* ``weights_prec.csv``: a random-slope data set from
  :func:`sm_hlm.simulate.simulate_mixed` with a precision weight ``w``
  (residual variance sigma^2 / w: the errors are rescaled by 1 / sqrt(w)).
* ``weights_surv.csv``: a random-slope data set with integer survey weights,
  ``w1`` (level 1, 1 or 2) and ``w2`` (level 2, 1 or 2, constant per group);
  ``weights_surv_rep.csv`` is the same data with every row of weight
  w1 * w2 written w1 times within its group, and every group of weight 2
  written once more as a NEW group (id + 10000): unscaled pseudo-likelihood
  on the first equals plain ML on the second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sm_hlm.simulate import simulate_mixed

DATA_DIR = Path(__file__).resolve().parent / "data"


def precision_data() -> pd.DataFrame:
    df = simulate_mixed(n_groups=120, mean_group_size=12,
                        fe_params={"Intercept": 3.0, "x": 1.0, "z": -0.5},
                        re_names=["Intercept", "x"], cov_re=[[2.0, 0.3], [0.3, 0.5]],
                        scale=2.0, seed=909, min_group_size=2)
    rng = np.random.default_rng(910)
    w = rng.uniform(0.25, 4.0, len(df))
    # heteroscedastic version of the same mean: add extra noise with variance 2 (1/w - 1)^+
    extra = np.sqrt(np.maximum(2.0 * (1.0 / w - 0.5), 0.0)) * rng.standard_normal(len(df))
    df["y"] = df["y"] + extra
    df["w"] = w
    return df


def survey_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = simulate_mixed(n_groups=80, mean_group_size=10,
                        fe_params={"Intercept": 1.0, "x": 0.8},
                        re_names=["Intercept", "x"], cov_re=[[1.0, 0.2], [0.2, 0.4]],
                        scale=1.0, seed=911, min_group_size=2)
    rng = np.random.default_rng(912)
    df["w1"] = rng.integers(1, 3, len(df)).astype(float)
    groups = df["group"].unique()
    w2 = pd.Series(rng.integers(1, 3, len(groups)).astype(float), index=groups)
    df["w2"] = df["group"].map(w2)
    rows = df.loc[df.index.repeat(df["w1"].astype(int))]
    extra = rows[rows["w2"] == 2].copy()
    extra["group"] = extra["group"] + 10000
    rep = pd.concat([rows, extra], ignore_index=True)
    return df, rep[["group", "x", "y"]]


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    prec = precision_data()
    surv, rep = survey_data()
    for name, df in (("weights_prec", prec), ("weights_surv", surv), ("weights_surv_rep", rep)):
        path = DATA_DIR / f"{name}.csv"
        df.to_csv(path, index=False, float_format="%.17g")
        print(f"{path}: {len(df)} rows, {df['group'].nunique()} groups")


if __name__ == "__main__":
    main()
