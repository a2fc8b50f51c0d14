"""Speed of Kenward-Roger (sm_hlm.kenward_roger) against pbkrtest.

    python -m benchmarks.bench_kr [--data ../shared/data/nels.csv] [--max-rows 1000000]

Times, as medians over repeated runs on this machine, the Kenward-Roger
table of a REML fit already made (adjusted covariance Phi_A plus the df of
every fixed effect):
  - NELS fit.2, ``mscore ~ flp*ses + (ses | school)`` (12,974 rows, 684 schools),
    sm_hlm and pbkrtest (``vcovAdj`` + ``Lb_ddf`` per coefficient, through
    Rscript when R and pbkrtest are installed) on the same data in the same run;
  - simulated NELS-shaped data at 10^5 rows, both programs (pbkrtest's
    sparse matrices are block diagonal with one grouping factor, so it runs,
    in about 20 s and 1 GB), and at 10^6 rows with ``--max-rows 1000000``
    (sm_hlm alone unless ``--pbkrtest-max-rows`` is raised).
The REML fit itself is timed separately.  The df from both programs are
printed side by side (they agree to ~2e-6 relative: each program uses its own
REML optimum, and the optima differ in the 6th digit of theta; at the same
theta they agree to 1e-12, see tests/test_kenward_roger.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import sm_hlm
from sm_hlm.kenward_roger import kenward_roger
from sm_hlm.simulate import simulate_nels

from .common import fmt_time, markdown_table, median_time

ROOT = Path(__file__).resolve().parent.parent
FORMULA = "mscore ~ flp*ses + (ses | school)"


def pbkrtest_time(data: pd.DataFrame, reps: int) -> tuple[float | None, np.ndarray | None]:
    if shutil.which("Rscript") is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        data.to_csv(path, index=False)
        proc = subprocess.run(["Rscript", str(ROOT / "benchmarks" / "kr_time.R"), str(path),
                               FORMULA, "school", str(reps)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"pbkrtest not available: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None, None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(np.median(out["times"])), np.array(out["ddf"])


def sm_hlm_times(data: pd.DataFrame, reps: int) -> tuple[float, float, pd.DataFrame]:
    model = sm_hlm.HLM.from_formula(FORMULA, data)
    t_fit = median_time(lambda: model.fit(reml=True, compute_vcomp_cov=False), reps)
    res = model.fit(reml=True, compute_vcomp_cov=False)._results

    def kr():
        res.__dict__.pop("_sm_hlm_kr_core", None)      # no cached core between runs
        return kenward_roger(res)
    return t_fit, median_time(kr, reps), kr()


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    info = [f"{d.get('internal_api')} {d.get('num_threads')} thread(s)"
            for d in threadpool_info() if d.get("user_api") == "blas"]
    return ", ".join(info) or "no BLAS found"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nels.csv")
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument("--pbkrtest-max-rows", type=int, default=200_000)
    args = parser.parse_args(argv)

    cases = []
    if args.data.exists():
        cases.append(("NELS fit.2", pd.read_csv(args.data), 10))
    for n in (100_000, 1_000_000):
        if n <= args.max_rows:
            d = simulate_nels(n_schools=round(n / 19), seed=n)
            cases.append(("simulated", d, 7 if n <= 100_000 else 3))
    rows = []
    for label, data, reps in cases:
        t_fit, t_kr, tab = sm_hlm_times(data, reps)
        t_pb, ddf_pb = (pbkrtest_time(data, min(reps, 5)) if len(data) <= args.pbkrtest_max_rows
                        else (None, None))
        if ddf_pb is not None:
            cmp = pd.DataFrame({"sm_hlm df": tab["df"].to_numpy(), "pbkrtest df": ddf_pb},
                               index=tab.index)
            cmp["rel. diff"] = cmp["sm_hlm df"] / cmp["pbkrtest df"] - 1
            print(f"{label}: Kenward-Roger df (each program at its own REML optimum)")
            print(cmp.to_string(float_format=lambda v: f"{v:.8g}"))
        rows.append({"data": f"{label}, {len(data):,} rows, {data.school.nunique():,} groups",
                     "sm_hlm REML fit": fmt_time(t_fit), "sm_hlm KR table": fmt_time(t_kr),
                     "pbkrtest vcovAdj + Lb_ddf": fmt_time(t_pb) if t_pb is not None else "n/a",
                     "pbkrtest / sm_hlm": "" if t_pb is None else f"{t_pb / t_kr:.0f}x"})
        print(rows[-1], flush=True)
    print()
    print(f"Medians; BLAS: {blas_threads()}")
    print(markdown_table(pd.DataFrame(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
