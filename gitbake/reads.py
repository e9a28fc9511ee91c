"""Which files a computation looked at, so that its result can be reused while they stay the same.

Validating input.yml and planning a commit read more than input.yml: the files generators name, the
base model's directory, GGUF or hub cache entry, its config.json and tokenizer. Each place that reads
or probes such a file calls `note`; inside `recording()` those paths are collected (outside it, `note`
costs one context-variable lookup). `gitbake.repo.plancache` keys status's cached plan on their stats.
A path noted while it does not exist counts too: creating it later may change what a name means.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_READS: ContextVar[set[str] | None] = ContextVar("gitbake_reads", default=None)

# (dev, ino, mode, size, mtime_ns, ctime_ns) of a path, or None while it does not exist: git's index
# fields, which change when a file's bytes or a directory's entries do
Stamp = tuple[int, int, int, int, int, int] | None


def note(*paths: Path | str) -> None:
    """Record that the result being computed depends on these paths (their bytes, or whether they exist)."""
    seen = _READS.get()
    if seen is not None:
        seen.update(os.path.abspath(p) for p in paths)


@contextmanager
def recording() -> Iterator[set[str]]:
    """Collect the absolute paths noted inside the block (nested blocks share the outer set)."""
    outer = _READS.get()
    seen: set[str] = outer if outer is not None else set()
    token = _READS.set(seen)
    try:
        yield seen
    finally:
        _READS.reset(token)


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
