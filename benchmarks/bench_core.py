"""Speed of the core estimator against lme4 and statsmodels' MixedLM.

    python -m benchmarks.bench_core [--data ../shared/data/nels.csv] [--write-readme]

Times, as medians over repeated runs on this machine:
  - NELS fit.2 by ML end to end (from_formula + fit), from_formula() (the model's
    construction: design, checks, working statistics) and fit() alone;
  - simulated NELS-shaped data (about 19 rows per group, four fixed effects,
    correlated random intercept and slope) at 10^4, 10^5 and 10^6 rows.
lme4 (through Rscript, when R and lme4 are installed) and statsmodels'
MixedLM run on the same data in the same run; the table gives their medians
and the ratios to sm_hlm.  ``--write-readme`` replaces the table in README.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import sm_hlm

from threadpoolctl import threadpool_limits

from .common import fmt_time, machine_note, markdown_table, median_time, median_times
from sm_hlm.simulate import simulate_nels

ROOT = Path(__file__).resolve().parent.parent
FORMULA = "mscore ~ flp + ses + flp*ses + (ses | school)"
MARK_START, MARK_END = "<!-- bench:core:start -->", "<!-- bench:core:end -->"


def lme4_time(data: pd.DataFrame, reps: int) -> float | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        data.to_csv(path, index=False)
        proc = subprocess.run(["Rscript", str(ROOT / "benchmarks" / "lme4_time.R"), str(path),
                               FORMULA, "school", str(reps)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"lme4 not available: {proc.stderr.strip()[:200]}", file=sys.stderr)
        return None
    return float(np.median(json.loads(proc.stdout.strip().splitlines()[-1])["times"]))


def mixedlm_time(data: pd.DataFrame, reps: int) -> float | None:
    import statsmodels.formula.api as smf

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smf.mixedlm("mscore ~ flp * ses", data, groups="school",
                        re_formula="~ses").fit(reml=False)
    return median_time(run, reps)


def sm_hlm_times(data: pd.DataFrame, reps: int) -> tuple[float, ...]:
    """Median wall and CPU times: end to end (from_formula + fit), fit() alone and
    from_formula() alone (the six as wall, CPU pairs)."""
    def end_to_end():
        sm_hlm.HLM.from_formula(FORMULA, data).fit(reml=False)
    model = sm_hlm.HLM.from_formula(FORMULA, data)
    return (*median_times(end_to_end, reps), *median_times(lambda: model.fit(reml=False), reps),
            *median_times(lambda: sm_hlm.HLM.from_formula(FORMULA, data), reps))


def ratio(a: float | None, b: float) -> str:
    return "" if a is None else f"{a / b:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nels.csv")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--mixedlm-max-rows", type=int, default=100_000,
                        help="skip MixedLM above this size (it takes minutes)")
    args = parser.parse_args(argv)

    rows = []
    cases = []
    if args.data.exists():
        # 100 runs: a run takes milliseconds, and this 2-core VM's timings swing by a third
        cases.append(("NELS fit.2 (12,974 rows, 684 schools)", pd.read_csv(args.data), 100, True))
    for n in (10_000, 100_000, 1_000_000):
        if n <= args.max_rows:
            d = simulate_nels(n_schools=max(2, round(n / 19)), seed=n)
            reps = 20 if n <= 10_000 else (7 if n <= 100_000 else 5)
            cases.append((f"simulated, {len(d):,} rows, {d.school.nunique():,} groups", d, reps,
                          False))
    for label, data, reps, show_fit in cases:
        with threadpool_limits(1):       # sm_hlm on one BLAS thread (the machine is shared)
            e2e, e2e_cpu, fit_only, fit_cpu, build, build_cpu = sm_hlm_times(data, reps)
        t_lme4 = lme4_time(data, min(reps, 5 if len(data) > 100_000 else 20))
        t_mlm = (mixedlm_time(data, min(reps, 3)) if len(data) <= args.mixedlm_max_rows else None)
        rows.append({"data": label, "sm_hlm end to end": fmt_time(e2e),
                     "(CPU)": fmt_time(e2e_cpu),
                     "sm_hlm from_formula()": fmt_time(build) if show_fit else "",
                     "(from_formula CPU)": fmt_time(build_cpu) if show_fit else "",
                     "sm_hlm fit()": fmt_time(fit_only) if show_fit else "",
                     "(fit CPU)": fmt_time(fit_cpu) if show_fit else "",
                     "lme4 lmer()": fmt_time(t_lme4), "lme4 / sm_hlm": ratio(t_lme4, e2e),
                     "MixedLM fit": fmt_time(t_mlm), "MixedLM / sm_hlm": ratio(t_mlm, e2e)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    md = markdown_table(table) + f"\n\nsm_hlm timed with {machine_note()}."
    print()
    print(md)
    if args.write_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            _, tail = rest.split(MARK_END, 1)
            stamp = time.strftime("%Y-%m-%d")
            block = (f"{MARK_START}\nMedians measured {stamp} on this 2-core machine "
                     f"(`python -m benchmarks.bench_core --write-readme`):\n\n{md}\n{MARK_END}")
            readme.write_text(head + block + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
