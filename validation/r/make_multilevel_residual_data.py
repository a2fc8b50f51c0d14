"""Data for validation/r/multilevel_residual_nlme.R: pupils measured on several
occasions (time 1..T, some missing) in classes in schools, AR(1) errors within pupils.

    python -m validation.r.make_multilevel_residual_data
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "data" / "ml_panel_ar1.csv"


def make(seed: int = 2026, n_school: int = 25, n_child: int = 4, n_time: int = 5,
         phi: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_school):
        us = rng.normal(0.0, 1.0)
        for c in range(n_child):
            uc = rng.normal(0.0, 0.7)
            e = np.empty(n_time)
            e[0] = rng.normal()
            for t in range(1, n_time):
                e[t] = phi * e[t - 1] + np.sqrt(1 - phi ** 2) * rng.normal()
            for t in range(n_time):
                if rng.random() < 0.15:          # unbalanced: missing occasions
                    continue
                x = rng.normal()
                rows.append((s + 1, c + 1, t + 1, x, 1.0 + 0.5 * x + 0.2 * t + us + uc + e[t]))
    df = pd.DataFrame(rows, columns=["school", "child", "time", "x", "y"])
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


if __name__ == "__main__":
    make().to_csv(OUT, index=False, float_format="%.17g")
    print(f"wrote {OUT}")
