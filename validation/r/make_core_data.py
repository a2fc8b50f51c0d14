"""Write the simulated data sets that ``core_lme4.R`` fits with lme4.

Run from the repository root::

    python -m validation.r.make_core_data

Each data set comes from the package's seeded simulator
:func:`sm_hlm.simulate.simulate_mixed`, so it is reproducible; the CSV files
are written with full float precision so that R reads exactly the same
numbers that the Python tests use.
"""
from __future__ import annotations

from pathlib import Path

from sm_hlm.simulate import simulate_mixed

DATA_DIR = Path(__file__).resolve().parent / "data"

#: name -> keyword arguments of ``simulate_mixed``
CASES: dict[str, dict] = {
    "ri": dict(
        n_groups=150, mean_group_size=12,
        fe_params={"Intercept": 2.0, "x": 0.5, "z": -1.0},
        re_names=["Intercept"], cov_re=[[0.8]], scale=1.5, seed=101,
    ),
    "slope": dict(
        n_groups=200, mean_group_size=15,
        fe_params={"Intercept": 10, "x": 2, "z": 0.3, "x:z": 0.2},
        re_names=["Intercept", "x"], cov_re=[[4, 0.6], [0.6, 1.0]], scale=4, seed=202,
    ),
    "indep": dict(
        n_groups=180, mean_group_size=10,
        fe_params={"Intercept": 1, "x": -1},
        re_names=["Intercept", "x"], cov_re=[[1.0, 0], [0, 0.5]], scale=1, seed=303,
    ),
    "nearsing": dict(
        n_groups=60, mean_group_size=8,
        fe_params={"Intercept": 0, "x": 1},
        re_names=["Intercept", "x"], cov_re=[[0.3, 0.0], [0.0, 1e-4]], scale=2, seed=404,
    ),
    "three": dict(
        n_groups=250, mean_group_size=20,
        fe_params={"Intercept": 5, "x": 1, "z": -0.5},
        re_names=["Intercept", "x", "z"],
        cov_re=[[2, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 0.5]], scale=1, seed=505,
    ),
}


def write_cases(cases: dict) -> None:
    """Simulate each case with :func:`simulate_mixed` and write ``data/<name>.csv``."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, kwargs in cases.items():
        df = simulate_mixed(**kwargs, group_col="group", response="y")
        path = DATA_DIR / f"{name}.csv"
        df.to_csv(path, index=False, float_format="%.17g")
        print(f"{path}: {len(df)} rows, {df['group'].nunique()} groups")


def main() -> None:
    write_cases(CASES)


if __name__ == "__main__":
    main()
