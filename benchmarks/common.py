"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

__all__ = ["fmt_time", "markdown_table", "median_time"]


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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
