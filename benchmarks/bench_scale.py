"""Speed at scale: 10^6 and 10^7 rows in memory, Dask, parquet, cost per evaluation vs m.

    python -m benchmarks.bench_scale [--sizes 6 7] [--dask] [--parquet] [--per-eval] [--lme4]
    python -m benchmarks.bench_scale --sizes --multilevel 6 7
    python -m benchmarks.bench_scale --sizes --memory-parquet DIR   # e.g. 10^8 rows in memory

NELS-shaped data (``simulate_nels``, ~19 rows per school), ``mscore ~ flp*ses +
(ses|school)`` by ML.  Each row of the table: wall time (median of ``--reps``), CPU
time of this process and its peak resident memory (``ru_maxrss``, a high-water
mark over the whole run, so later rows inherit earlier peaks).  BLAS is pinned to
one thread with threadpoolctl (the machine is shared: CPU time is the steadier
figure).  lme4 (through Rscript) runs on the same data at 10^6 rows with
``--lme4`` when R is installed.  ``--per-eval`` times one deviance evaluation
and one gradient against the number of groups m.

``--multilevel 6 7``: three-level data shaped as ``benchmarks.bench_multilevel``'s (seeded
``simulate_hierarchy``, ~4.4 classes per school, ~45 rows per class, rows in random
order), ``y ~ x*sector + tq + (x|school) + (x|school:klass)`` by ML, in memory against
Dask on a LocalCluster (2 worker processes, from parquet written in 10^6-row partitions)
and the pyarrow batches (:func:`sm_hlm.scale.from_parquet`), both through per-cell
statistics (:mod:`sm_hlm.scale.cells`); the table gives each fit's logLik and its
difference from the in-memory fit.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from sm_hlm import HLM
from sm_hlm.simulate import simulate_nels

from .bench_core import lme4_time
from .common import machine_note, markdown_table

FORMULA = "mscore ~ flp*ses + (ses|school)"
ROWS_PER_SCHOOL = 19.0


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed(fn, reps: int):
    walls, cpus, out = [], [], None
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus)), out


def phases(df: pd.DataFrame):
    """The ML fit from the DataFrame, and the CPU seconds of from_formula and of fit."""
    c0 = time.process_time()
    mod = HLM.from_formula(FORMULA, df)
    c1 = time.process_time()
    res = mod.fit(reml=False)
    return res, c1 - c0, time.process_time() - c1


def nels(rows: float) -> pd.DataFrame:
    return simulate_nels(n_schools=int(round(rows / ROWS_PER_SCHOOL)), seed=1)


def write_nels_parquet(path: str, *, files: int, rows_per_file: float) -> int:
    """``files`` parquet files of NELS-shaped rows with distinct school ids (row groups of 10^6)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    offset, total = 0, 0
    for i in range(files):
        df = simulate_nels(n_schools=int(round(rows_per_file / ROWS_PER_SCHOOL)), seed=100 + i)
        df["school"] = df["school"].to_numpy() + offset
        offset = int(df["school"].max()) + 1
        df.to_parquet(out / f"part{i:03d}.parquet", row_group_size=1_000_000, index=False)
        total += len(df)
        del df
    return total


ML_FORMULA = "y ~ x*sector + tq + (x|school) + (x|school:klass)"


