"""Cross-level part of the NELS validation: fit.2 two ways, its LR test, BLUPs by flp.

:func:`crosslevel_rows` returns rows ``{"quantity", "reference", "ours",
"ok"}`` that ``validation/nels.py`` prints:

* fit.2 of the notes built from the mixed-model formula
  (``mscore ~ flp + ses + flp*ses + (ses | school)``) and from the two
  levels (``HLM.from_levels(level1="mscore ~ ses", level2={"Intercept":
  "~ flp", "ses": "~ flp"}, random=["Intercept", "ses"])``): same fixed
  effects, log-likelihood and fixed-effect estimates (to 1e-8), and the
  log-likelihood against lme4's (to 1e-6);
* the likelihood-ratio test of fit.1 against fit.2 from
  :func:`sm_hlm.compare` against lme4's ``anova(fit.1, fit.2)``
  (``validation/r/compare_lme4.json``): Chisq and the p-value to 1e-6
  relative, Df exactly;
* the notes' boxplot data: per flp category (the school's flp, R's
  ``tapply(flp, school, mean)``), the number of schools and the quartiles
  (R's type 7) of the school intercepts and ses slopes of ``coef(fit.2)``
  (fixed effect + BLUP), to 1e-4.

All fits are ML (``REML = FALSE``), as in the notes.

    python -m validation.nels_crosslevel [--data ../shared/data/nels.csv]
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import sm_hlm
from sm_hlm import HLM
from sm_hlm.crosslevel import group_aggregate

HERE = Path(__file__).resolve().parent
COMPARE_JSON = HERE / "r" / "compare_lme4.json"
LME4_JSON = HERE / "r" / "nels_lme4.json"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "nels.csv"

FIT1 = "mscore ~ ses + (ses | school)"
FIT2 = "mscore ~ flp + ses + flp*ses + (ses | school)"
LEVELS = dict(level1="mscore ~ ses", level2={"Intercept": "~ flp", "ses": "~ flp"},
              groups="school", random=["Intercept", "ses"])

#: tolerances (see the module docstring)
TOL_SAME = 1e-8
TOL_LME4_LLF = 1e-6
TOL_REL_LRT = 1e-6
TOL_BOX = 1e-4


def _row(quantity: str, reference: Any, ours: Any, ok: bool) -> dict[str, Any]:
    return {"quantity": quantity, "reference": reference, "ours": ours, "ok": bool(ok)}


def _num_row(quantity: str, reference: float, ours: float, *, atol: float = 0.0,
             rtol: float = 0.0) -> dict[str, Any]:
    ok = bool(np.isfinite(ours) and abs(ours - reference) <= atol + rtol * abs(reference))
    return _row(quantity, float(reference), float(ours), ok)


def boxplot_data(results: Any, data: pd.DataFrame) -> pd.DataFrame:
    """Per flp category: n schools and quartiles of coef(fit.2)'s intercepts and ses slopes.

    Rows indexed by the flp category; columns ``n_schools``,
    ``intercept_q25``, ``intercept_median``, ``intercept_q75``, ``ses_q25``,
    ``ses_median``, ``ses_q75``.  Quantiles as R's ``quantile(type = 7)``.
    """
    coef = results.group_coefficients
    flp_school = group_aggregate(data, "flp", "school").reindex(coef.index)
    frame = pd.DataFrame({"flp": flp_school.to_numpy(), "intercept": coef["Intercept"].to_numpy(),
                          "ses": coef["ses"].to_numpy()}, index=coef.index)
    rows = {}
    for cat, sub in frame.groupby("flp", sort=True):
        row: dict[str, float] = {"n_schools": float(len(sub))}
        for col in ("intercept", "ses"):
            q = np.quantile(sub[col].to_numpy(), [0.25, 0.5, 0.75])
            row.update({f"{col}_q25": q[0], f"{col}_median": q[1], f"{col}_q75": q[2]})
        rows[cat] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "flp"
    return out


def crosslevel_rows(data: pd.DataFrame) -> list[dict[str, Any]]:
    """Validation rows of the cross-level part (see the module docstring).

    Parameters
    ----------
    data
        The NELS data (``school``, ``flp``, ``ses``, ``mscore``).

    Returns
    -------
    list of dict
        ``{"quantity": str, "reference": float | str, "ours": float | str,
        "ok": bool}``.
    """
    ref = json.loads(COMPARE_JSON.read_text())
    lme4_fit2 = json.loads(LME4_JSON.read_text())["fit.2_ML"]
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = HLM.from_formula(FIT2, data).fit(reml=False)
        levels = HLM.from_levels(data=data, **LEVELS).fit(reml=False)
        fit1 = HLM.from_formula(FIT1, data).fit(reml=False)

    # ---- fit.2 both ways
    rows.append(_row("fit.2 levels: composed formula", FIT2, levels.model.formula,
                     list(levels.model.exog_names) == list(direct.model.exog_names)))
    rows.append(_num_row("fit.2 levels vs formula: logLik", direct.llf, levels.llf,
                         atol=TOL_SAME))
    for name in direct.fe_params.index:
        ours = levels.fe_params.get(name, np.nan)
        rows.append(_num_row(f"fit.2 levels vs formula: fixef {name}",
                             direct.fe_params[name], ours, atol=TOL_SAME))
    rows.append(_num_row("fit.2 levels vs lme4: logLik", lme4_fit2["logLik"], levels.llf,
                         atol=TOL_LME4_LLF))
    eqs = levels.level_equations().frame
    for (eq, gamma), r in eqs.iterrows():
        rows.append(_num_row(f"fit.2 {gamma} ({r['Predictor']} in {eq}) = fixef "
                             f"{r['Fixed effect']}", direct.fe_params[r["Fixed effect"]],
                             r["Coef."], atol=TOL_SAME))

    # ---- LR test fit.1 vs fit.2
    tab = sm_hlm.compare(fit1, levels, names=["fit.1", "fit.2"])
    lrt = ref["anova"]["nels_12_ML"]["table"]
    rows.append(_num_row("LRT fit.1 vs fit.2: Chisq", lrt["Chisq"][1],
                         tab.loc["fit.2", "Chisq"], rtol=TOL_REL_LRT))
    rows.append(_row("LRT fit.1 vs fit.2: Df", int(lrt["Df"][1]), int(tab.loc["fit.2", "Df"]),
                     int(lrt["Df"][1]) == int(tab.loc["fit.2", "Df"])))
    p_ref, p_ours = float(lrt["Pr(>Chisq)"][1]), float(tab.loc["fit.2", "Pr(>Chisq)"])
    p_row = _num_row("LRT fit.1 vs fit.2: Pr(>Chisq)", p_ref, p_ours, rtol=TOL_REL_LRT)
    # printed as strings: the p-value (about 1e-35) would show as 0.0 in a float column
    p_row.update(reference=f"{p_ref:.10g}", ours=f"{p_ours:.10g}")
    rows.append(p_row)

    # ---- the notes' boxplot data
    box = boxplot_data(levels, data)
    for b in ref["boxplot"]:
        cat = float(b["flp"])
        have = cat in box.index
        rows.append(_row(f"BLUPs by flp={cat:g}: n schools", int(b["n_schools"]),
                         int(box.loc[cat, "n_schools"]) if have else "missing",
                         have and int(box.loc[cat, "n_schools"]) == int(b["n_schools"])))
        for col, label in (("intercept", "(Intercept)"), ("ses", "ses")):
            for q in ("q25", "median", "q75"):
                ours = float(box.loc[cat, f"{col}_{q}"]) if have else np.nan
                rows.append(_num_row(f"BLUPs by flp={cat:g}: coef {label} {q}",
                                     b[col][q], ours, atol=TOL_BOX))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"NELS data not found at {args.data}")
        return 0
    rows = pd.DataFrame(crosslevel_rows(pd.read_csv(args.data)))
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(rows.to_string(index=False))
    bad = int((~rows["ok"]).sum())
    print("all ok" if not bad else f"{bad} MISMATCH(ES)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
