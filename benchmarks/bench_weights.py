"""Cost of weights: a weighted fit against the unweighted one (issue 9).

    python -m benchmarks.bench_weights [--data ../shared/data/nels.csv] [--reps 5]

For NELS fit.2 (``mscore ~ flp*ses + (ses | school)``, ML) and a simulated
NELS-shaped data set of 10^6 rows, the median wall and CPU time of
``from_formula(...).fit(reml=False)`` (end to end) and of ``fit()`` alone,
unweighted, with precision weights (``weights=``) and with survey weights
(``survey_weights=[w1, w2]``, ``weight_scaling="size"``, sandwich SEs), and
the ratio of each weighted median to the unweighted one.  BLAS is pinned to
one thread (threadpoolctl); the machine is shared, so the CPU time (process
time) is shown next to the wall time.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info, threadpool_limits

import sm_hlm
from sm_hlm.simulate import simulate_nels

from .common import fmt_time, markdown_table

ROOT = Path(__file__).resolve().parent.parent
FORMULA = "mscore ~ flp + ses + flp*ses + (ses | school)"


def timed(fn, reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``reps`` runs (after a warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def add_weights(d: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    schools = d["school"].unique()
    w2 = pd.Series(rng.uniform(1.0, 5.0, len(schools)), index=schools)
    return d.assign(w=rng.uniform(0.5, 2.0, len(d)), w1=rng.uniform(1.0, 3.0, len(d)),
                    w2=d["school"].map(w2).to_numpy())


def cases(d: pd.DataFrame) -> dict[str, dict]:
    return {"unweighted": {}, "precision": {"weights": "w"},
            "survey": {"survey_weights": ["w1", "w2"], "weight_scaling": "size"}}


def bench(label: str, d: pd.DataFrame, reps: int) -> list[dict]:
    rows, base = [], {}
    for name, kw in cases(d).items():
        def end_to_end():
            res = sm_hlm.HLM.from_formula(FORMULA, d, **kw).fit(reml=False,
                                                                compute_vcomp_cov=False)
            np.asarray(res.bse_fe)          # the SEs (sandwich for survey weights)
            return res

        model = sm_hlm.HLM.from_formula(FORMULA, d, **kw)
        res = end_to_end()

        def fit_only():
            return model.fit(reml=False, compute_vcomp_cov=False)

        e2e, e2e_cpu = timed(end_to_end, reps)
        fo, fo_cpu = timed(fit_only, reps)
        if name == "unweighted":
            base = {"e2e": e2e, "fit": fo}
        rows.append({"data": label, "rows": f"{len(d):,}", "weights": name,
                     "end to end": fmt_time(e2e), "CPU": fmt_time(e2e_cpu),
                     "ratio": f"{e2e / base['e2e']:.2f}",
                     "fit()": fmt_time(fo), "fit() CPU": fmt_time(fo_cpu),
                     "fit() ratio": f"{fo / base['fit']:.2f}",
                     "evals": res.optimizer.n_evals,
                     "llf": f"{res.llf:.3f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nels.csv"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--big-reps", type=int, default=3)
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with threadpool_limits(limits=1, user_api="blas"):
        blas = [f"{i['internal_api']} {i.get('version', '')} threads={i['num_threads']}"
                for i in threadpool_info() if i["user_api"] == "blas"]
        rows = []
        if Path(args.data).exists():
            nels = pd.read_csv(args.data)
            rows += bench("NELS", add_weights(nels, 1), args.reps)
        big = simulate_nels(n_schools=int(args.big_rows / 19), seed=7)
        rows += bench("simulated", add_weights(big, 2), args.big_reps)
    print(f"sm_hlm {sm_hlm.__version__ if hasattr(sm_hlm, '__version__') else ''}; "
          f"BLAS: {'; '.join(blas)}; medians of {args.reps} (NELS) and {args.big_reps} "
          "(simulated) runs after a warm-up; CPU = process time")
    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
