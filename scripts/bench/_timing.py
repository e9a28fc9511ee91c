"""Timing shared by the benchmark scripts: the median of several runs, each after its own set-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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


def paired(
    ours: Callable[[], object],
    ours_setup: Callable[[], object] | None,
    base: Callable[[], object],
    base_setup: Callable[[], object] | None,
    runs: int,
) -> tuple[float, float, float]:
    """(median seconds of ours, of the baseline, median of each round's baseline/ours ratio). A round runs
    baseline, ours, ours, baseline (ABBA), and its ratio is of the two sums: a slow spell of a noisy machine
    hits both sides of a ratio, and so does any effect of position. On this VM the second of two 1 GiB
    writes in a row was at times 4x slower than the first, every other round, whichever program made it
    (cp and copy_file_range alike): a fixed order charged it to one side, and so could a strict alternation."""
    a, b, ratios = [], [], []
    for _ in range(runs):
        b1 = timed(base, base_setup, 1)
        a1 = timed(ours, ours_setup, 1)
        a2 = timed(ours, ours_setup, 1)
        b2 = timed(base, base_setup, 1)
        a += [a1, a2]
        b += [b1, b2]
        ratios.append((b1 + b2) / (a1 + a2))
    return statistics.median(a), statistics.median(b), statistics.median(ratios)
