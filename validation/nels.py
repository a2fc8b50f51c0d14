"""Fit the course notes' three NELS models and check every number they print.

    python -m validation.nels --data ../shared/data/nels.csv

prints, for fit.0, fit.1 and fit.2 (lme4's ``lmer(..., REML = FALSE)``),
the sm_hlm summary beside the notes' numbers, and the ad-hoc (per-school
OLS) estimates; it exits with status 1 when any number does not match to
the printed precision.  Without a data file it says so and fits a bundled,
seeded NELS-like simulation instead (nothing to compare, exit status 0).

How a number is compared: ours matches when it rounds to the printed value.
The ML likelihood is very flat along some directions of theta, so lme4's
stopping point and ours can differ in the 6th digit of theta while the
log-likelihoods agree to 1e-10; quantities that depend on theta there (a
t value printed to 3 decimals, say) can then differ in their last printed
digit.  Such a number is reported as matching "at lme4's theta" only when
(i) our log-likelihood is not below lme4's (from validation/r/nels_lme4.json)
by more than 1e-6 and (ii) sm_hlm evaluated at lme4's theta reproduces the
printed number.  Everything else must match at our own optimum.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import sm_hlm
from sm_hlm.simulate import simulate_nels

from .reference import ADHOC, FITS, FORMULAS

HERE = Path(__file__).resolve().parent
LME4_JSON = HERE / "r" / "nels_lme4.json"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "nels.csv"


def _tol(printed: str) -> float:
    exp = Decimal(printed).as_tuple().exponent
    return 0.5 * 10.0 ** int(exp) * (1 + 1e-9) + 1e-12


def matches(ours: float, printed: str, *, t_value: bool = False) -> bool:
    """``ours`` rounds to ``printed`` (half a unit of its last digit).

    With ``t_value``, R's ``printCoefmat`` rule is accepted too: it rounds a
    t value to 3 decimals before formatting the column to a common number of
    decimals, so 35.40469 prints as 35.41 (35.405 -> 35.41).
    """
    if not np.isfinite(ours):
        return False
    if abs(ours - float(printed)) <= _tol(printed):
        return True
    return t_value and abs(round(ours, 3) - float(printed)) <= _tol(printed)


def _name(n: str) -> str:
    return "(Intercept)" if n == "Intercept" else n


def quantities(res: Any) -> dict[str, float]:
    """Every quantity the notes print for a fit, computed from our results."""
    out: dict[str, float] = {
        "AIC": res.aic, "BIC": res.bic, "logLik": res.llf, "deviance": res.deviance,
        "df.resid": res.df_resid, "nobs": res.nobs, "groups": res.n_groups,
    }
    from sm_hlm.summary import residual_quantiles
    for k, v in residual_quantiles(res).items():
        out[f"resid {k}"] = float(v)
    cov = res.cov_re
    names = [_name(c) for c in cov.columns]
    C = cov.to_numpy()
    sd = np.sqrt(np.diag(C))
    for i, a in enumerate(names):
        out[f"Var {a}"] = C[i, i]
        out[f"SD {a}"] = sd[i]
        out[f"stddev {a}"] = sd[i]
        for j, b in enumerate(names):
            out[f"VarCorr {a},{b}"] = C[i, j]
            if i > j:
                out[f"Corr {a},{b}"] = C[i, j] / (sd[i] * sd[j])
                out[f"correlation {a},{b}"] = C[i, j] / (sd[i] * sd[j])
    out["Var Residual"] = res.scale
    out["SD Residual"] = float(np.sqrt(res.scale))
    fe, se = res.fe_params, res.bse_fe
    V = res.cov_fe.to_numpy()
    R = res.corr_fe.to_numpy()
    fnames = [_name(c) for c in fe.index]
    for i, a in enumerate(fnames):
        out[f"Estimate {a}"] = out[f"fixef {a}"] = fe.iloc[i]
        out[f"SE {a}"] = out[f"SE* {a}"] = se.iloc[i]
        out[f"t {a}"] = out[f"t* {a}"] = fe.iloc[i] / se.iloc[i]
        for j, b in enumerate(fnames):
            out[f"vcov {a},{b}"] = V[i, j]
            out[f"corr.fe {a},{b}"] = R[i, j]
    return out


def adhoc_quantities(model: sm_hlm.HLM, data: pd.DataFrame) -> dict[str, float]:
    """BETA.OLS column means and covariance, and schools by flp."""
    from sm_hlm.crosslevel import group_aggregate

    mean, cov = model.group_ols_summary()
    out = {f"BETA.OLS mean {_name(k)}": float(v) for k, v in mean.items()}
    for a in cov.index:
        for b in cov.columns:
            out[f"BETA.OLS cov {_name(a)},{_name(b)}"] = float(cov.loc[a, b])
    flp_school = group_aggregate(data, "flp", "school", func="mean")
    for level, count in flp_school.value_counts().sort_index().items():
        out[f"schools with flp {int(level)}"] = float(count)
    return out


def _fmt(v: float, printed: str) -> str:
    exp = -int(Decimal(printed).as_tuple().exponent)
    return f"{v:.{max(exp + 2, 0)}f}"


def compare(ours: dict[str, float], ref: dict[str, str],
            at_lme4: dict[str, float] | None = None, llf_ok: bool = False) -> pd.DataFrame:
    rows = []
    for key, printed in ref.items():
        v = ours.get(key, np.nan)
        is_t = key.startswith("t ")
        status = "ok" if matches(v, printed, t_value=is_t) else "MISMATCH"
        if status != "ok" and at_lme4 is not None and llf_ok and matches(
                at_lme4.get(key, np.nan), printed, t_value=is_t):
            status = "ok at lme4's theta"
        rows.append({"quantity": key, "reference": printed, "sm_hlm": _fmt(v, printed),
                     "status": status})
    return pd.DataFrame(rows)


def run(data_path: Path | None, *, quiet: bool = False) -> int:
    simulated = data_path is None or not Path(data_path).exists()
    if simulated:
        print(f"NELS data not found ({data_path}); fitting a bundled, seeded NELS-like "
              "simulation instead (sm_hlm.simulate.simulate_nels(seed=20240610)). "
              "There is nothing to compare with the notes' numbers.")
        data = simulate_nels(seed=20240610)
    else:
        data = pd.read_csv(data_path)
    lme4 = json.loads(LME4_JSON.read_text()) if LME4_JSON.exists() else {}
    failures = 0
    for name, formula in FORMULAS.items():
        model = sm_hlm.HLM.from_formula(formula, data)
        res = model.fit(reml=False)
        print(f"\n{'=' * 78}\n{name}: lmer({formula}, REML = FALSE)\n{'=' * 78}")
        if not quiet:
            print(res.summary())
        print(f"optimizer: {res.optimizer}")
        if simulated:
            continue
        ref = lme4.get(f"{name}_ML")
        at_lme4, llf_ok = None, False
        if ref is not None:
            theta = np.array(list(ref["theta"].values()))
            at_lme4 = quantities(model.results_at(theta, reml=False, compute_vcomp_cov=False))
            llf_ok = res.llf >= ref["logLik"] - 1e-6
            print(f"logLik: sm_hlm {res.llf:.10f}, lme4 {ref['logLik']:.10f} "
                  f"(difference {res.llf - ref['logLik']:+.2e})")
        table = compare(quantities(res), FITS[name], at_lme4, llf_ok)
        print(table.to_string(index=False))
        failures += int((table["status"] == "MISMATCH").sum())
        if name == "fit.1":
            print("\nAd-hoc estimates (per-school OLS of mscore on ses) and schools by flp")
            adhoc = compare(adhoc_quantities(model, data), ADHOC)
            print(adhoc.to_string(index=False))
            failures += int((adhoc["status"] == "MISMATCH").sum())
    if not simulated:
        failures += _crosslevel(data)
        print(f"\n{'all numbers match' if failures == 0 else f'{failures} MISMATCH(ES)'}")
    return 1 if failures else 0


def _crosslevel(data: pd.DataFrame) -> int:
    """The cross-level part (fit.2 both ways, LR test, BLUPs by flp), when available."""
    try:
        from .nels_crosslevel import crosslevel_rows
    except ImportError:
        return 0
    rows = pd.DataFrame(crosslevel_rows(data))
    print("\nCross-level interaction: fit.2 built both ways, LR test, BLUPs by flp")
    print(rows.assign(status=np.where(rows["ok"], "ok", "MISMATCH")).drop(columns="ok")
          .to_string(index=False))
    return int((~rows["ok"].astype(bool)).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="path to nels.csv (default: ../shared/data/nels.csv)")
    parser.add_argument("--quiet", action="store_true", help="omit the summaries")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return run(args.data, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
