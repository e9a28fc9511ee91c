"""Leases: what a running bake has read or will write stays live for `git bake store gc`.

A bake reads stored results (the parent's adapters, cached questions and answers) and writes new ones
long before its bake commit names them; until then no ref reaches them, and `gc --grace 0s` would
delete them under it. So a bake takes a lease before its first stage:

    <store>/leases/<owner>.<pid>.json   {"owner", "pid", "start", "host", "since", "keys", "digests"}

gc (under the store's exclusive lock) keeps every object in `digests`, every object the stage keys in
`keys` point to, and every object and key stored since `since` (what the bake wrote, before it records
it anywhere). The lease is written under the store's shared lock, so gc sees all of it or none; it
ends when the bake commit is made (`release`, which `bakecommit.make_commit` calls after the branch
moved), when the bake fails, or when its holder dies: a lease whose process is gone (its pid no longer
runs, or runs another program since) is expired, and gc deletes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gitbake.fsutil import write_atomic
from gitbake.store.locks import pid_alive
from gitbake.store.objects import Store, disk_error

if TYPE_CHECKING:  # gc reads leases without loading the planner
    from gitbake.repo.plan import Plan

# the kernel stamps files from a coarse clock, up to a tick behind time.time(): what a bake stores right
# after its lease began may carry a slightly older mtime
CLOCK_SLACK_S = 2.0
# a lease taken on another machine (a store shared over NFS) cannot be checked: it expires with age
FOREIGN_MAX_AGE_S = 7 * 86400.0


@dataclass
class Lease:
    owner: str
    pid: int
    start: str | None  # the holder's start time (/proc/<pid>/stat), so a reused pid is not taken for it
    host: str
    since: float
    keys: list[str] = field(default_factory=list)  # "<stage>/<key>"
    digests: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.pid}.json"

    def alive(self, now: float | None = None) -> bool:
        if self.host != socket.gethostname():
            return (now or time.time()) - self.since < FOREIGN_MAX_AGE_S
        if self.start is not None and Path("/proc/self/stat").exists():
            return process_start(self.pid) == self.start  # the same process, not a later one given its pid
        return pid_alive(self.pid)


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (None: no such process, or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished


def bake_owner(trigger: str | None) -> str:
    return f"bake-{trigger or 'worktree'}"


def take(store: Store, owner: str, keys: list[str], digests: list[str]) -> Lease:
    pid = os.getpid()
    lease = Lease(
        owner, pid, process_start(pid), socket.gethostname(), time.time(), sorted(set(keys)), sorted(set(digests))
    )
    with store.writing():  # gc reads leases under the exclusive lock: it sees this one whole, or not yet
        try:
            store.leases.mkdir(exist_ok=True)
            write_atomic(store.leases / lease.name, json.dumps(asdict(lease), indent=1) + "\n")
        except OSError as exc:
            raise disk_error(exc, store.root) from exc
    return lease


def release(store_root: Path, owner: str) -> None:
    (store_root / "leases" / f"{owner}.{os.getpid()}.json").unlink(missing_ok=True)


def current(store: Store, prune: bool) -> list[Lease]:
    """The leases whose holders still run. `prune`: delete the expired ones (gc does, under its lock)."""
    out: list[Lease] = []
    now = time.time()
    for path in sorted(store.leases.glob("*.json")) if store.leases.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            lease = Lease(**{k: data[k] for k in Lease.__dataclass_fields__})
        except (OSError, ValueError, TypeError, KeyError):
            # unreadable: count it as live until it is old, as a foreign one (gc must never guess low)
            lease = Lease(path.stem, 0, None, "?", _mtime(path))
        if lease.alive(now):
            out.append(lease)
        elif prune:
            path.unlink(missing_ok=True)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def for_plan(plan: Plan) -> tuple[list[str], list[str]]:
    """The stage keys a plan's stages read or write, and the objects they read (the parent's adapters)."""
    keys: list[str] = []
    if plan.target is not None:
        keys += [f"stim/{plan.target.stim_key}", f"rollout/{plan.target.key}"]
    if plan.bake is not None:
        keys += [f"rollout/{d.key}" for d in plan.bake.datasets]
        keys += [f"bake/{plan.bake.key}", f"eval/{plan.bake.key}"]
    return keys, list(plan.parent.adapters)


@contextmanager
def stages(store: Store, plan: Plan, trigger: str | None, until_commit: bool) -> Iterator[Lease]:
    """Hold a lease while the stages of `plan` run. `until_commit`: a bake commit follows, which ends
    the lease once it names the results (`release`); a failure ends it at once."""
    keys, digests = for_plan(plan)
    lease = take(store, bake_owner(trigger), keys, digests)
    try:
        yield lease
    except BaseException:
        release(store.root, lease.owner)
        raise
    if not until_commit:
        release(store.root, lease.owner)
