"""gitbake.progress: tqdm's bar on a terminal, whole lines in a log, and every update to the status sink."""

from __future__ import annotations

import io
from typing import Any

from gitbake.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_and_the_sink_every_update() -> None:
    log = io.StringIO()
    seen: list[dict[str, Any]] = []
    p = Progress("baking", 4, unit="step", stream=log, every_s=3600, sink=seen.append)
    for i in range(4):
        p.label = f"baking loss {1.0 / (i + 1):.2f}"
        p.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines, log.getvalue()
    assert lines[-1].startswith("baking loss 0.25") and "4/4" in lines[-1] and "step" in lines[-1]
    assert len(lines) <= 3  # a line every every_s, not one per update: the first, the last
    assert [s["done"] for s in seen] == [1, 2, 3, 4] and seen[-1]["total"] == 4 and seen[-1]["eta_s"] == 0.0
    assert seen[0]["label"] == "baking loss 1.00"


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = Tty()
    p = Progress("rollout", 3, unit="traj", stream=out)
    p.done = 1  # resumed part-way
    p.update(2)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue() and "traj" in out.getvalue()
