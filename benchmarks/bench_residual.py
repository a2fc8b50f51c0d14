"""Speed of structured residual covariances against nlme.

    python -m benchmarks.bench_residual [--reps 5] [--nlme-reps 1] [--no-nlme] [--write FILE]

Panels from :func:`sm_hlm.simulate.simulate_panel`: 6 waves, 10% of visits
missing, rows in random order, 2,000 and 20,000 subjects.  Two models, both
by ML:

- random intercept and slope + AR(1): ``y ~ wave*trt + (wave | subject)``,
  ``AR1(time="wave")`` (nlme: ``lme(random = ~ wave | subject,
  correlation = corAR1(form = ~ wave | subject))``);
- gls + unstructured over the 6 waves: ``Unstructured(position="wave")``
  (nlme: ``gls(correlation = corSymm(form = ~ pos | subject),
  weights = varIdent(form = ~ 1 | wave))``).

sm_hlm is timed end to end (``HLM.from_formula(...).fit(reml=False)``, standard
errors included) as the median of ``--reps`` runs; nlme (through Rscript, when
R and nlme are installed) on the same CSV in the same run, as the median of
``--nlme-reps`` runs of the model fit (nlme at 20,000 subjects only with
``--nlme-large``: it takes many minutes).  The table also gives both
log-likelihoods.  No timing is asserted anywhere.
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

from .common import fmt_time, markdown_table
from sm_hlm import AR1, Unstructured
from sm_hlm.simulate import simulate_panel

ROOT = Path(__file__).resolve().parent.parent

#: a 6 x 6 correlation by wave (the validation panels' truth)
CORR6 = 0.25 + 0.6 * 0.6 ** np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
np.fill_diagonal(CORR6, 1.0)
SD6 = [1.0, 1.15, 1.3, 1.2, 0.9, 1.4]

CASES = {
    "slope_ar1": dict(
        label="random intercept + slope, AR(1), ML",
        sim=dict(re_names=("Intercept", "wave"), cov_re=[[1.0, 0.05], [0.05, 0.1]],
                 residual="ar1", phi=0.5),
        fit=lambda d: sm_hlm.HLM.from_formula("y ~ wave*trt + (wave | subject)", d,
                                              residual=AR1(time="wave")).fit(reml=False),
        r=("lme(y ~ wave * trt, d, random = ~ wave | subject, "
           "correlation = corAR1(form = ~ wave | subject), method = 'ML')")),
    "gls_un": dict(
        label="gls, unstructured (6 positions), ML",
        sim=dict(re_names=(), residual="unstructured", corr=CORR6, sd_ratio=SD6),
        fit=lambda d: sm_hlm.HLM.from_formula("y ~ wave*trt", d, groups="subject",
                                              re_formula="0",
                                              residual=Unstructured(position="wave")
                                              ).fit(reml=False),
        r=("gls(y ~ wave * trt, d, correlation = corSymm(form = ~ pos | subject), "
           "weights = varIdent(form = ~ 1 | wave), method = 'ML')")),
}

R_TEMPLATE = r"""
suppressPackageStartupMessages(library(nlme))
d <- read.csv("{path}")
d <- d[order(d$subject, d$wave), ]
d$pos <- as.integer(d$wave + 1L)
d$subject <- factor(d$subject)
reps <- {reps}
times <- numeric(reps)
for (i in seq_len(reps)) {{
  times[i] <- system.time(fit <- {call})[["elapsed"]]
}}
cat(sprintf('{{"times": [%s], "logLik": %.10f, "nlme": "%s"}}\n',
            paste(sprintf("%.6f", times), collapse = ", "), as.numeric(logLik(fit)),
            as.character(packageVersion("nlme"))))
"""


def simulate(case: str, n_subjects: int) -> pd.DataFrame:
    return simulate_panel(n_subjects=n_subjects, n_waves=6, missing_frac=0.1,
                          seed=20_240 + n_subjects + len(case), **CASES[case]["sim"])


def sm_hlm_time(case: str, data: pd.DataFrame, reps: int) -> tuple[float, float, bool]:
    fit = CASES[case]["fit"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(data)                       # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            res = fit(data)
            times.append(time.perf_counter() - t)
    return float(np.median(times)), float(res.llf), bool(res.converged)


def nlme_time(case: str, data: pd.DataFrame, reps: int) -> tuple[float, float] | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        data.to_csv(path, index=False, float_format="%.17g")
        script = Path(tmp) / "t.R"
        script.write_text(R_TEMPLATE.format(path=path.as_posix(), reps=reps,
                                            call=CASES[case]["r"]))
        proc = subprocess.run(["Rscript", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"nlme not available: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(np.median(out["times"])), float(out["logLik"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="sm_hlm runs per case (median)")
    parser.add_argument("--nlme-reps", type=int, default=1, help="nlme runs per case (median)")
    parser.add_argument("--no-nlme", action="store_true", help="skip nlme")
    parser.add_argument("--nlme-large", action="store_true",
                        help="also time nlme at 20,000 subjects (very slow)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--write", type=Path, default=None,
                        help="write the Markdown table to this file")
    args = parser.parse_args(argv)

    rows = []
    small = {}
    for n_sub in args.sizes:
        for case in CASES:
            d = simulate(case, n_sub)
            t, llf, conv = sm_hlm_time(case, d, args.reps)
            if n_sub == min(args.sizes):
                small[case] = t
            run_r = not args.no_nlme and (n_sub == min(args.sizes) or args.nlme_large)
            r = nlme_time(case, d, args.nlme_reps) if run_r else None
            rows.append({
                "model": CASES[case]["label"],
                "subjects": f"{n_sub:,}", "rows": f"{len(d):,}",
                "sm_hlm": fmt_time(t, ms_decimals=0),
                "vs 2,000 subjects": "" if n_sub == min(args.sizes) else f"{t / small[case]:.1f}x",
                "nlme": fmt_time(None if r is None else r[0], ms_decimals=0),
                "nlme / sm_hlm": "" if r is None else f"{r[0] / t:.0f}x",
                "logLik sm_hlm": f"{llf:.4f}",
                "logLik nlme": "" if r is None else f"{r[1]:.4f}",
                "converged": "yes" if conv else "no",
            })
            print(rows[-1], flush=True)
    md = markdown_table(pd.DataFrame(rows))
    print()
    print(md)
    if args.write is not None:
        write_table(args.write, md, header=(
            f"Medians measured {time.strftime('%Y-%m-%d')} (`python -m benchmarks.bench_residual`, "
            f"sm_hlm {args.reps} runs end to end, nlme {args.nlme_reps} run(s)):"))
    return 0


def write_table(path: Path, md: str, *, header: str) -> None:
    """Replace the Markdown table in ``path`` (keeping the text around it), or write a new file."""
    if path.exists():
        lines = path.read_text().splitlines()
        rows = [i for i, line in enumerate(lines) if line.startswith("|")]
        if rows:
            out = lines[:rows[0]] + md.splitlines() + lines[rows[-1] + 1:]
            path.write_text("\n".join(out) + "\n")
            return
    path.write_text(f"{header}\n\n{md}\n")


if __name__ == "__main__":
    sys.exit(main())
