"""Write the unbalanced panels that ``residual_nlme.R`` fits with nlme.

Run from the repository root::

    python -m validation.r.make_residual_data

Each panel comes from the package's seeded simulator
:func:`sm_hlm.simulate.simulate_panel` (10-15% of visits missing, rows in
random order) and is written with ``float_format="%.17g"`` so that R reads
the same doubles.  A ``row`` column (0..n-1, the order of the CSV) lets the
R script report per-row quantities that the tests match back to the rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_hlm.simulate import simulate_panel

DATA_DIR = Path(__file__).resolve().parent / "data"

#: a 6 x 6 correlation by wave: decaying with lag on top of a constant
CORR6 = (0.25 + 0.6 * 0.6 ** np.abs(np.subtract.outer(np.arange(6), np.arange(6))))
np.fill_diagonal(CORR6, 1.0)
SD6 = [1.0, 1.15, 1.3, 1.2, 0.9, 1.4]

#: name -> keyword arguments of ``simulate_panel``
CASES: dict[str, dict] = {
    "ar1": dict(n_subjects=250, missing_frac=0.15, re_names=(), residual="ar1", phi=0.6,
                scale=1.5, seed=3101),
    "car1": dict(n_subjects=250, missing_frac=0.15, re_names=(), residual="car1", phi=0.5,
                 irregular=True, scale=1.0, seed=3102),
    "un": dict(n_subjects=300, missing_frac=0.15, re_names=(), residual="unstructured",
               corr=CORR6.tolist(), sd_ratio=SD6, scale=1.0, seed=3103),
    "cs": dict(n_subjects=250, missing_frac=0.15, re_names=(), residual="exchangeable", phi=0.4,
               scale=1.0, seed=3104),
    "ar1h": dict(n_subjects=300, missing_frac=0.15, re_names=(), residual="ar1", phi=0.5,
                 sd_ratio=SD6, scale=1.0, seed=3105),
    "ri_ar1": dict(n_subjects=250, missing_frac=0.15, re_names=("Intercept",), cov_re=[[0.8]],
                   residual="ar1", phi=0.5, scale=1.0, seed=3106),
    "slope_ar1": dict(n_subjects=300, missing_frac=0.15, re_names=("Intercept", "wave"),
                      cov_re=[[1.0, 0.05], [0.05, 0.1]], residual="ar1", phi=0.5, scale=1.0,
                      seed=3107),
    "ri_un": dict(n_subjects=300, missing_frac=0.15, re_names=("Intercept",), cov_re=[[0.5]],
                  residual="unstructured", corr=CORR6.tolist(), sd_ratio=SD6, scale=1.0,
                  seed=3108),
}


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, kwargs in CASES.items():
        df = simulate_panel(**kwargs)
        df.insert(0, "row", np.arange(len(df)))
        path = DATA_DIR / f"panel_{name}.csv"
        df.to_csv(path, index=False, float_format="%.17g")
        print(f"{path}: {len(df)} rows, {df['subject'].nunique()} subjects")


if __name__ == "__main__":
    main()
