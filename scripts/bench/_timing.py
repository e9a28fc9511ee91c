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


def paired(ours: Callable[[], object], ours_setup: Callable[[], object] | None, base: Callable[[], object],
           base_setup: Callable[[], object] | None, runs: int) -> tuple[float, float, float]:
    """(median seconds of ours, of the baseline, median of each run's baseline/ours ratio), the two run
    one after the other in each round: a slow spell of a noisy machine hits both sides of a ratio."""
    a, b, ratios = [], [], []
    for _ in range(runs):
        b.append(timed(base, base_setup, 1))
        a.append(timed(ours, ours_setup, 1))
        ratios.append(b[-1] / a[-1])
    return statistics.median(a), statistics.median(b), statistics.median(ratios)
