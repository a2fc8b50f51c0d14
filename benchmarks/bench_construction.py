"""Construction time (``hlm(formula, data)``) against another revision of sm_hlm.

    python -m benchmarks.bench_construction [--against main] [--reps 300]
                                            [--data ../shared/data/nels.csv]

NELS fit.2's model, ``hlm("mscore ~ flp*ses + (ses|school)", nels)``, built by
this checkout and by the package of another git revision (``git archive`` into
a temporary directory, imported under another name) in the same process, the
calls interleaved (ABAB...), so that both see the same load on a shared
machine.  The table gives min, p25 and median per call and the median of the
paired ratios.  BLAS runs on one thread (threadpoolctl).  Without the data
file, simulated NELS-shaped data (:func:`sm_hlm.simulate.simulate_nels`).

A second table times :func:`sm_hlm.engine.deviance.working_stats` alone (the
model's arguments) with the compiled row loops (:mod:`sm_hlm.engine._crows`)
and with their numpy forms, interleaved likewise (where the extension is built).
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import sm_hlm.engine.deviance as deviance
from sm_hlm.engine import compiled
from sm_hlm.formula.api import hlm
from sm_hlm.simulate import simulate_nels

from .common import machine_note, markdown_table

ROOT = Path(__file__).resolve().parent.parent
FORMULA = "mscore ~ flp*ses + (ses|school)"
PEER = "sm_hlm_peer"


def peer_package(rev: str, where: Path):
    """sm_hlm of git revision ``rev``, importable as :data:`PEER` from ``where``."""
    archive = where / "peer.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sm_hlm"], stdout=fh,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    pkg = where / PEER
    (where / "sm_hlm").rename(pkg)
    for path in pkg.rglob("*.py"):          # absolute self-imports (rare) to the new name
        text = path.read_text()
        if "from sm_hlm." in text or "import sm_hlm" in text:
            path.write_text(text.replace("from sm_hlm.", f"from {PEER}.")
                            .replace("import sm_hlm", f"import {PEER}"))
    sys.path.insert(0, str(where))
    return importlib.import_module(f"{PEER}.formula.api")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="main", help="git revision to compare with")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nels.csv"))
    args = ap.parse_args()
    path = Path(args.data)
    data = pd.read_csv(path) if path.exists() else simulate_nels(seed=1)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        peer = peer_package(args.against, Path(tmp)).hlm
        for _ in range(30):                                   # warm-up (caches, imports)
            hlm(FORMULA, data)
            peer(FORMULA, data)
        times: dict[str, list[float]] = {"this checkout": [], args.against: []}
        order = [("this checkout", hlm), (args.against, peer)]
        for i in range(args.reps):
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                t = time.perf_counter()
                fn(FORMULA, data)
                times[name].append(time.perf_counter() - t)
    print(f"NELS fit.2 construction, {len(data)} rows, {args.reps} interleaved calls each")
    print(markdown_table(_table(times, args.against, "hlm(...) built by", 1e3, "ms")))
    if compiled.crows() is not None:
        print(f"\nworking_stats alone, {args.reps} interleaved calls each")
        print(markdown_table(_table(_working_stats_times(data, args.reps), "numpy form",
                                    "row loops", 1e6, "us")))
    else:
        print(f"\n(compiled row loops {compiled.status()['_crows']}: working_stats not compared)")
    print(machine_note())


def _table(times: dict[str, list[float]], peer: str, label: str, unit: float,
           name: str) -> pd.DataFrame:
    rows = []
    base = np.array(times[peer])
    for key, ts in times.items():
        v = np.array(ts) * unit
        rows.append({label: key, f"min ({name})": f"{v.min():.2f}",
                     f"p25 ({name})": f"{np.percentile(v, 25):.2f}",
                     f"median ({name})": f"{np.median(v):.2f}",
                     "median ratio to peer": f"{np.median(np.array(ts) / base):.3f}"})
    return pd.DataFrame(rows)


def _working_stats_times(data: pd.DataFrame, reps: int) -> dict[str, list[float]]:
    """working_stats on the model's arrays, compiled row loops against the numpy form."""
    mod = hlm(FORMULA, data)
    blocks, start = [], 0
    for term in mod.re_design.terms:                  # as HLM._working_stats
        blocks.append((start, start + term.k, term.correlated and term.k > 1))
        start += term.k
    argv = (mod.exog, mod.endog, mod.exog_re, mod._starts, blocks)
    kw = {"order": None if mod._sorted else mod._order, "x_const": mod._exog_const}
    real = compiled.crows

    def run(use_c: bool) -> float:
        compiled.crows = real if use_c else (lambda: None)
        try:
            t = time.perf_counter()
            deviance.working_stats(*argv, **kw)
            return time.perf_counter() - t
        finally:
            compiled.crows = real

    times: dict[str, list[float]] = {"compiled (_crows)": [], "numpy form": []}
    with threadpool_limits(1):
        for _ in range(30):
            run(True)
            run(False)
        for i in range(reps):
            for use_c in ((True, False) if i % 2 == 0 else (False, True)):
                times["compiled (_crows)" if use_c else "numpy form"].append(run(use_c))
    return times


if __name__ == "__main__":
    main()
