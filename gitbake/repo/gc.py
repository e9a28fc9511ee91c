"""`git bake store gc`: delete what nothing needs, and never the only copy of a model.

Live = the closure (manifests -> files) of every object named by `.bread` / `recipe.yml` at any commit
that a ref or reflog entry of any clone registered with the store reaches, or by their working trees;
plus every object a stage key younger than the grace period points to; plus every object younger than the
grace period; plus what a running bake's lease holds (gitbake/repo/leases.py: the objects and keys it reads,
and everything stored since it began), whatever the grace period. Everything else is garbage, except,
when remotes are configured, garbage that no remote has: it may be the only copy, so it is kept unless
`--force`.

gc only deletes: it writes nothing (no temp file, no database row it depends on), so it works on a full
disk, which is when it is needed most. It also clears the leftovers in `tmp/` (Store.clear_tmp).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitbake.errors import GitbakeError, UsageError
from gitbake.repo import leases, reach
from gitbake.store.objects import Store, check_key

if TYPE_CHECKING:
    from gitbake.repo.repo import ModelRepo

DEFAULT_GRACE = "14d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_grace(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise UsageError(
            f"--grace {text!r} is not a duration", "use a number with a unit: 30m, 12h, 14d, 2w (0 for none)"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class GcReport:
    dry_run: bool
    live: int = 0
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_unpushed: list[str] = field(default_factory=list)
    keys_deleted: list[str] = field(default_factory=list)
    clones: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)  # running bakes whose data was kept
    tmp_removed: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gc(
    store: Store,
    clones: Sequence[Path],
    grace_s: float,
    dry_run: bool = False,
    force: bool = False,
    remote_has: Callable[[set[str]], set[str]] | None = None,
) -> GcReport:
    """`remote_has(candidates)` returns those some configured remote holds (None: no remotes)."""
    report = GcReport(dry_run, clones=[str(c) for c in clones])
    now = time.time()
    with store.exclusive():
        roots: set[str] = set()
        for clone in clones:
            roots |= reach.reachable(clone)
        held = leases.current(store, prune=not dry_run)
        report.leases = [lease.name for lease in held]
        # what a running bake stored since it began is live, however short the grace period
        young_after = min([now - grace_s] + [lease.since - leases.CLOCK_SLACK_S for lease in held])
        for lease in held:
            roots |= set(lease.digests) | _leased_keys(store, lease.keys)
        young_keys: set[str] = set()
        for _stage, _key, digest, mtime in store.iter_keys():
            if mtime > young_after and len(digest) == 64:
                young_keys.add(digest)
        roots |= young_keys
        all_objects = set(store.iter_objects())
        for digest in all_objects:
            if _object_mtime(store, digest) > young_after:
                roots.add(digest)
        live = store.closure({d for d in roots if d in all_objects}) | (roots - all_objects)
        report.live = len(live & all_objects)
        garbage = sorted(all_objects - live)
        if remote_has is not None and not force and garbage:
            elsewhere = remote_has(set(garbage))
            report.kept_unpushed = [d for d in garbage if d not in elsewhere]
            garbage = [d for d in garbage if d in elsewhere]
        for digest in garbage:
            path = store.object_path(digest)
            report.deleted_bytes += path.lstat().st_size
            report.deleted.append(digest)
            if not dry_run:
                path.unlink()
                store.statcache.forget_object(digest)  # a hint: on a full disk it may fail, harmlessly
        gone = set(garbage)
        for stage, key, digest, _mtime in store.iter_keys():
            # a key must never promise a result that is no longer there (a false cache hit)
            if digest in gone or (digest not in all_objects):
                report.keys_deleted.append(f"{stage}/{key}")
                if not dry_run:
                    store.key_path(stage, key).unlink(missing_ok=True)
        if not dry_run:
            report.tmp_removed = store.clear_tmp()[0]
    return report


def store_gc(repo: ModelRepo, grace_s: float, dry_run: bool = False, force: bool = False) -> GcReport:
    """`git bake store gc`: the clones whose refs count, then `gc`.

    Worktrees git has removed are forgotten (nothing of theirs is left to keep). A registered clone that
    is missing stops gc unless `force` (its models cannot be told from garbage), and is then forgotten.
    With remotes configured, an unreachable object that no remote has is kept unless `force`."""
    from gitbake.repo.storepath import forget_clones, registered_clones
    from gitbake.store import remote as remote_mod

    st = repo.store
    clones, missing, removed = registered_clones(st)
    if removed and not dry_run:
        forget_clones(st, removed)
    if missing and not force:
        raise GitbakeError(
            "clones registered with this store are missing, so their models cannot be told apart from garbage: "
            + ", ".join(map(str, missing)),
            "mount or move them back; if they were deleted, run `git bake store gc --force` to forget them",
        )
    if missing and not dry_run:
        forget_clones(st, missing)
    remotes = [remote_mod.Remote(n, u) for n, u in remote_mod.list_remotes(repo.root).items()]
    return gc(
        st, clones, grace_s, dry_run=dry_run, force=force, remote_has=remote_mod.have_any(remotes) if remotes else None
    )


def _object_mtime(store: Store, digest: str) -> float:
    # lstat: an object that is a dangling symlink is still an entry gc can see (and delete)
    return store.object_path(digest).lstat().st_mtime


def _leased_keys(store: Store, keys: list[str]) -> set[str]:
    """The objects the stage keys a lease names point to now (a key set since is young anyway)."""
    out: set[str] = set()
    for entry in keys:
        stage, _, key = entry.partition("/")
        try:
            check_key(stage, key)
            digest = store.key_path(stage, key).read_text().strip()
        except (OSError, UsageError):
            continue
        if len(digest) == 64:
            out.add(digest)
    return out
