"""`git bake store fsck` and `git bake store du`: check every object, and account for the space."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gitbake.store import CorruptObject, Store


@dataclass
class FsckReport:
    checked: int = 0
    bytes: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)  # digest -> what it hashes to
    quarantined: list[str] = field(default_factory=list)  # paths under quarantine/
    tmp_removed: int = 0
    missing_in_manifests: dict[str, list[str]] = field(default_factory=dict)  # manifest -> missing digests
    dangling_keys: list[str] = field(default_factory=list)  # "<stage>/<key>" pointing at nothing

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing_in_manifests

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def fsck(store: Store, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    """Re-hash every object; move corrupt ones to quarantine/; clear tmp/. Runs with the store locked
    exclusively, so no write is in progress and every file in tmp/ is a leftover of a crash."""
    report = FsckReport()
    with store.exclusive():
        for f in list(store.tmp.iterdir()) if store.tmp.is_dir() else []:
            try:
                f.unlink()
                report.tmp_removed += 1
            except IsADirectoryError:
                pass
        digests = list(store.iter_objects())
        for i, digest in enumerate(digests, 1):
            path = store.object_path(digest)
            report.checked += 1
            report.bytes += path.stat().st_size
            try:
                store.verify(digest, trust_stat=False)
            except CorruptObject:
                actual = store.hash_object(digest)
                report.corrupt[digest] = actual
                store.quarantine.mkdir(exist_ok=True)
                dest = store.quarantine / f"{digest}.{int(time.time())}"
                os.replace(path, dest)
                report.quarantined.append(str(dest))
                store.statcache.forget_object(digest)
            if progress:
                progress(i, len(digests))
        for digest in digests:
            if digest in report.corrupt or not store.is_manifest(digest):
                continue
            missing = [e.digest for e in store.read_manifest(digest).files.values() if not store.has(e.digest)]
            if missing:
                report.missing_in_manifests[digest] = missing
        for stage, key, target, _mtime in store.iter_keys():
            if len(target) != 64 or not store.has(target):
                report.dangling_keys.append(f"{stage}/{key}")
    return report


@dataclass
class DuReport:
    root: str
    objects: int = 0
    bytes: int = 0
    manifests: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    tmp_bytes: int = 0
    quarantine_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def du(store: Store) -> DuReport:
    report = DuReport(str(store.root))
    for digest in store.iter_objects():
        report.objects += 1
        report.bytes += store.size(digest)
        if store.is_manifest(digest):
            report.manifests += 1
    for stage, _key, _digest, _mtime in store.iter_keys():
        report.keys[stage] = report.keys.get(stage, 0) + 1
    report.tmp_bytes = _dir_bytes(store.tmp)
    report.quarantine_bytes = _dir_bytes(store.quarantine)
    return report


def _dir_bytes(path: os.PathLike[str]) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
