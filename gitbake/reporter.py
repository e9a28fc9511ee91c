"""The one way gitbake's core reports to the user while it works.

A command's core functions take a `Reporter` and never print or keep lists of remarks themselves. The
reporter carries three things, each chosen once by whoever runs the work (the CLI, a hook, a background
job):

- `say(msg)`: a line now, about what is happening ("loading tiny + 2 adapter(s)"): to the terminal's
  stderr for a command, prefixed `gitbake:` inside a git hook, into the log file for a background job;
- `note(msg)`: a remark about the outcome ("3 trajectories did not fit data.max_length"), kept for the
  result the work returns (its `notes`, which the CLI prints and `--json` includes); `collecting()` gives
  each stage its own;
- `progress(label, total, unit)`: a `Progress` on long work, which a background job also publishes for
  `git bake status` through the reporter's `sink`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from gitbake.progress import Progress

Sink = Callable[[dict[str, Any]], None]


class Reporter:
    def __init__(self, stream: TextIO | None = None, prefix: str = "", sink: Sink | None = None) -> None:
        # None: sys.stderr as it is when a line is written (pytest and click swap it after import)
        self._stream = stream
        self.prefix = prefix
        self.sink = sink
        self.notes: list[str] = []

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def say(self, msg: str) -> None:
        self.stream.write(f"{self.prefix}{msg}\n")
        self.stream.flush()

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    @contextmanager
    def collecting(self) -> Iterator[list[str]]:
        """The notes made inside the block, in a list of their own (a stage's result keeps them); they are
        not added to the enclosing notes."""
        outer, self.notes = self.notes, []
        try:
            yield self.notes
        finally:
            self.notes = outer

    def progress(self, label: str, total: int, unit: str = "it") -> Progress:
        return Progress(label, total, unit, stream=self.stream, sink=self.sink)
