"""Fit every fuzz case with the current sm_hlm and compare with lme4.

Run from the repository root (no R needed: the lme4 fits are the committed
``validation/r/fuzz_lme4.json``)::

    python -m validation.fuzz                      # all cases, ML and REML
    python -m validation.fuzz --category huge_ratio --limit 5 --json-out out.json

For each fit (case x {ML, REML}) with d = sm_hlm's ``llf`` - lme4's logLik
(default ``lmer`` control) the report counts, by category and in total:

- match: |d| <= 1e-6; better: d > 1e-6;
- worse (warned): d < -1e-6 and sm_hlm raised a ConvergenceWarning;
- worse (SILENT): d < -1e-6 without a ConvergenceWarning: a false optimum
  that looks right;
- below best (SILENT): ``llf`` below the best log-likelihood any lme4
  optimizer reached (``best_logLik``) by more than 1e-6, without a
  ConvergenceWarning;
- clean: among fits where lme4 converged cleanly (no lme4 warning, no
  convergence message other than the singular-fit one), the share where
  sm_hlm returned ``llf >= logLik - 1e-6`` (an sm_hlm error counts as a
  failure); issue 7's target is at least 98%;
- llf bad: |llf - oracle| > 1e-8 max(1, |oracle|), where the oracle is the
  log-likelihood (REML criterion) at the reported estimates computed
  independently and stably (:mod:`validation.fuzz.oracle`);
- errors: sm_hlm raised where lme4 fitted, lme4 raised where sm_hlm fitted,
  both raised;
- oracle vs lme4: the oracle at lme4's own estimates against lme4's logLik
  (a check of the oracle, and of lme4's arithmetic).

Exit status 1 if any fit is worse (SILENT) or below best (SILENT), any
``llf`` is inconsistent, or a data set no longer has its stored checksum
(the generator drifted); 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cases import CASES, CATEGORIES, FuzzCase, checksum_matches
from .oracle import oracle_loglike, oracle_loglike_results

__all__ = ["FitOutcome", "REF_PATH", "fit_case", "lme4_estimates", "load_reference", "main",
           "summarize"]

REF_PATH = Path(__file__).resolve().parent.parent / "r" / "fuzz_lme4.json"
#: |logLik difference| treated as equal
LL_TOL = 1e-6
#: relative tolerance of the llf-versus-oracle check
LLF_RTOL = 1e-8


def load_reference(path: Path = REF_PATH) -> dict[str, Any]:
    """The committed lme4 fits, keyed ``<case>_ML`` / ``<case>_REML``."""
    return json.loads(Path(path).read_text())


def _norm(name: str) -> str:
    """lme4 spelling of a patsy column or theta name: f[T.b] -> fb, Intercept -> (Intercept)."""
    out = name.replace("[T.", "").replace("[", "").replace("]", "")
    return ".".join("(Intercept)" if p == "Intercept" else p for p in out.split("."))


@dataclass
class FitOutcome:
    """One sm_hlm fit of a fuzz case, beside lme4's."""

    key: str
    name: str
    category: str
    reml: bool
    stale: bool = False                 # the data no longer have the stored checksum
    lme4_error: str | None = None
    lme4_logLik: float | None = None
    lme4_best: float | None = None
    lme4_warned: bool | None = None
    sm_error: str | None = None
    llf: float | None = None
    converged: bool | None = None
    conv_warning: bool = False
    singular_warning: bool = False
    other_warnings: list[str] = field(default_factory=list)
    optimizer_message: str | None = None
    oracle: float | None = None
    oracle_error: str | None = None
    oracle_at_lme4: float | None = None   # the oracle at lme4's estimates
    time_s: float = 0.0

    # ---------------------------------------------------------- verdicts
    @property
    def diff(self) -> float | None:
        """sm_hlm llf - lme4 logLik (default control)."""
        if self.llf is None or self.lme4_logLik is None:
            return None
        return self.llf - self.lme4_logLik

    @property
    def diff_best(self) -> float | None:
        """sm_hlm llf - the best lme4 logLik over its optimizers."""
        if self.llf is None or self.lme4_best is None:
            return None
        return self.llf - self.lme4_best

    @property
    def verdict(self) -> str:
        """match, better, worse_warned, worse_silent, sm_error, lme4_error, both_error,
        no_reference."""
        if self.lme4_error is None and self.lme4_logLik is None:
            return "no_reference"
        if self.sm_error is not None and self.lme4_error is not None:
            return "both_error"
        if self.sm_error is not None:
            return "sm_error"
        if self.lme4_error is not None:
            return "lme4_error"
        d = self.diff
        assert d is not None
        if abs(d) <= LL_TOL:
            return "match"
        if d > LL_TOL:
            return "better"
        return "worse_warned" if self.conv_warning else "worse_silent"

    @property
    def below_best_silent(self) -> bool:
        d = self.diff_best
        return d is not None and d < -LL_TOL and not self.conv_warning

    @property
    def lme4_clean(self) -> bool:
        return self.lme4_error is None and self.lme4_warned is False

    @property
    def clean_ok(self) -> bool:
        d = self.diff
        return d is not None and d >= -LL_TOL

    @property
    def llf_gap(self) -> float | None:
        """llf - oracle at the reported estimates."""
        if self.llf is None or self.oracle is None:
            return None
        return self.llf - self.oracle

    @property
    def llf_bad(self) -> bool:
        """llf is not the log-likelihood of the reported estimates (or cannot be checked)."""
        if self.llf is None:
            return False
        if self.oracle is None or not np.isfinite(self.oracle):
            return True
        return abs(self.llf - self.oracle) > LLF_RTOL * max(1.0, abs(self.oracle))

    @property
    def oracle_lme4_gap(self) -> float | None:
        if self.oracle_at_lme4 is None or self.lme4_logLik is None:
            return None
        return self.lme4_logLik - self.oracle_at_lme4


