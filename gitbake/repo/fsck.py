"""`git bake store fsck` and `git bake store du`: check every object, and account for the space."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.contract.recipe import Recipe
from gitbake.repo import reach, revfiles
from gitbake.store.objects import MANIFEST_KIND, BadManifest, CorruptObject, Store, file_kind

MANIFEST_PROBE_MAX = 64 << 20  # manifests are small; a bigger object is data, never parsed


@dataclass
class FsckReport:
    checked: int = 0
    bytes: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)  # digest -> what it hashes to
    not_files: dict[str, str] = field(default_factory=dict)  # digest -> what is there instead (a symlink, ...)
    quarantined: list[str] = field(default_factory=list)  # paths under quarantine/
    tmp_removed: int = 0
    tmp_kept: int = 0  # folders of tmp/ kept because another process uses the store
    bad_manifests: dict[str, str] = field(default_factory=dict)  # digest -> why it is not a valid manifest
    missing_in_manifests: dict[str, list[str]] = field(default_factory=dict)  # manifest -> missing digests
    missing_needed: dict[str, str] = field(default_factory=dict)  # digest HEAD needs -> which file names it
    dangling_keys: list[str] = field(default_factory=list)  # "<stage>/<key>" pointing at nothing
    head_problems: dict[str, str] = field(default_factory=dict)  # HEAD's damaged lineage files (check_head)

    @property
    def ok(self) -> bool:
        return not (
            self.corrupt
            or self.not_files
            or self.bad_manifests
            or self.missing_in_manifests
            or self.missing_needed
            or self.head_problems
        )

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


@dataclass
class HeadCheck:
    """What HEAD's model needs from the store, and what is wrong with its lineage files themselves."""

    needed: dict[str, str] = field(default_factory=dict)  # digest -> the file naming it
    problems: dict[str, str] = field(default_factory=dict)  # "HEAD's <file>" -> what is wrong


def check_head(root: Path) -> HeadCheck:
    """Read HEAD's `.bread` and `recipe.yml` as every command reads them (`revfiles`): a damaged one, or
    a bake step that records no questions / answers, is a problem fsck names; the digests they name are
    what HEAD needs."""
    out = HeadCheck()
    head = git.rev_parse(root, "HEAD")
    if head is None:
        return out
    for _commit, path, data in git.blobs_at(root, [head], reach.LINEAGE_FILES):
        who = f"HEAD's {path}"
        try:
            parsed = revfiles.parse(path, data, "HEAD")
        except revfiles.DAMAGED as exc:
            out.problems[who] = exc.render()
            continue
        if isinstance(parsed, Recipe) and (lost := reach.unrecorded_outputs(parsed)):
            out.problems[who] = "records no output (the questions / answers are lost) for " + ", ".join(lost)
        for digest in sorted(reach.digests_in(path, data)):
            out.needed.setdefault(digest, who)
    return out


def fsck(store: Store, progress: Callable[[int, int], None] | None = None, head: HeadCheck | None = None) -> FsckReport:
    """Re-hash every object; move corrupt ones (and anything that is not a regular file) to quarantine/;
    check every manifest; check that the objects HEAD needs (`check_head`) and everything their manifests
    name are present, and report its lineage files' own problems; clear tmp/. Runs with the store locked
    exclusively, so no write is in progress."""
    report = FsckReport(head_problems=dict(head.problems) if head else {})
    needed = dict(head.needed) if head else {}
    with store.exclusive():
        report.tmp_removed, report.tmp_kept = store.clear_tmp()
        digests = list(store.iter_objects())
        for i, digest in enumerate(digests, 1):
            _check_object(store, digest, report)
            if progress:
                progress(i, len(digests))
        gone = set(report.corrupt) | set(report.not_files)
        key_targets: dict[str, str] = {}
        for stage, key, target, _mtime in store.iter_keys():
            if len(target) != 64 or not store.has(target):
                report.dangling_keys.append(f"{stage}/{key}")
            else:
                key_targets.setdefault(target, f"stage key {stage}/{key[:12]}")
        must_be_manifests = {**key_targets, **needed}
        for digest in digests:
            if digest in gone:
                continue
            problem = _manifest_problem(store, digest, expected=digest in must_be_manifests)
            if problem is not None:
                named = f" ({must_be_manifests[digest]} names it)" if digest in must_be_manifests else ""
                report.bad_manifests[digest] = problem + named
            elif store.is_manifest(digest):
                missing = [e.digest for e in store.read_manifest(digest).files.values() if not store.has(e.digest)]
                if missing:
                    report.missing_in_manifests[digest] = missing
        for digest, who in sorted(needed.items()):
            if not store.has(digest):
                report.missing_needed[digest] = who
    return report


def _check_object(store: Store, digest: str, report: FsckReport) -> None:
    """Hash one object; quarantine it when it is corrupt or not a regular file (fsck never aborts on one)."""
    path = store.object_path(digest)
    st = path.lstat()
    report.checked += 1
    if not stat.S_ISREG(st.st_mode):
        report.not_files[digest] = file_kind(st.st_mode)
    else:
        report.bytes += st.st_size
        try:
            store.verify(digest, trust_stat=False)
            return
        except CorruptObject:
            report.corrupt[digest] = store.hash_object(digest)
    store.quarantine.mkdir(exist_ok=True)
    dest = store.quarantine / f"{digest}.{int(time.time())}"
    os.replace(path, dest)
    report.quarantined.append(str(dest))
    store.statcache.forget_object(digest)


def _manifest_problem(store: Store, digest: str, expected: bool) -> str | None:
    """Why `digest` is not a valid manifest, if it is one or must be one (`expected`: a stage key or
    HEAD points at it as a manifest); None when it is valid, or is plain data."""
    path = store.object_path(digest)
    with path.open("rb") as fh:
        if not expected and fh.read(1) != b"{":  # not JSON: plain data, read no further
            return None
    if path.stat().st_size > MANIFEST_PROBE_MAX:
        return "a large data object where a manifest is expected" if expected else None
    data = path.read_bytes()
    if not expected:
        try:  # does it claim to be a manifest? (a data file may be JSON too: eval.json, a dataset line)
            body = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(body, dict) or (body.get("kind") != MANIFEST_KIND and "files" not in body):
            return None
    try:
        store.read_manifest(digest)
    except BadManifest as exc:
        return exc.reason
    return None


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
