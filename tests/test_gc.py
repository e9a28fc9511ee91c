"""`git bake store gc`: what refs, reflogs, recent keys and other clones reach stays; the only copy stays."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gitbake import bread, recipe
from gitbake.gc import parse_grace
from gitbake.init import init
from gitbake.remote import Remote
from gitbake.repo import open_repo
from gitbake.store import Store
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
    with pytest.raises(Exception):
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
