"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

__all__ = ["fmt_time", "machine_note", "markdown_table", "median_time", "median_times"]


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def median_times(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall and median CPU (process) time of ``reps`` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))


def machine_note() -> str:
    """BLAS libraries and their threads (threadpoolctl) and the load average, for a table's caption."""
    import os
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info()
                         if i.get("user_api") == "blas") or "none found"
    except ImportError:                                     # pragma: no cover
        blas = "threadpoolctl not installed"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"BLAS: {blas}; load average (1, 5, 15 min): {load} on {os.cpu_count()} cores"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no optional dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fmt_time(t: float | None, *, ms_decimals: int = 1) -> str:
    """Seconds as "12.3 ms" below one second, "1.23 s" above; "n/a" for None."""
    if t is None:
        return "n/a"
    return f"{t * 1e3:.{ms_decimals}f} ms" if t < 1 else f"{t:.2f} s"
