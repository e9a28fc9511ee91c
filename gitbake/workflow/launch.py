"""The bake stage under a launcher: `git config bake.launcher "torchrun --nproc_per_node 2"` or
`git bake run --launcher ...`.

gitbake grows no scheduler: the launcher the field already uses starts N copies of `python -m gitbake run
bake` (engine/parallel.py splits the work between them). stim and rollout run first in this process, as
they do without a launcher, so every rank finds them cached. Each rank's output reaches the terminal (or
the job's log) prefixed `[rank N]`; rank 0 alone publishes progress for `git bake status`, writes the
store, the bake commit and `.bake/model`, and hands its report back here. A rank that fails leaves its
error where this process reads it, so the message names the rank and what went wrong; the launcher stops
the others, and since only rank 0 writes and only after every rank finished training, nothing is stored.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.errors import GitbakeError, UsageError
from gitbake.fsutil import write_atomic
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter

CONFIG_KEY = "bake.launcher"
RANK_DIR = "GITBAKE_RANK_DIR"  # where each rank leaves its error, and rank 0 its report
LAUNCHED = "GITBAKE_LAUNCHED"
PROGRESS = "progress.json"
KNOWN = ("torchrun", "deepspeed", "python -m torch.distributed.run")


@dataclass(frozen=True)
class Launched:
    """What a launched bake stage left: rank 0's report (its RunReport as JSON), when it got that far."""

    command: list[str]
    report: dict[str, Any] | None


def configured(repo: ModelRepo, given: str | None) -> str | None:
    """The launcher to use: `--launcher`, else `git config bake.launcher`; None (or "none") for none."""
    value = given if given is not None else git.config_get(repo.root, CONFIG_KEY)
    if value is None or value.strip().lower() in ("", "none", "off"):
        return None
    return value.strip()


def command(launcher: str, force: bool, trigger: str | None = None, branch_ref: str | None = None) -> list[str]:
    """The launcher's words, then the bake stage as a module run: `torchrun ... -m gitbake run bake`."""
    try:
        words = shlex.split(launcher)
    except ValueError as exc:
        raise UsageError(f"the launcher `{launcher}` cannot be parsed: {exc}", "quote it as a shell would") from None
    if not words:
        raise UsageError("the launcher is empty", "e.g. git config bake.launcher 'torchrun --nproc_per_node 2'")
    if shutil.which(words[0]) is None:  # before stim and rollout run: a typo costs nothing
        raise UsageError(
            f"the launcher `{words[0]}` is not installed or not on PATH",
            f"install it, or change bake.launcher (e.g. {', '.join(KNOWN[:2])})",
        )
    # `-m gitbake`: the launchers run a module in each worker (torchrun's --module, deepspeed's --module)
    module = ["-m", "gitbake"] if words[0] != "deepspeed" else ["--module", "gitbake"]
    at = (["--at", trigger] if trigger else []) + (["--branch", branch_ref] if branch_ref else [])
    return words + module + ["run", "bake", *at] + (["--force"] if force else [])


