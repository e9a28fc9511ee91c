"""`git bake store gc`: what refs, reflogs, recent keys and other clones reach stays; the only copy stays."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from gitbake.contract import bread, recipe
from gitbake.errors import UsageError
from gitbake.repo.gc import parse_grace
from gitbake.repo.repo import open_repo
from gitbake.store.objects import Store
from gitbake.store.remote import Remote
from gitbake.workflow.init import init

from helpers import git, invoke

DAY = 86400


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def old_object(s: Store, data: bytes) -> str:
    d = s.put_bytes(data)
    age(s.object_path(d), 30 * DAY)
    return d


def commit_naming(root: Path, digests: list[str], message: str) -> str:
    """A commit whose .bread names `digests` as its adapter chain (as bake commits will)."""
    b = bread.read(root)
    assert b is not None
    b.set("PARENT_MODEL", "adapters", json.dumps(digests))
    bread.write(root, b)
    git(root, "commit", "-qam", message)
    return git(root, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "m"
    init(root)
    monkeypatch.chdir(root)
    return root


def test_grace_parsing() -> None:
    assert parse_grace("14d") == 14 * DAY and parse_grace("30m") == 1800 and parse_grace("0") == 0
    with pytest.raises(UsageError):
        parse_grace("soon")
    assert invoke("store", "gc", "--grace", "soon").exit_code == 2


def test_reachable_reflog_young_and_garbage(repo: Path) -> None:
    s = open_repo(repo).store
    on_branch = old_object(s, b"adapter on main")
    in_reflog_only = old_object(s, b"adapter of a reset commit")
    garbage = old_object(s, b"unreferenced")
    young = s.put_bytes(b"a bake in progress wrote this a moment ago")
    commit_naming(repo, [on_branch], "bake 1")
    commit_naming(repo, [on_branch, in_reflog_only], "bake 2")
    git(repo, "reset", "-q", "--hard", "HEAD~1")  # bake 2 is now only in the reflog

    dry = json.loads(invoke("store", "gc", "--dry-run", "--json").stdout)
    assert dry["deleted"] == [garbage] and s.has(garbage)
    assert "would delete 1" in invoke("store", "gc", "--dry-run").stdout

    report = json.loads(invoke("store", "gc", "--json").stdout)
    assert report["deleted"] == [garbage]
    assert not s.has(garbage) and s.has(on_branch) and s.has(in_reflog_only) and s.has(young)
    # once the reflog forgets it, it goes too
    git(repo, "reflog", "expire", "--expire=now", "--all")
    assert json.loads(invoke("store", "gc", "--json").stdout)["deleted"] == [in_reflog_only]


def test_manifest_files_are_kept_with_their_manifest(repo: Path, tmp_path: Path) -> None:
    s = open_repo(repo).store
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "w.bin").write_bytes(b"weights")
    m = s.put_dir(adapter)
    for d in s.closure({m}):
        age(s.object_path(d), 30 * DAY)
    commit_naming(repo, [m], "bake")
    assert json.loads(invoke("store", "gc", "--json").stdout)["deleted"] == []
    assert all(s.has(d) for d in s.closure({m}))


def test_recent_keys_keep_their_objects_old_keys_do_not(repo: Path) -> None:
    s = open_repo(repo).store
    cached = old_object(s, b"stim output, cached")
    stale = old_object(s, b"stim output, stale")
    s.set_key("stim", "a" * 64, cached)
    s.set_key("stim", "b" * 64, stale)
    age(s.key_path("stim", "b" * 64), 30 * DAY)
    report = json.loads(invoke("store", "gc", "--json").stdout)
    assert report["deleted"] == [stale] and report["keys_deleted"] == ["stim/" + "b" * 64]
    assert s.get_key("stim", "a" * 64) == cached and not s.key_path("stim", "b" * 64).exists()


def test_uncommitted_working_tree_counts(repo: Path) -> None:
    s = open_repo(repo).store
    d = old_object(s, b"named only by the working tree's .bread")
    b = bread.read(repo)
    assert b is not None
    b.set("PARENT_MODEL", "adapters", json.dumps([d]))
    bread.write(repo, b)
    assert json.loads(invoke("store", "gc", "--json").stdout)["deleted"] == []


def test_recipe_outputs_count(repo: Path) -> None:
    s = open_repo(repo).store
    d = old_object(s, b"rollout output")
    r = recipe.read(repo)
    assert r is not None
    r.steps.append(recipe.Step(step=1, action="run_rollout", outputs={"rollout": d}))
    recipe.write(repo, r)
    git(repo, "commit", "-qam", "rollout")
    assert json.loads(invoke("store", "gc", "--json").stdout)["deleted"] == []


def test_unpushed_garbage_is_kept_when_remotes_exist(repo: Path, tmp_path: Path) -> None:
    s = open_repo(repo).store
    pushed = old_object(s, b"garbage the remote has")
    only_copy = old_object(s, b"garbage only here")
    invoke("remote", "add", "origin", str(tmp_path / "remote"))
    remote = Remote("origin", str(tmp_path / "remote"))
    remote.upload(s, pushed)
    report = json.loads(invoke("store", "gc", "--json").stdout)
    assert report["deleted"] == [pushed] and report["kept_unpushed"] == [only_copy]
    assert s.has(only_copy)
    assert "no remote has" in invoke("store", "gc", "--dry-run").stdout
    assert json.loads(invoke("store", "gc", "--force", "--json").stdout)["deleted"] == [only_copy]


def test_shared_store_counts_every_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared-store"
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        init(root)
        git(root, "config", "bake.storePath", str(shared))
    sa, sb = open_repo(a).store, open_repo(b).store
    assert sa.root == sb.root == shared
    only_b = old_object(sb, b"adapter only clone b uses")
    commit_naming(b, [only_b], "bake in b")
    monkeypatch.chdir(a)
    report = json.loads(invoke("store", "gc", "--json").stdout)
    assert report["deleted"] == [] and len(report["clones"]) == 2
    # a moved or deleted clone is not silently treated as having no models
    import shutil

    shutil.move(str(b), str(tmp_path / "b-moved"))
    refused = invoke("store", "gc", "--dry-run")
    assert refused.exit_code == 1 and "missing" in refused.stderr and str(b) in refused.stderr
    assert sb.has(only_b) and len(list((shared / "clones").iterdir())) == 2  # even a dry run forgets nothing
    report = json.loads(invoke("store", "gc", "--force", "--json").stdout)
    assert report["deleted"] == [only_b] and len(report["clones"]) == 1
    assert len(list((shared / "clones").iterdir())) == 1


def test_a_broken_ref_aborts_gc_instead_of_deleting(repo: Path) -> None:
    s = open_repo(repo).store
    d = old_object(s, b"adapter on a branch")
    git(repo, "switch", "-q", "-c", "exp")
    commit_naming(repo, [d], "bake on exp")
    git(repo, "switch", "-q", "main")
    (repo / ".git" / "refs" / "heads" / "broken").write_text("1" * 40 + "\n")
    result = invoke("store", "gc", "--grace", "0")
    assert result.exit_code == 1 and "cannot list the commits" in result.stderr
    assert s.has(d)


def test_reusing_an_old_object_renews_its_grace(repo: Path) -> None:
    s = open_repo(repo).store
    d = old_object(s, b"a stim output an old bake made, reused by a new one")
    assert s.put_bytes(b"a stim output an old bake made, reused by a new one") == d
    assert json.loads(invoke("store", "gc", "--json").stdout)["deleted"] == []


# ------------------------------------------------------------------------------------------- leases


def _dead_pid() -> int:
    """The pid of a process that has finished (a killed bake's, as far as its lease can tell)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_keeps_what_a_running_bake_reads_and_stores_whatever_the_grace(repo: Path) -> None:
    """A bake's lease keeps the objects it reads, the results its stage keys point to and whatever it
    stores after it began, even with --grace 0s; once released (or its holder dead) they are garbage."""
    from gitbake.repo import leases

    s = open_repo(repo).store
    cached_rollout = old_object(s, b"rollouts a bake will read")
    s.set_key("rollout", "a" * 64, cached_rollout)
    age(s.key_path("rollout", "a" * 64), 30 * DAY)
    parent = old_object(s, b"the parent adapter it loads")
    unrelated = old_object(s, b"garbage")
    lease = leases.take(s, "bake-test", ["rollout/" + "a" * 64], [parent])
    written = s.put_bytes(b"an adapter the bake stored, not yet named by any commit")
    report = json.loads(invoke("store", "gc", "--grace", "0s", "--json").stdout)
    assert report["deleted"] == [unrelated] and report["leases"] == [lease.name]
    assert (
        s.has(cached_rollout) and s.has(parent) and s.has(written) and s.get_key("rollout", "a" * 64) == cached_rollout
    )

    leases.release(s.root, "bake-test")
    report = json.loads(invoke("store", "gc", "--grace", "0s", "--json").stdout)
    assert sorted(report["deleted"]) == sorted([cached_rollout, parent, written]) and report["leases"] == []

    # a lease whose process is gone (a killed bake) expires: gc deletes it and what only it kept
    again = s.put_bytes(b"stored by a bake that was killed")
    dead = leases.Lease("bake-killed", _dead_pid(), None, socket.gethostname(), time.time(), [], [again])
    (s.leases / dead.name).write_text(json.dumps(dead.__dict__))
    report = json.loads(invoke("store", "gc", "--grace", "0s", "--json").stdout)
    assert report["deleted"] == [again] and report["leases"] == [] and not (s.leases / dead.name).exists()


def test_gc_during_a_real_bake_keeps_its_questions_and_answers(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git bake store gc --grace 0s` while a bake trains used to delete its questions and answers: the
    bake commit recorded them as None, eval failed, and push and fsck said all was well. Now the bake's
    lease keeps them, and the commit names only objects that are in the store."""
    from gitbake.repo import reach

    pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
    from gitbake.engine import bake as bake_mod

    from helpers import YODA_SMALL, bake_git

    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "commit", "-qam", "yoda", "--no-verify")
    real_train = bake_mod.Baker.train
    gc_runs: list[dict[str, object]] = []

    def train_with_gc_midway(self: object, *args: object, **kwargs: object) -> object:
        # another process collects garbage while this bake trains, as a user or a cron job would
        out = bake_git(model_repo, "store", "gc", "--grace", "0s", "--json")
        assert out.returncode == 0, out.stderr
        gc_runs.append(json.loads(out.stdout))
        return real_train(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bake_mod.Baker, "train", train_with_gc_midway)
    result = invoke("run", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(gc_runs) == 1 and len(gc_runs[0]["leases"]) == 1  # type: ignore[arg-type]

    r = recipe.read(model_repo)
    assert r is not None
    outputs = {s.action: (s.outputs or {}) for s in r.steps}
    assert outputs["run_stim"].get("manifest") and outputs["run_rollout"].get("manifest")
    s = open_repo(model_repo).store
    needed = reach.needed_by(model_repo, ["HEAD"])
    assert outputs["run_rollout"]["manifest"] in needed
    assert all(s.has(d) for d in s.closure(needed))
    assert list(s.leases.iterdir()) == []  # the bake commit ended the lease
    assert invoke("store", "fsck").exit_code == 0
    assert invoke("eval", "HEAD", "--json").exit_code == 0


def test_gc_works_on_a_full_disk(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gc is what a full disk needs, and it only deletes: no write of its own (a lock holder's note, the
    stat cache, a temp file) may stop it."""
    import errno
    import sqlite3

    s = open_repo(repo).store
    kept = old_object(s, b"adapter on main")
    commit_naming(repo, [kept], "bake")
    garbage = [old_object(s, f"garbage {i}".encode()) for i in range(3)]
    s.statcache.lookup(os.stat(s.object_path(kept)))  # the stat cache exists, as in any store in use
    s.close()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_open, real_os_open = open, os.open

    def open_full(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(c in mode for c in "wax+"):
            full()
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    def os_open_full(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT and not os.path.exists(path):  # type: ignore[arg-type]
            full()
        return real_os_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    class FullDb(sqlite3.Connection):
        def execute(self, *args: object, **kwargs: object) -> sqlite3.Cursor:
            if str(args[0]).lstrip().upper().startswith(("INSERT", "DELETE", "CREATE", "PRAGMA JOURNAL")):
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(*args, **kwargs)  # type: ignore[arg-type]

    real_connect = sqlite3.connect
    with monkeypatch.context() as mp:
        mp.setattr("builtins.open", open_full)
        mp.setattr(os, "open", os_open_full)
        for name in ("write", "ftruncate", "mkdir", "makedirs", "fsync"):
            mp.setattr(os, name, full)
        mp.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=FullDb, **k))
        result = invoke("store", "gc", "--grace", "0s", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["deleted"]) == sorted(garbage)
    assert s.has(kept) and not any(s.has(d) for d in garbage)


def test_a_removed_worktree_does_not_block_gc(repo: Path, tmp_path: Path) -> None:
    """After `git worktree remove`, gc used to refuse (a registered clone is missing) until --force. A
    worktree git no longer knows has no refs left: its registration is forgotten. A clone that is only
    missing (moved, unmounted) still stops gc."""
    s = open_repo(repo).store
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(wt))
    assert open_repo(wt).store.root == s.root  # registers the worktree with the shared store
    assert len(list((s.root / "clones").iterdir())) == 2
    git(repo, "worktree", "remove", str(wt))
    result = invoke("store", "gc", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["clones"] == [str(repo.resolve())]
    assert len(list((s.root / "clones").iterdir())) == 1
