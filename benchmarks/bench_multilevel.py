"""Speed of the multi-factor engine (sm_hlm.engine) against lme4.

    python -m benchmarks.bench_multilevel [--reps 3] [--skip-lme4] [--record-lme4-big]

Two models, timed as medians on this machine:

(a) InstEval, ``y ~ 1 + service + (1|s) + (1|d) + (1|dept)`` by REML (73,421 rows;
    students s crossed with lecturers d, 2,972 x 1,128 levels, and 14 departments).
    The data come from lme4: exported once to ``benchmarks/cache/insteval.csv``
    (git-ignored) when R is installed; without it the case is skipped with a message.
    lme4 runs in the same run through Rscript (about 20 s).
(b) Three levels, ~10^6 rows, 5,000 schools, ~22,000 classes, correlated random
    intercept and slope at both levels, ``y ~ x*sector + tq + (x|school) +
    (x|school:klass)`` by ML (seeded simulation, ``validation.multilevel_data``).
    lme4 takes minutes here: it runs only with ``--record-lme4-big``, which stores its
    time, log-likelihood and warnings in ``benchmarks/lme4_three_level_record.json``;
    the table shows that record.

"End to end" is from the pandas DataFrame to the optimum: level codes, model
matrices, cross products and sparsity patterns, then BOBYQA over theta.  "Per
evaluation" is one profiled deviance at the optimum.  The table also gives the
deviance difference to lme4 (negative: sm_hlm's optimum is lower, i.e. better).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

from sm_hlm.engine.fit import fit_theta
from validation.multilevel_data import design, engine_terms, simulate_hierarchy

from .common import fmt_time, markdown_table

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache"
R_TIMER = ROOT / "benchmarks" / "lme4_multilevel_time.R"
BIG_RECORD = ROOT / "benchmarks" / "lme4_three_level_record.json"

INSTEVAL = dict(formula="y ~ 1 + service + (1|s) + (1|d) + (1|dept)", reml=True,
                factors="s,d,dept", spec=[("s", ["1"], True), ("d", ["1"], True),
                                          ("dept", ["1"], True)], fixed=["1", "service"])
THREE = dict(formula="y ~ x*sector + tq + (x|school) + (x|school:klass)", reml=False,
             factors="school,klass",
             spec=[("school", ["1", "x"], True), ("school:klass", ["1", "x"], True)],
             fixed=["1", "x", "sector", "tq", "x:sector"])
#: the seeded simulation of case (b)
THREE_SIM = dict(names=["school", "klass"], n_top=5000, mean_children=[4.4, 1e6 / 22000],
                 cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                         "klass": [[0.5, -0.1], [-0.1, 0.2]]}, scale=1.0, seed=2026)


def insteval_data() -> pd.DataFrame | None:
    path = CACHE / "insteval.csv"
    if not path.exists():
        if shutil.which("Rscript") is None:
            print("InstEval skipped: R (lme4) is not installed and no cached "
                  f"{path.relative_to(ROOT)}", file=sys.stderr)
            return None
        CACHE.mkdir(parents=True, exist_ok=True)
        code = ("d <- lme4::InstEval; write.csv(data.frame(s = as.integer(d$s), "
                "d = as.integer(d$d), dept = as.integer(d$dept), "
                "service = as.integer(d$service) - 1L, y = d$y), "
                f"'{path}', row.names = FALSE)")
        proc = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"InstEval skipped: {proc.stderr.strip()[:300]}", file=sys.stderr)
            return None
    return pd.read_csv(path)


def three_level_data() -> pd.DataFrame:
    return simulate_hierarchy(**THREE_SIM)


def fit_from_frame(df: pd.DataFrame, case: dict):
    terms = engine_terms(df, case["spec"])
    X = design(df, case["fixed"])
    return fit_theta(terms, X, df["y"].to_numpy(float), reml=case["reml"])


def median_time(fn, reps: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def run_lme4(csv: Path, case: dict, reps: int) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    proc = subprocess.run(["Rscript", str(R_TIMER), str(csv), case["formula"],
                           "TRUE" if case["reml"] else "FALSE", case["factors"], str(reps)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"lme4 failed: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def blas_summary() -> str:
    libs = {(i["internal_api"], i.get("version"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"}
    return "; ".join(f"{api} {ver}: {nt} threads" for api, ver, nt in sorted(libs, key=str))


def case_row(label: str, df: pd.DataFrame, case: dict, reps: int, lme4: dict | None,
             lme4_note: str = "") -> dict:
    fit_from_frame(df, case)                                   # warm-up
    t_e2e, fit = median_time(lambda: fit_from_frame(df, case), reps)
    dev = fit.deviance_function
    t_eval, _ = median_time(lambda: dev(fit.theta), 15)
    dev.pin_blas_threads = False
    t_free, _ = median_time(lambda: dev(fit.theta), 5)
    dev.pin_blas_threads = True
    row = {"data": label, "per evaluation": fmt_time(t_eval),
           "per evaluation, BLAS threads not pinned": fmt_time(t_free),
           "evaluations": str(fit.n_evals), "sm_hlm end to end": fmt_time(t_e2e)}
    if lme4 is not None:
        t_l = float(np.median(lme4["times"]))
        row.update({"lme4 lmer()": fmt_time(t_l) + lme4_note,
                    "lme4 / sm_hlm": f"{t_l / t_e2e:.1f}x",
                    "deviance - lme4's": f"{fit.deviance - lme4['deviance']:.2e}",
                    "lme4 evaluations": str(lme4["feval"])})
    else:
        row.update({"lme4 lmer()": "n/a", "lme4 / sm_hlm": "", "deviance - lme4's": "",
                    "lme4 evaluations": ""})
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed fits per case (median)")
    parser.add_argument("--skip-lme4", action="store_true", help="do not run lme4 on InstEval")
    parser.add_argument("--record-lme4-big", action="store_true",
                        help="run lme4 on the 10^6-row case (minutes) and store the record")
    args = parser.parse_args(argv)
    print(f"BLAS: {blas_summary()}; the dense factorization runs with 1 BLAS thread "
          "(threadpoolctl), everything else with the settings above")
    rows = []
    inst = insteval_data()
    if inst is not None:
        lme4 = None if args.skip_lme4 else run_lme4(CACHE / "insteval.csv", INSTEVAL, 1)
        rows.append(case_row("InstEval REML (73,421 rows; 2,972 x 1,128 crossed + 14)", inst,
                             INSTEVAL, args.reps, lme4))
    big = three_level_data()
    n_cls = big.groupby(["school", "klass"]).ngroups
    label = f"three levels ML ({len(big):,} rows; 5,000 schools, {n_cls:,} classes)"
    if args.record_lme4_big:
        csv = CACHE / "three_level_1e6.csv"
        CACHE.mkdir(parents=True, exist_ok=True)
        big.to_csv(csv, index=False, float_format="%.17g")
        rec = run_lme4(csv, THREE, 1)
        if rec is not None:
            rec.update(nobs=len(big), sum_y=float(big["y"].sum()),
                       date=time.strftime("%Y-%m-%d"))
            BIG_RECORD.write_text(json.dumps(rec, indent=1) + "\n")
    rec = json.loads(BIG_RECORD.read_text()) if BIG_RECORD.exists() else None
    if rec is not None and (rec["nobs"] != len(big) or
                            not np.isclose(rec["sum_y"], float(big["y"].sum()), rtol=1e-12)):
        print("the lme4 record is for other data; rerun with --record-lme4-big", file=sys.stderr)
        rec = None
    note = f" (recorded {rec['date']})" if rec is not None else ""
    rows.append(case_row(label, big, THREE, args.reps, rec, note))
    print()
    print(markdown_table(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
