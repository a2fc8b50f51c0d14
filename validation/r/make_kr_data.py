"""Write the extra data set that ``kr_pbkrtest.R`` fits with pbkrtest.

Run from the repository root::

    python -m validation.r.make_kr_data

``data/kr_singular.csv``: simulated by :func:`sm_hlm.simulate.simulate_mixed`
with a zero slope variance, so that the REML fit of ``y ~ x + (x | group)``
is singular (lme4 and sm_hlm put the slope's theta on its bound 0): Psi is
singular and Kenward-Roger's algebra must not invert it.  Written with
``float_format="%.17g"`` (R reads the same numbers).
"""
from __future__ import annotations

from .make_core_data import write_cases


CASES: dict[str, dict] = {
    "kr_singular": dict(
        n_groups=40, mean_group_size=6,
        fe_params={"Intercept": 1.0, "x": 0.5},
        re_names=["Intercept", "x"], cov_re=[[0.5, 0.0], [0.0, 0.0]], scale=1.0, seed=600,
    ),
}


def main() -> None:
    write_cases(CASES)


if __name__ == "__main__":
    main()
