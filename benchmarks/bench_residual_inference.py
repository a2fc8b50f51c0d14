"""Cost of inference for models with a structured residual covariance.

    python -m benchmarks.bench_residual_inference [--reps 3] [--boot 10]

(random effects by subject; results in benchmarks/RESULTS_residual_inference.md)

On the nlme reference panels (validation/r/data/panel_*.csv, 1,300-1,550
rows, 250-300 subjects, 6 waves) the table gives, per model, the median wall
time of the fit, ``satterthwaite()`` (Hessian of the deviance in all variance
parameters and the Jacobian of cov(beta)), ``cov_robust("CR2")``,
``coef_test_robust("CR2")``, the profile interval of one fixed effect
(``conf_int_profile(which=["wave"])``, ML fits) and one bootstrap replicate
(``--boot`` replicates, divided).  No timing is asserted anywhere.  No R peer:
nlme has no Satterthwaite, profile or bootstrap for these models, and the
clubSandwich / emmeans references in validation/r are not timed.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_info

from sm_hlm import AR1, HLM, ContinuousAR1, Exchangeable, Heteroscedastic, Unstructured

from .common import fmt_time, markdown_table, median_time

DATA = Path(__file__).resolve().parents[1] / "validation" / "r" / "data"
MODELS = {
    "gls + AR1": ("panel_ar1.csv", "0", lambda: AR1(time="wave")),
    "gls + CAR1": ("panel_car1.csv", "0", lambda: ContinuousAR1(time="time")),
    "gls + Exchangeable": ("panel_cs.csv", "0", lambda: Exchangeable()),
    "gls + Unstructured": ("panel_un.csv", "0", lambda: Unstructured(position="wave")),
    "intercept + AR1": ("panel_ri_ar1.csv", "1", lambda: AR1(time="wave")),
    "intercept, slope + AR1": ("panel_slope_ar1.csv", "~ wave", lambda: AR1(time="wave")),
    "intercept + Heteroscedastic": ("panel_ri_ar1.csv", "1",
                                    lambda: Heteroscedastic(by="wave")),
}


def blas_summary() -> str:
    libs = {(i["internal_api"], i.get("version"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"}
    return "; ".join(f"{api} {ver}: {nt} threads" for api, ver, nt in sorted(libs, key=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--boot", type=int, default=10)
    args = ap.parse_args()
    rows = []
    warnings.simplefilter("ignore")
    for name, (csv, rf, structure) in MODELS.items():
        data = pd.read_csv(DATA / csv)
        model = HLM.from_formula("y ~ wave*trt", data, groups="subject", re_formula=rf,
                                 residual=structure())
        t_fit = median_time(lambda: model.fit(reml=False), args.reps)
        res = model.fit(reml=False)

        def satt():
            object.__setattr__(res._results, "_sm_hlm_satterthwaite", None)
            return res.satterthwaite()
        t_satt = median_time(satt, args.reps)
        t_cr2 = median_time(lambda: res.cov_robust("CR2"), args.reps)
        t_ct = median_time(lambda: res.coef_test_robust("CR2"), args.reps)
        t_prof = median_time(lambda: res.conf_int_profile(which=["wave"]), 1)
        t0 = time.perf_counter()
        res.bootstrap(args.boot, seed=1, progress=False)
        t_boot = (time.perf_counter() - t0) / args.boot
        rows.append({"model": name, "rows": int(model.nobs), "fit (ML)": fmt_time(t_fit),
                     "satterthwaite": fmt_time(t_satt), "CR2 vcov": fmt_time(t_cr2),
                     "CR2 coef_test": fmt_time(t_ct), "profile (1 beta)": fmt_time(t_prof),
                     "bootstrap / replicate": fmt_time(t_boot)})
    print(f"BLAS: {blas_summary()}; medians of {args.reps} runs (profile: 1 run)")
    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
