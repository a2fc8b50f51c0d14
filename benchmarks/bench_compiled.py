"""The compiled kernels against their numpy forms, in the same run.

    python -m benchmarks.bench_compiled [--reps 200] [--sizes 3 4 5 5.7]

Two tables, BLAS pinned to one thread (threadpoolctl):

1. NELS fit.2 (``mscore ~ flp*ses + (ses|school)`` by ML; the NELS file when it is
   found, else the seeded NELS-like simulation): ``hlm(...)`` (from_formula), ``fit()``
   and both together, with the compiled kernels and with their numpy forms, runs
   interleaved (one of each in turn) so that the machine's drifts hit both alike;
   min / p25 / median of ``--reps`` runs each.
2. One deviance evaluation with its gradient (the q = 2 kernel, r = 5) against the
   number of groups m, compiled and numpy (medians).

The numpy forms are selected by :data:`sm_hlm.engine.compiled._DISABLED` (what the
environment variable ``SM_HLM_NUMPY_KERNELS`` sets at import).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from sm_hlm.engine import compiled
from sm_hlm.engine.small import SmallKernel
from sm_hlm.formula.api import hlm
from sm_hlm.simulate import simulate_nels

from .common import machine_note, markdown_table

FORMULA = "mscore ~ flp*ses + (ses|school)"
NELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "nels.csv"


def _stats(ts: list[float]) -> str:
    a = np.array(ts) * 1e3
    return f"{a.min():.2f} / {np.percentile(a, 25):.2f} / {np.median(a):.2f}"


def nels_table(data: pd.DataFrame, reps: int) -> pd.DataFrame:
    times = {(k, w): [] for k in ("compiled", "numpy") for w in ("ff", "fit", "e2e")}
    llf = {}
    for i in range(reps + 5):
        for kind in ("compiled", "numpy"):
            compiled._DISABLED = kind == "numpy"
            t0 = time.perf_counter()
            model = hlm(FORMULA, data)
            t1 = time.perf_counter()
            res = model.fit(reml=False)
            t2 = time.perf_counter()
            llf[kind] = res.llf
            if i >= 5:                                   # five warm-up rounds
                times[kind, "ff"].append(t1 - t0)
                times[kind, "fit"].append(t2 - t1)
                times[kind, "e2e"].append(t2 - t0)
    compiled._DISABLED = False
    rows = []
    for kind in ("compiled", "numpy"):
        rows.append({"kernels": kind,
                     "end to end (ms)": _stats(times[kind, "e2e"]),
                     "from_formula (ms)": _stats(times[kind, "ff"]),
                     "fit() (ms)": _stats(times[kind, "fit"]),
                     "logLik": f"{llf[kind]:.6f}"})
    ratio = np.median(times["numpy", "e2e"]) / np.median(times["compiled", "e2e"])
    rows.append({"kernels": "numpy / compiled (medians)", "end to end (ms)": f"{ratio:.2f}x",
                 "from_formula (ms)": f"{np.median(times['numpy', 'ff']) / np.median(times['compiled', 'ff']):.2f}x",
                 "fit() (ms)": f"{np.median(times['numpy', 'fit']) / np.median(times['compiled', 'fit']):.2f}x",
                 "logLik": f"{llf['compiled'] - llf['numpy']:.1e}"})
    return pd.DataFrame(rows)


def kernel_table(sizes: list[float], r: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for e in sizes:
        m = int(round(10 ** e))
        F = np.zeros((2, 2, m))
        F[0, 0] = rng.uniform(1.0, 5.0, m)
        F[1, 0] = rng.normal(size=m)
        F[1, 1] = rng.uniform(0.5, 3.0, m)
        Gt = rng.normal(size=(r, 2, m))
        W = rng.normal(size=(r + 3, r))
        lam = np.array([[0.4, 0.0], [0.1, 0.2]])
        reps = max(5, min(300, int(3e6 / m)))
        out = {}
        for kind in ("compiled", "numpy"):
            compiled._DISABLED = kind == "numpy"
            k = SmallKernel(F, Gt, W.T @ W)

            def one(k=k):
                R, logdet, inv = k.factor(lam)
                k.gradient_inner(R, inv, p=r - 1, dof=19.0 * m, pwrss=2.0, reml=False)

            one()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                one()
                ts.append(time.perf_counter() - t)
            out[kind] = float(np.median(ts))
        compiled._DISABLED = False
        rows.append({"groups m": f"{m:,}", "compiled (us)": f"{out['compiled'] * 1e6:.1f}",
                     "numpy (us)": f"{out['numpy'] * 1e6:.1f}",
                     "compiled ns / group": f"{out['compiled'] / m * 1e9:.1f}",
                     "numpy / compiled": f"{out['numpy'] / out['compiled']:.2f}x"})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--sizes", type=float, nargs="*", default=[3, 4, 5, 5.7])
    args = ap.parse_args(argv)
    print("compiled kernels:", compiled.status())
    data = pd.read_csv(NELS) if NELS.exists() else simulate_nels(seed=1)
    with threadpool_limits(1):
        print(f"\nNELS fit.2 by ML ({'NELS file' if NELS.exists() else 'simulated NELS'}, "
              f"{len(data):,} rows), {args.reps} interleaved runs each, min / p25 / median:\n")
        print(markdown_table(nels_table(data, args.reps)))
        if args.sizes:
            print("\nOne deviance evaluation with its gradient (q = 2, r = 5), medians:\n")
            print(markdown_table(kernel_table(args.sizes)))
        print(f"\n{machine_note()}")


if __name__ == "__main__":
    main()
