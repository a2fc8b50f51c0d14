"""Speed with several grouping factors against lme4 (issue 8, item 7).

    python -m benchmarks.bench_multilevel [--reps 3] [--lme4-reps 3] [--skip-lme4]
                                          [--record-lme4-big]

Two models, timed as medians on this machine:

(a) InstEval, ``y ~ 1 + service + (1|s) + (1|d) + (1|dept)`` by REML (73,421 rows;
    students s crossed with lecturers d, 2,972 x 1,128 levels, and 14 departments).
    The data are lme4's, exported once by ``validation/r/multilevel_lme4_more.R`` to the
    committed ``validation/r/data/insteval.csv``.  lme4 runs in the same run through
    Rscript (``--lme4-reps`` fits, median; about 20-70 s each here).
(b) Three levels, ~10^6 rows, 5,000 schools, ~22,000 classes, correlated random
    intercept and slope at both levels, ``y ~ x*sector + tq + (x|school) +
    (x|school:klass)`` by ML (seeded simulation, ``validation.multilevel_data``).
    lme4 takes minutes here: it runs only with ``--record-lme4-big``, which stores its
    time, log-likelihood and warnings in ``benchmarks/lme4_three_level_record.json``;
    the table shows that record.

The sm_hlm side goes through one function, :func:`fit_sm_hlm` ``(formula, df,
reml)``: "end to end" is that call, from the pandas DataFrame to the optimum (level
codes, model matrices, cross products and sparsity patterns, then BOBYQA over theta).
"Per evaluation" is one profiled deviance at the optimum.  The table also gives the
deviance difference to lme4 (negative: sm_hlm's optimum is lower, i.e. better).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

from sm_hlm import HLM
from validation.multilevel_data import simulate_hierarchy

from .common import fmt_time, markdown_table, median_time

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache"
INSTEVAL_CSV = ROOT / "validation" / "r" / "data" / "insteval.csv"
R_TIMER = ROOT / "benchmarks" / "lme4_multilevel_time.R"
BIG_RECORD = ROOT / "benchmarks" / "lme4_three_level_record.json"

INSTEVAL = "y ~ 1 + service + (1|s) + (1|d) + (1|dept)"
THREE = "y ~ x*sector + tq + (x|school) + (x|school:klass)"
#: grouping columns of each formula (made factors in R)
FACTORS = {INSTEVAL: ["s", "d", "dept"], THREE: ["school", "klass"]}
#: the seeded simulation of case (b)
THREE_SIM = dict(names=["school", "klass"], n_top=5000, mean_children=[4.4, 1e6 / 22000],
                 cov_re={"school": [[1.0, 0.2], [0.2, 0.3]],
                         "klass": [[0.5, -0.1], [-0.1, 0.2]]}, scale=1.0, seed=2026)


# ------------------------------------------------------------------- sm_hlm
@dataclass(frozen=True)
class SmFit:
    """What the table needs from a fit.

    Attributes
    ----------
    deviance
        -2 log-likelihood (ML) or the REML criterion at the optimum.
    n_evals
        Deviance evaluations.
    objective
        ``() -> float``: one profiled deviance evaluation at the optimum, or None.
    set_pinned
        ``(bool) -> None``: pin the dense factorization to one BLAS thread or not,
        or None.
    """

    deviance: float
    n_evals: int
    objective: Callable[[], float] | None = None
    set_pinned: Callable[[bool], None] | None = None


#: the engine's spelling of the two formulas: random terms (factor, columns,
#: correlated) and fixed-effects columns (used until HLM.from_formula takes them)
def fit_sm_hlm(formula: str, df: pd.DataFrame, reml: bool) -> SmFit:
    """Fit ``formula`` to ``df`` with sm_hlm's public API, from the DataFrame to the
    optimum: ``HLM.from_formula(formula, df).fit(reml=reml)`` (level codes, model
    matrices, cross products, sparsity patterns, the optimiser and the logLik check)."""
    res = HLM.from_formula(formula, df).fit(reml=reml, compute_vcomp_cov=False)
    model = res.model
    dev = model.deviance_function(reml=reml)
    theta_w = res.theta / model._theta_scale()

    def set_pinned(on: bool) -> None:
        dev.pin_blas_threads = on
    return SmFit(-2.0 * res.llf, res.optimizer.n_evals, lambda: dev(theta_w), set_pinned)


# --------------------------------------------------------------------- lme4
def run_lme4(csv: Path, formula: str, reml: bool, reps: int) -> dict | None:
    """Time ``lmer()`` (model frame included) on ``csv`` in a fresh Rscript."""
    if shutil.which("Rscript") is None:
        print("lme4 skipped: Rscript not found", file=sys.stderr)
        return None
    proc = subprocess.run(["Rscript", str(R_TIMER), str(csv), formula,
                           "TRUE" if reml else "FALSE", ",".join(FACTORS[formula]), str(reps)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"lme4 failed: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def blas_summary() -> str:
    libs = {(i["internal_api"], i.get("version"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"}
    return "; ".join(f"{api} {ver}: {nt} threads" for api, ver, nt in sorted(libs, key=str))


# -------------------------------------------------------------------- table
def case_row(label: str, df: pd.DataFrame, formula: str, reml: bool, reps: int,
             lme4: dict | None, lme4_note: str = "") -> dict:
    out: list[SmFit] = []
    t_e2e = median_time(lambda: out.append(fit_sm_hlm(formula, df, reml)), reps)
    fit = out[-1]
    row = {"data": label, "per evaluation": "n/a",
           "per evaluation, BLAS threads not pinned": "n/a"}
    if fit.objective is not None:
        row["per evaluation"] = fmt_time(median_time(fit.objective, 15))
        if fit.set_pinned is not None:
            fit.set_pinned(False)
            row["per evaluation, BLAS threads not pinned"] = fmt_time(
                median_time(fit.objective, 5))
            fit.set_pinned(True)
    row.update({"evaluations": str(fit.n_evals), "sm_hlm end to end": fmt_time(t_e2e)})
    if lme4 is not None:
        t_l = float(np.median(lme4["times"]))
        row.update({"lme4 lmer()": fmt_time(t_l) + lme4_note,
                    "lme4 / sm_hlm": f"{t_l / t_e2e:.1f}x",
                    "deviance - lme4's": f"{fit.deviance - lme4['deviance']:.2e}",
                    "lme4 evaluations": str(lme4["feval"]),
                    "lme4 warnings": "; ".join(lme4.get("warnings", [])) or "-"})
    else:
        row.update({"lme4 lmer()": "n/a", "lme4 / sm_hlm": "", "deviance - lme4's": "",
                    "lme4 evaluations": "", "lme4 warnings": ""})
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed sm_hlm fits per case (median)")
    parser.add_argument("--lme4-reps", type=int, default=3,
                        help="timed lme4 fits of InstEval (median)")
    parser.add_argument("--skip-lme4", action="store_true", help="do not run lme4 on InstEval")
    parser.add_argument("--record-lme4-big", action="store_true",
                        help="run lme4 on the 10^6-row case (minutes) and store the record")
    args = parser.parse_args(argv)
    print(f"BLAS: {blas_summary()}; the dense factorization runs with 1 BLAS thread "
          "(threadpoolctl) unless stated, everything else with the settings above")
    rows = []
    inst = pd.read_csv(INSTEVAL_CSV)
    lme4 = None if args.skip_lme4 else run_lme4(INSTEVAL_CSV, INSTEVAL, True, args.lme4_reps)
    note = f" (median of {len(lme4['times'])})" if lme4 is not None else ""
    rows.append(case_row("InstEval REML (73,421 rows; 2,972 x 1,128 crossed + 14)", inst,
                         INSTEVAL, True, args.reps, lme4, note))
    big = simulate_hierarchy(**THREE_SIM)
    n_cls = big.groupby(["school", "klass"]).ngroups
    label = f"three levels ML ({len(big):,} rows; 5,000 schools, {n_cls:,} classes)"
    if args.record_lme4_big:
        csv = CACHE / "three_level_1e6.csv"
        CACHE.mkdir(parents=True, exist_ok=True)
        big.to_csv(csv, index=False, float_format="%.17g")
        rec = run_lme4(csv, THREE, False, 1)
        if rec is not None:
            rec.update(nobs=len(big), sum_y=float(big["y"].sum()),
                       date=time.strftime("%Y-%m-%d"))
            BIG_RECORD.write_text(json.dumps(rec, indent=1) + "\n")
    rec = json.loads(BIG_RECORD.read_text()) if BIG_RECORD.exists() else None
    if rec is not None and (rec["nobs"] != len(big) or
                            not np.isclose(rec["sum_y"], float(big["y"].sum()), rtol=1e-12)):
        print("the lme4 record is for other data; rerun with --record-lme4-big", file=sys.stderr)
        rec = None
    note = f" (recorded {rec['date']}, one fit)" if rec is not None else ""
    rows.append(case_row(label, big, THREE, False, args.reps, rec, note))
    print()
    print(markdown_table(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
