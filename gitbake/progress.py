"""Progress on long work: a tqdm bar, plus the updates `git bake status` reads.

On a terminal: tqdm's bar, redrawn in place. Elsewhere (a hook's or background job's log, CI): the same
text as a line every few seconds, since a log file cannot be redrawn (tqdm alone would write one ever
longer line of carriage returns). Every update also goes to `sink`, where a background job publishes it
for `git bake status` (gitbake.reporter). tqdm is imported when work starts, not by commands that only
read: `git bake status` stays fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class _Lines:
    """A file for tqdm that turns its redraws (`\\r` + text) into whole lines, for a log file."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip("\n")
        if line.strip():
            self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


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
        from tqdm import tqdm

        self.total, self.unit = total, unit
        self.sink = sink
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            file=self.stream if self.tty else _Lines(self.stream),
            mininterval=0.1 if self.tty else every_s,
            maxinterval=every_s,
            dynamic_ncols=self.tty,
            ascii=not self.tty,  # a log file gets plain characters
            ncols=None if self.tty else 100,
        )

    @property
    def label(self) -> str:
        return str(self._bar.desc)

    @label.setter
    def label(self, text: str) -> None:  # e.g. the bake's running loss
        self._bar.set_description_str(text, refresh=False)

    @property
    def done(self) -> int:
        return int(self._bar.n)

    @done.setter
    def done(self, n: int) -> None:  # a resumed bake starts part-way
        self._bar.n = self._bar.last_print_n = n

    def update(self, n: int = 1) -> None:
        self._bar.update(n)
        if self.sink is not None:  # every update: the sink decides how often to publish
            elapsed = max(time.monotonic() - self.start, 1e-9)
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
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        self._bar.close()
