"""Timing shared by the benchmark scripts: the median of several runs, each after its own set-up."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], setup: Callable[[], object] | None, runs: int) -> float:
    """Median seconds of `fn` over `runs` runs; `setup` (untimed) runs before each."""
    times = []
    for _ in range(runs):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
