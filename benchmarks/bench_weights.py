"""Cost of weights: a weighted fit against the unweighted one (issue 9).

    python -m benchmarks.bench_weights [--data ../shared/data/nels.csv] [--reps 5]

For NELS fit.2 (``mscore ~ flp*ses + (ses | school)``, ML) and a simulated
NELS-shaped data set of 10^6 rows, the median wall and CPU time of
``from_formula(...).fit(reml=False)`` (end to end) and of ``fit()`` alone,
unweighted, with precision weights (``weights=``) and with survey weights
(``survey_weights=[w1, w2]``, ``weight_scaling="size"``, sandwich SEs), and
the ratio of each weighted CPU median to the unweighted one (the cases run
in turn within each round).  BLAS is pinned to
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


def timed_interleaved(fns: dict[str, object], reps: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of each ``fn()`` over ``reps`` rounds (after a warm-up).

    The cases run in turn within each round, so a slow spell of the shared
    machine hits all of them alike.
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (float(np.median(wall[k])), float(np.median(cpu[k]))) for k in fns}


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
    e2e_fns, fit_fns, results = {}, {}, {}
    for name, kw in cases(d).items():
        def end_to_end(kw=kw):
            res = sm_hlm.HLM.from_formula(FORMULA, d, **kw).fit(reml=False,
                                                                compute_vcomp_cov=False)
            np.asarray(res.bse_fe)          # the SEs (sandwich for survey weights)
            return res

        model = sm_hlm.HLM.from_formula(FORMULA, d, **kw)
        e2e_fns[name] = end_to_end
        fit_fns[name] = lambda model=model: model.fit(reml=False, compute_vcomp_cov=False)
        results[name] = end_to_end()
    e2e = timed_interleaved(e2e_fns, reps)
    fo = timed_interleaved(fit_fns, reps)
    rows = []
    for name, res in results.items():
        rows.append({"data": label, "rows": f"{len(d):,}", "weights": name,
                     "end to end": fmt_time(e2e[name][0]), "CPU": fmt_time(e2e[name][1]),
                     "CPU ratio": f"{e2e[name][1] / e2e['unweighted'][1]:.2f}",
                     "fit()": fmt_time(fo[name][0]), "fit() CPU": fmt_time(fo[name][1]),
                     "fit() CPU ratio": f"{fo[name][1] / fo['unweighted'][1]:.2f}",
                     "evals": res.optimizer.n_evals, "llf": f"{res.llf:.3f}"})
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