def lme4_estimates(model: Any, ref: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """lme4's theta and beta in the model's order (None if the names do not map)."""
    tnames = [_norm(n) for n in model.re_design.theta_names]
    bnames = [_norm(n) for n in model.exog_names]
    theta, beta = ref.get("theta") or {}, ref.get("beta") or {}
    if sorted(tnames) != sorted(theta) or sorted(bnames) != sorted(beta):
        return None
    return (np.array([theta[n] for n in tnames], dtype=float),
            np.array([beta[n] for n in bnames], dtype=float), float(ref["sigma"]) ** 2)


def fit_case(case: FuzzCase, reml: bool, ref: dict[str, Any] | None,
             data: Any = None) -> FitOutcome:
    """Fit one case with sm_hlm (warnings caught) and check it."""
    from sm_hlm.exceptions import ConvergenceWarning, SingularFitWarning
    from sm_hlm.formula.api import hlm

    key = f"{case.name}_{'REML' if reml else 'ML'}"
    out = FitOutcome(key=key, name=case.name, category=case.category, reml=reml)
    data = case.data() if data is None else data
    if ref is not None:
        out.stale = not checksum_matches(ref["checksum"], data)
        out.lme4_error = ref.get("error")
        if out.lme4_error is None:
            out.lme4_logLik = float(ref["logLik"])
            out.lme4_best = float(ref["best_logLik"])
            out.lme4_warned = bool(ref["warned"])
    t0 = time.perf_counter()
    model = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = hlm(case.formula, data)
            res = model.fit(reml=reml)
        except Exception as exc:    # noqa: BLE001 - every failure is a reported outcome
            out.sm_error = f"{type(exc).__name__}: {exc}"
            res = None
    out.time_s = time.perf_counter() - t0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            out.conv_warning = True
        elif issubclass(w.category, SingularFitWarning):
            out.singular_warning = True
        else:
            out.other_warnings.append(f"{w.category.__name__}: {str(w.message)[:200]}")
    if res is not None:
        out.llf = float(res.llf)
        out.converged = bool(res.converged)
        out.optimizer_message = str(getattr(res.optimizer, "message", ""))
        try:
            out.oracle = oracle_loglike_results(res)
        except Exception as exc:    # noqa: BLE001
            out.oracle_error = f"{type(exc).__name__}: {exc}"
    if model is not None and ref is not None and out.lme4_error is None:
        est = lme4_estimates(model, ref)
        if est is not None:
            try:
                out.oracle_at_lme4 = oracle_loglike(model, est[0], est[1], est[2], reml=reml)
            except Exception:       # noqa: BLE001
                out.oracle_at_lme4 = None
    return out


# ------------------------------------------------------------------ summary
COLUMNS = ("fits", "match", "better", "worse_warned", "worse_silent", "below_best_silent",
           "clean_ok", "clean", "llf_bad", "sm_error", "lme4_error", "both_error",
           "oracle_lme4_bad", "time_s")


def summarize(outcomes: list[FitOutcome]) -> dict[str, int | float]:
    """Counts of one group of fits (see the module docstring)."""
    s: dict[str, int | float] = dict.fromkeys(COLUMNS, 0)
    for o in outcomes:
        s["fits"] += 1
        v = o.verdict
        if v in s:
            s[v] += 1
        s["below_best_silent"] += o.below_best_silent
        if o.lme4_clean:
            s["clean"] += 1
            s["clean_ok"] += o.clean_ok
        s["llf_bad"] += o.llf_bad
        g = o.oracle_lme4_gap
        s["oracle_lme4_bad"] += g is not None and abs(g) > LLF_RTOL * max(1.0, abs(o.lme4_logLik))
        s["time_s"] += o.time_s
    s["stale"] = sum(o.stale for o in outcomes)
    s["missing_ref"] = sum(o.lme4_logLik is None and o.lme4_error is None for o in outcomes)
    return s


def _table(rows: dict[str, dict[str, int | float]]) -> str:
    head = ["category", "fits", "match", "better", "worse:warned", "worse:SILENT",
            "<best:SILENT", "lme4 clean: ok/n", "llf bad", "err sm/lme4/both", "time"]
    lines = []
    for cat, s in rows.items():
        share = f"{s['clean_ok']}/{s['clean']}" + (
            f" ({100 * s['clean_ok'] / s['clean']:.1f}%)" if s["clean"] else "")
        lines.append([cat, s["fits"], s["match"], s["better"], s["worse_warned"],
                      s["worse_silent"], s["below_best_silent"], share, s["llf_bad"],
                      f"{s['sm_error']}/{s['lme4_error']}/{s['both_error']}",
                      f"{s['time_s']:.1f}s"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(r, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in lines[:-1]] + [fmt(["-" * w for w in widths]), fmt(lines[-1])]
    return "\n".join(out)


def _details(outcomes: list[FitOutcome]) -> str:
    lines = []

    def add(title: str, rows: list[str]) -> None:
        if rows:
            lines.append(f"\n{title} ({len(rows)}):")
            lines.extend("  " + r for r in rows)

    add("worse than lme4 WITHOUT a ConvergenceWarning",
        [f"{o.key:42s} d={o.diff:+.3e} (best {o.diff_best:+.3e}) converged={o.converged} "
         f"{(o.optimizer_message or '')[:90]}" for o in outcomes if o.verdict == "worse_silent"])
    add("below lme4's best optimizer WITHOUT a ConvergenceWarning (d to default lme4 within 1e-6)",
        [f"{o.key:42s} d_best={o.diff_best:+.3e}" for o in outcomes
         if o.below_best_silent and o.verdict != "worse_silent"])
    add("worse than lme4, warned",
        [f"{o.key:42s} d={o.diff:+.3e} lme4 warned={o.lme4_warned}" for o in outcomes
         if o.verdict == "worse_warned"])
    add("llf is not the log-likelihood of the reported estimates (llf - oracle)",
        [f"{o.key:42s} llf-oracle={o.llf_gap if o.llf_gap is not None else float('nan'):+.3e} "
         f"d={o.diff if o.diff is not None else float('nan'):+.3e} {o.oracle_error or ''}"
         for o in outcomes if o.llf_bad])
    add("sm_hlm raised where lme4 fitted",
        [f"{o.key:42s} {o.sm_error[:150]} (lme4 warned={o.lme4_warned})" for o in outcomes
         if o.verdict == "sm_error"])
    add("lme4 raised where sm_hlm fitted",
        [f"{o.key:42s} {o.lme4_error[:150]}" for o in outcomes if o.verdict == "lme4_error"])
    add("both raised",
        [f"{o.key:42s} sm_hlm: {o.sm_error[:90]} | lme4: {o.lme4_error[:90]}" for o in outcomes
         if o.verdict == "both_error"])
    add("the oracle at lme4's estimates differs from lme4's logLik by > 1e-8 relative",
        [f"{o.key:42s} lme4-oracle={o.oracle_lme4_gap:+.3e}" for o in outcomes
         if o.oracle_lme4_gap is not None
         and abs(o.oracle_lme4_gap) > LLF_RTOL * max(1.0, abs(o.lme4_logLik))])
    add("data drifted from the stored checksum", [o.key for o in outcomes if o.stale])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.fuzz",
                                 description="sm_hlm against lme4 on the fuzz cases")
    ap.add_argument("--category", action="append", choices=CATEGORIES,
                    help="only this category (repeatable)")
    ap.add_argument("--case", action="append", help="only this case name (repeatable)")
    ap.add_argument("--limit", type=int, help="only the first N cases (after filtering)")
    ap.add_argument("--json-out", type=Path, help="write every fit's outcome and the counts here")
    ap.add_argument("--reference", type=Path, default=REF_PATH, help="the lme4 JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)

    ref = load_reference(args.reference)
    cases = [c for c in CASES if (not args.category or c.category in args.category)
             and (not args.case or c.name in args.case)]
    if args.case and len(cases) != len(set(args.case)):
        unknown = sorted(set(args.case) - {c.name for c in cases})
        ap.error(f"unknown case(s) {unknown}")
    if args.limit is not None:
        cases = cases[:args.limit]
    t0 = time.perf_counter()
    outcomes: list[FitOutcome] = []
    for c in cases:
        data = c.data()
        for reml in (False, True):
            key = f"{c.name}_{'REML' if reml else 'ML'}"
            try:
                o = fit_case(c, reml, ref.get(key), data=data)
            except Exception:       # noqa: BLE001 - a harness bug must not hide the others
                traceback.print_exc()
                o = FitOutcome(key=key, name=c.name, category=c.category, reml=reml,
                               sm_error="harness error (traceback above)")
            outcomes.append(o)
            if not args.quiet:
                d = o.diff
                print(f"{key:44s} {o.verdict:13s} "
                      f"d={'' if d is None else f'{d:+.2e}':10s} "
                      f"llf-oracle={'' if o.llf_gap is None else f'{o.llf_gap:+.1e}':9s} "
                      f"{o.time_s:6.2f}s", flush=True)
    wall = time.perf_counter() - t0
    rows = {cat: summarize([o for o in outcomes if o.category == cat])
            for cat in dict.fromkeys(o.category for o in outcomes)}
    total = summarize(outcomes)
    rows["total"] = total
    print()
    print(_table(rows))
    print(_details(outcomes))
    share = total["clean_ok"] / total["clean"] if total["clean"] else float("nan")
    print(f"\nwhere lme4 converged cleanly: sm_hlm logLik >= lme4's - {LL_TOL:g} in "
          f"{total['clean_ok']}/{total['clean']} fits ({100 * share:.1f}%; issue 7's target 98%)")
    print(f"wall time {wall:.1f} s ({total['time_s']:.1f} s in sm_hlm fits) for "
          f"{total['fits']} fits of {len(cases)} cases")
    gaps = [(abs(o.oracle_lme4_gap) / max(1.0, abs(o.lme4_logLik)), abs(o.oracle_lme4_gap))
            for o in outcomes if o.oracle_lme4_gap is not None]
    if gaps:
        print(f"oracle check: at lme4's estimates the oracle reproduces lme4's logLik in "
              f"{len(gaps) - total['oracle_lme4_bad']}/{len(gaps)} fits to {LLF_RTOL:g} relative "
              f"(largest gap {max(g[0] for g in gaps):.1e} relative, "
              f"{max(g[1] for g in gaps):.1e} absolute)")
    honest = sum(o.verdict == "better" and o.oracle is not None and o.lme4_logLik is not None
                 and o.oracle - o.lme4_logLik > LL_TOL for o in outcomes)
    print(f"better than lme4: {total['better']} by the reported llf, {honest} by the oracle's "
          f"log-likelihood at the reported estimates")
    if total["missing_ref"]:
        print(f"{total['missing_ref']} fits have no lme4 reference (rerun fuzz_lme4.R)")
    failed = (total["worse_silent"] + total["below_best_silent"] + total["llf_bad"]
              + total["stale"])
    print("FAIL" if failed else "PASS",
          f"(silent worse {total['worse_silent']}, silent below best "
          f"{total['below_best_silent']}, inconsistent llf {total['llf_bad']}, "
          f"drifted data {total['stale']})")
    if args.json_out:
        payload = {"summary": rows, "wall_s": wall, "clean_share": share,
                   "fits": [dict(asdict(o), verdict=o.verdict, diff=o.diff,
                                 diff_best=o.diff_best, llf_gap=o.llf_gap, llf_bad=o.llf_bad,
                                 below_best_silent=o.below_best_silent,
                                 lme4_clean=o.lme4_clean) for o in outcomes]}
        args.json_out.write_text(json.dumps(payload, indent=1, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
