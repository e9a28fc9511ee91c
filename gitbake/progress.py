"""Progress on long work, with rate and ETA, without any dependency.

On a terminal: one line rewritten in place. Elsewhere (a hook's log file, CI): a line every few seconds,
so a background job's log shows it is alive without drowning in updates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "it",
        stream: TextIO | None = None,
        every_s: float = 5.0,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`sink`: where a background job publishes each update for `git bake status` (gitbake.reporter)."""
        self.label, self.total, self.unit = label, total, unit
        self.sink = sink
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.sink is not None:  # every update: the sink decides how often to publish
            elapsed = max(now - self.start, 1e-9)
            rate = self.done / elapsed
            self.sink(
                {
                    "label": self.label,
                    "done": self.done,
                    "total": self.total,
                    "unit": self.unit,
                    "rate": round(rate, 4),
                    "eta_s": round((self.total - self.done) / rate if rate > 0 else 0.0, 1),
                    "time": time.time(),
                }
            )
        if (
            self.done >= self.total
            or (self.tty and now - self._last > 0.1)
            or (not self.tty and now - self._last > self.every_s)
        ):
            self._last = now
            self._emit(final=self.done >= self.total)

    def _emit(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        text = f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, ETA {eta:.0f}s)"
        if final:
            text = f"{self.label}: {self.done}/{self.total} {self.unit} in {elapsed:.1f}s ({rate:.2f} {self.unit}/s)"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