def run_bake(
    repo: ModelRepo,
    launcher: str,
    force: bool,
    trigger: str | None = None,
    branch_ref: str | None = None,
    reporter: Reporter | None = None,
) -> Launched:
    """Run the bake stage of `trigger` under `launcher`; every line of every rank goes to the reporter's
    stream, and rank 0's progress to its sink (a background job's, for `git bake status`)."""
    reporter = reporter or Reporter()
    out = reporter.stream
    cmd = command(launcher, force, trigger, branch_ref)
    with tempfile.TemporaryDirectory(dir=repo.store.tmp, prefix="launch-") as tmp:
        env = {**os.environ, RANK_DIR: tmp, LAUNCHED: "1", "PYTHONUNBUFFERED": "1"}
        out.write(f"gitbake: starting the bake under `{launcher}`\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                cmd, cwd=repo.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except FileNotFoundError:
            raise UsageError(
                f"the launcher `{cmd[0]}` is not installed or not on PATH",
                f"install it, or change bake.launcher (e.g. {', '.join(KNOWN[:2])})",
            ) from None
        tail: list[str] = []
        progress, seen = Path(tmp) / PROGRESS, 0.0
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            tail = (tail + [line])[-200:]
            if reporter.sink is not None and progress.is_file() and progress.stat().st_mtime != seen:
                seen = progress.stat().st_mtime
                try:
                    reporter.sink(json.loads(progress.read_text()))
                except (OSError, ValueError):
                    pass  # mid-write: the next line brings the next update
        code = proc.wait()
        report_file = Path(tmp) / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else None
        if code != 0:
            raise LaunchFailed(describe_failure(Path(tmp), code, "".join(tail), launcher), code)
    return Launched(cmd, report)


class LaunchFailed(GitbakeError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, "fix what the failing rank said and run `git bake run` again: nothing was stored")
        self.exit_code = 2 if code == 2 else 1


def describe_failure(rank_dir: Path, code: int, tail: str, launcher: str) -> str:
    """Which rank failed and why: its own error file, else the launcher's summary (a rank killed by a
    signal writes nothing)."""
    errors = sorted(rank_dir.glob("rank-*.error"), key=lambda p: int(p.stem.split("-")[1].split(".")[0]))
    if errors:
        first = errors[0]
        rank = first.stem.split("-")[1]
        return f"rank {rank} failed: {first.read_text(errors='replace').strip()}"
    cause = tail[tail.rfind("Root Cause") :] if "Root Cause" in tail else tail  # torchrun's first failure
    m = re.search(r"rank\s*:\s*(\d+)[^\n]*\n[^\n]*exitcode\s*:\s*(-?\d+)", cause)
    if m:
        rank, exit_code = m.group(1), int(m.group(2))
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with {exit_code}"
        return f"rank {rank} {how} during the bake under `{launcher}`"
    return f"the bake under `{launcher}` failed (exit {code})"


def record_error(message: str) -> None:
    """In a launched rank: leave this rank's error for the process that started the launcher."""
    where = os.environ.get(RANK_DIR)
    if where and os.path.isdir(where):
        rank = os.environ.get("RANK", "0")
        Path(where, f"rank-{rank}.error").write_text(message)


def progress_sink() -> Callable[[dict[str, Any]], None] | None:
    """In launched rank 0: where its progress goes, for the process that started the launcher."""
    where = os.environ.get(RANK_DIR)
    if not where or not os.path.isdir(where) or os.environ.get("RANK", "0") != "0":
        return None
    last = [0.0]

    def publish(p: dict[str, Any]) -> None:
        if time.monotonic() - last[0] > 1.0 or p["done"] >= p["total"]:
            last[0] = time.monotonic()
            write_atomic(Path(where) / PROGRESS, json.dumps(p) + "\n")

    return publish


def launched() -> bool:
    return bool(os.environ.get(LAUNCHED)) and "RANK" in os.environ


def record_report(report: dict[str, Any]) -> bool:
    """In launched rank 0: hand the run's report back (the parent prints it); False when not launched."""
    where = os.environ.get(RANK_DIR)
    if not where or not os.path.isdir(where):
        return False
    if os.environ.get("RANK", "0") == "0":
        Path(where, "report.json").write_text(json.dumps(report))
    return True


class RankPrefix:
    """A text stream that starts every line with `[rank N] `, for a launched rank's stdout and stderr."""

    def __init__(self, stream: Any, rank: str) -> None:
        self.stream, self.prefix, self.fresh = stream, f"[rank {rank}] ", True

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # so click sees a text stream (it probes with bytes)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        out = []
        for piece in text.splitlines(keepends=True):
            if self.fresh:
                out.append(self.prefix)
            out.append(piece)
            self.fresh = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def prefix_output() -> None:
    """In a launched rank: prefix this process's stdout and stderr lines with its rank."""
    if os.environ.get(LAUNCHED) and "RANK" in os.environ:
        rank = os.environ["RANK"]
        sys.stdout = RankPrefix(sys.stdout, rank)
        sys.stderr = RankPrefix(sys.stderr, rank)
