"""Timings of the multilevel inference methods (issue 8, item 3) on the R reference cases.

Prints a Markdown table: per case, the median wall time of ``satterthwaite()``,
``cov_robust("CR2")`` + ``coef_test_robust("CR2")`` (nested cases),
and ``bootstrap(20)``; sm_hlm on one BLAS thread.  lmerTest,
clubSandwich are not timed here (their accuracy is in
tests/test_multilevel_inference.py).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD python -m benchmarks.bench_multilevel_inference
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

from sm_hlm import HLM

from .common import fmt_time, machine_note, markdown_table, median_time

ROOT = Path(__file__).resolve().parent.parent
REFS = json.loads((ROOT / "validation" / "r" / "multilevel_inference_refs.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, ref in REFS.items():
            if not isinstance(ref, dict) or "satterthwaite" not in ref or not ref["REML"]:
                continue
            df = pd.read_csv(ROOT / "validation" / "r" / "data" / ref["data"])
            f = ref["formula"]
            if f.startswith("yield ~"):
                f = "Q('yield') ~" + f[len("yield ~"):]
            res = HLM.from_formula(f, df).fit()._results

            def sat():
                res.__dict__.pop("_sm_hlm_satterthwaite", None)
                return res.satterthwaite()
            row = {"case": key, "n": int(res.nobs), "satterthwaite": fmt_time(median_time(sat, args.reps))}
            row["CR2 vcov + coef_test"] = (fmt_time(median_time(
                lambda: res.coef_test_robust("CR2"), args.reps)) if "cr" in ref else "n/a")
            row["bootstrap(20)"] = fmt_time(median_time(
                lambda: res.bootstrap(20, seed=1, progress=False), 1))
            rows.append(row)
    print(markdown_table(pd.DataFrame(rows)))
    print()
    print(machine_note())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