def multilevel_rows(e: int) -> list[dict]:
    """In memory, Dask (LocalCluster of 2 processes, parquet) and parquet batches at 10^e rows."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from sm_hlm.scale import from_parquet
    from validation.multilevel_data import simulate_hierarchy

    df = simulate_hierarchy(names=["school", "klass"], n_top=int(5000 * 10 ** (e - 6)),
                            mean_children=[4.4, 1e6 / 22000],
                            cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                                    "klass": [[0.5, -0.1], [-0.1, 0.2]]}, seed=2026)
    n_cls = int(df.groupby(["school", "klass"]).ngroups)
    out = []

    def row(what: str, w: float, c: float, r, ref=None, **extra) -> dict:
        d = {"what": f"{what} 10^{e}", "rows": len(df), "classes (cells)": n_cls,
             "wall s": round(w, 2), "cpu s (this process)": round(c, 2),
             "peak GB (this process)": round(peak_gb(), 2), "logLik": round(r.llf, 4)}
        if ref is not None:
            d["logLik - in memory"] = f"{r.llf - ref.llf:.1e}"
            d["max rel. diff. beta"] = (f"{np.max(np.abs(r.fe_params / ref.fe_params - 1)):.1e}")
        d.update(extra)
        return d

    w, c, r_mem = timed(lambda: HLM.from_formula(ML_FORMULA, df).fit(reml=False), 1)
    out.append(row("in memory", w, c, r_mem))
    with tempfile.TemporaryDirectory() as tmp:
        dd.from_pandas(df, npartitions=max(2, len(df) // 1_000_000)).to_parquet(tmp)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cl, Client(cl):
            w, c, r_d = timed(lambda: HLM.from_formula(ML_FORMULA, dd.read_parquet(tmp))
                              .fit(reml=False), 1)
        out.append(row("Dask LocalCluster(2) parquet", w, c, r_d, r_mem,
                       **{"pseudo-rows": len(r_d.model.endog)}))
        path = Path(tmp) / "one.parquet"
        df.to_parquet(path, row_group_size=1_000_000)
        w, c, r_p = timed(lambda: from_parquet(ML_FORMULA, path, progress=False)
                          .fit(reml=False), 1)
        out.append(row("parquet batches", w, c, r_p, r_mem,
                       **{"pseudo-rows": len(r_p.model.endog)}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[6, 7])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--dask", action="store_true")
    ap.add_argument("--parquet", action="store_true")
    ap.add_argument("--per-eval", action="store_true")
    ap.add_argument("--lme4", action="store_true")
    ap.add_argument("--dask-parquet", default=None,
                    help="a parquet directory of NELS-shaped data to fit on a LocalCluster")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write-parquet", default=None, metavar="DIR",
                    help="first write --files files of --rows-per-file NELS-shaped rows there")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--rows-per-file", type=float, default=1e7)
    ap.add_argument("--memory-parquet", default=None, metavar="DIR",
                    help="read a parquet directory into one pandas DataFrame and fit it in "
                         "memory (e.g. the 10^8 rows of --write-parquet)")
    ap.add_argument("--multilevel", type=int, nargs="*", default=[], metavar="E",
                    help="three-level fits at 10^E rows: in memory, Dask, parquet batches")
    args = ap.parse_args(argv)
    if args.write_parquet:
        n = write_nels_parquet(args.write_parquet, files=args.files,
                               rows_per_file=args.rows_per_file)
        print(f"wrote {n} rows to {args.write_parquet}")
    rows = []
    with threadpool_limits(1):
        for e in args.sizes:
            df = nels(10 ** e)
            w, c, (res, c_ff, c_fit) = timed(lambda: phases(df), args.reps)
            rows.append({"what": f"in memory 10^{e}", "rows": len(df),
                         "groups": df["school"].nunique(), "wall s": round(w, 2),
                         "cpu s": round(c, 2), "cpu s from_formula / fit":
                         f"{c_ff:.2f} / {c_fit:.2f}", "peak GB": round(peak_gb(), 2),
                         "logLik": round(res.llf, 4)})
            if args.lme4 and e <= 6:
                t = lme4_time(df, 1)
                if t is not None:
                    rows.append({"what": f"lme4 10^{e}", "rows": len(df),
                                 "groups": df["school"].nunique(), "wall s": round(t, 2)})
            if args.dask:
                import dask.dataframe as dd
                from distributed import Client, LocalCluster
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cl, Client(cl):
                    with tempfile.TemporaryDirectory() as tmp:
                        dd.from_pandas(df, npartitions=max(2, len(df) // 1_000_000)) \
                            .to_parquet(tmp)
                        w, c, r2 = timed(lambda: HLM.from_formula(
                            FORMULA, dd.read_parquet(tmp)).fit(reml=False), 1)
                rows.append({"what": f"Dask LocalCluster(2) parquet 10^{e}", "rows": len(df),
                             "groups": r2.n_groups, "wall s": round(w, 2),
                             "cpu s (client)": round(c, 2), "peak GB": round(peak_gb(), 2),
                             "logLik": round(r2.llf, 4)})
            if args.parquet:
                from sm_hlm.scale import from_parquet
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "d.parquet"
                    df.to_parquet(path, row_group_size=1_000_000)
                    w, c, r3 = timed(lambda: from_parquet(FORMULA, path, progress=False)
                                     .fit(reml=False), 1)
                rows.append({"what": f"parquet batches 10^{e}", "rows": len(df),
                             "groups": r3.n_groups, "wall s": round(w, 2), "cpu s": round(c, 2),
                             "peak GB": round(peak_gb(), 2), "logLik": round(r3.llf, 4)})
            del df
        if args.memory_parquet:
            files = sorted(Path(args.memory_parquet).glob("*.parquet"))
            df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            base = peak_gb()
            w, c, (res, c_ff, c_fit) = timed(lambda: phases(df), 1)
            rows.append({"what": f"in memory from {args.memory_parquet}", "rows": len(df),
                         "groups": res.n_groups, "wall s": round(w, 2), "cpu s": round(c, 2),
                         "cpu s from_formula / fit": f"{c_ff:.2f} / {c_fit:.2f}",
                         "peak GB": f"{peak_gb():.2f} (data {df.memory_usage().sum() / 1e9:.2f}, "
                                    f"after reading {base:.2f})",
                         "logLik": round(res.llf, 4)})
            del df, res
        if args.dask_parquet:
            import dask.dataframe as dd
            from distributed import Client, LocalCluster

            def worker_peak() -> float:
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

            with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                              dashboard_address=None, memory_limit="6GB") as cl, \
                    Client(cl) as client:
                base = peak_gb()
                ddf = dd.read_parquet(args.dask_parquet, split_row_groups=True)
                w, c, r4 = timed(lambda: HLM.from_formula(FORMULA, ddf).fit(reml=False), 1)
                wpk = max(client.run(worker_peak).values())
                rows.append({"what": f"Dask LocalCluster({args.workers}) {args.dask_parquet}",
                             "rows": int(r4.nobs), "groups": r4.n_groups, "wall s": round(w, 1),
                             "cpu s (client)": round(c, 1),
                             "peak GB": f"client {peak_gb():.2f} (before {base:.2f}), "
                                        f"worker {wpk:.2f}",
                             "logLik": round(r4.llf, 4)})
        for e in args.multilevel:
            rows += multilevel_rows(e)
        table = pd.DataFrame(rows)
        print(machine_note())
        print(markdown_table(table.astype(object).where(table.notna(), "")))
        if args.per_eval:
            ev = []
            for m in (1_000, 10_000, 100_000, 1_000_000):
                df = simulate_nels(n_schools=m, seed=2)
                mod = HLM.from_formula(FORMULA, df)
                dev = mod.deviance_function(reml=False)
                th = dev.moment_start()
                dev.work_deviance(th)
                k = max(3, int(2e6 // m))
                w, c, _ = timed(lambda: [dev.work_deviance(th) for _ in range(k)], 1)
                wg, cg, _ = timed(lambda: [dev.work_gradient(th) for _ in range(k)], 1)
                ev.append({"groups m": m, "deviance ms": round(1e3 * w / k, 3),
                           "ns per group": round(1e9 * c / k / m, 1),
                           "gradient ms": round(1e3 * wg / k, 3),
                           "gradient ns per group": round(1e9 * cg / k / m, 1)})
                del df, mod, dev
            print(markdown_table(pd.DataFrame(ev)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
