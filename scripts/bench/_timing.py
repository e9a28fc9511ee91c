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
    one after the other in each round: a slow spell of a noisy machine hits both sides of a ratio.

    The order alternates from round to round (baseline first, then ours first, ...): on this VM the second
    of two 1 GiB writes in a row was at times 4x slower than the first, every other round, whichever
    program made it (measured with cp and copy_file_range alike), so a fixed order charged it to one side."""
    a, b, ratios = [], [], []
    for i in range(runs):
        if i % 2 == 0:
            b.append(timed(base, base_setup, 1))
            a.append(timed(ours, ours_setup, 1))
        else:
            a.append(timed(ours, ours_setup, 1))
            b.append(timed(base, base_setup, 1))
        ratios.append(b[-1] / a[-1])
    return statistics.median(a), statistics.median(b), statistics.median(ratios)
