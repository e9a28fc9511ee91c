"""Cross-process file locks that wait (with a timeout) instead of failing at once.

DVC's "Unable to acquire lock" on the first conflict is a top user complaint (store-anchors.md D.7). We
use flock(2): the kernel drops the lock when its holder dies, so a crash never leaves a stale lock. The
holder writes its pid and command into the lock file so a timeout can say who is in the way.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from gitbake.errors import GitbakeError

DEFAULT_TIMEOUT = 600.0


class LockTimeout(GitbakeError):
    pass


class FileLock:
    """`with FileLock(path):` exclusive; `FileLock(path, shared=True)` for readers that exclude writers."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT, shared: bool = False, what: str = "") -> None:
        self.path = path
        self.timeout = timeout
        self.shared = shared
        self.what = what or path.name
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(self.path)
                    os.close(fd)
                    raise LockTimeout(
                        f"timed out after {self.timeout:.0f}s waiting for the {self.what} lock ({self.path})"
                        + (f", held by {holder}" if holder else ""),
                        "wait for that command to finish, or stop it; a lock is released when its process exits",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        if not self.shared:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode())
            except OSError:
                pass  # only a courtesy for a timeout message: a full disk must not stop gc, which frees space
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine (a finished child not yet reaped, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): it exists
