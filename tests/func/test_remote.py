"""Remotes: one conformance suite for every backend (local store, directory remote, S3 remote on a real
S3-compatible server), then push / pull between clones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import blake3
import pytest

from gitbake.contract import bread, recipe
from gitbake.errors import GitbakeError
from gitbake.repo.repo import open_repo
from gitbake.store import remote as remote_mod
from gitbake.store.objects import CorruptObject, InvalidDigest, Store
from gitbake.store.remote import Remote

from helpers import git, invoke

# ---------------------------------------------------------------------------------- conformance


class Backend:
    """The operations every backend shares, and how a test damages an object on it."""

    def __init__(self, kind: str, obj: Any) -> None:
        self.kind, self.obj = kind, obj

    def put(self, data: bytes) -> str:
        return str(self.obj.put_bytes(data))

    def get(self, digest: str) -> bytes:
        if isinstance(self.obj, Store):
            self.obj.verify(digest, trust_stat=False)
            return self.obj.read_bytes(digest)
        return bytes(self.obj.read_bytes(digest))

    def has(self, digest: str) -> bool:
        return bool(self.obj.has(digest))

    def listing(self) -> set[str]:
        return set(self.obj.iter_objects())

    def damage(self, digest: str) -> None:
        if isinstance(self.obj, Store):
            path = self.obj.object_path(digest)
            os.chmod(path, 0o644)
            path.write_bytes(b"damaged")
        else:
            self.obj.fs.pipe_file(self.obj._obj(digest), b"damaged")


@pytest.fixture(params=["local", "dir", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", Store(tmp_path / "store"))
    if request.param == "dir":
        return Backend("dir", Remote("dir", str(tmp_path / "remote")))
    url = request.getfixturevalue("s3_url")
    r = Remote("s3", url)
    r.ensure()
    return Backend("s3", r)


def test_put_get_has_list(backend: Backend) -> None:
    d = backend.put(b"hello")
    assert d == blake3.blake3(b"hello").hexdigest()
    assert backend.has(d) and backend.get(d) == b"hello"
    assert backend.listing() == {d}
    assert not backend.has("0" * 64)


def test_put_is_idempotent(backend: Backend) -> None:
    a = backend.put(b"same")
    b = backend.put(b"same")
    backend.put(b"other")
    assert a == b and len(backend.listing()) == 2


def test_empty_and_binary_objects(backend: Backend) -> None:
    for data in (b"", bytes(range(256)) * 100):
        assert backend.get(backend.put(data)) == data


def test_invalid_digest_rejected(backend: Backend) -> None:
    for bad in ("../../x", "A" * 64, "abc"):
        with pytest.raises(InvalidDigest):
            backend.has(bad)
        with pytest.raises(InvalidDigest):
            backend.get(bad)


def test_damaged_object_is_detected(backend: Backend) -> None:
    d = backend.put(b"precious bytes")
    backend.damage(d)
    with pytest.raises(CorruptObject) as exc:
        backend.get(d)
    assert d in exc.value.message and exc.value.exit_code == 4


def test_missing_object(backend: Backend) -> None:
    with pytest.raises(GitbakeError):
        backend.get("1" * 64)


# ---------------------------------------------------------------------------------- transfers


def baked_repo(root: Path, n_files: int = 3) -> tuple[Path, str, set[str]]:
    """A model repository whose HEAD names an adapter manifest in .bread and recipe.yml (as a bake commit
    will), with the objects in its store. Returns (root, manifest digest, all digests)."""
    from gitbake.workflow.init import init

    init(root, base_model="tiny")
    s = open_repo(root).store
    adapter = root.parent / f"{root.name}-adapter"
    adapter.mkdir()
    for i in range(n_files):
        (adapter / f"f{i}.bin").write_bytes(os.urandom(50_000) + root.name.encode())
    m = s.put_dir(adapter, {"kind": "adapter"})
    b = bread.read(root)
    assert b is not None
    b.set("PARENT_MODEL", "adapters", json.dumps([m]))
    bread.write(root, b)
    r = recipe.read(root)
    assert r is not None
    r.resources.bakes.append(recipe.BakeResource(bake_name="b_000000000000", adapter=m))
    recipe.write(root, r)
    git(root, "commit", "-qam", "bake")
    return root, m, s.closure({m})


@pytest.fixture(params=["dir", "s3"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "dir":
        return str(tmp_path / "remote")
    return str(request.getfixturevalue("s3_url"))


def test_push_then_pull_into_a_fresh_clone(tmp_path: Path, remote_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    monkeypatch.chdir(root)
    assert invoke("remote", "add", "origin", remote_url).exit_code == 0
    pushed = json.loads(invoke("push", "--json").stdout)
    assert set(pushed["transferred"]) == objects and pushed["skipped"] == 0
    again = json.loads(invoke("push", "--json").stdout)
    assert again["transferred"] == [] and again["skipped"] == len(objects)  # skips what the other side has

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    monkeypatch.chdir(clone)
    assert invoke("init").exit_code == 0
    assert invoke("remote", "add", "origin", remote_url).exit_code == 0
    pulled = json.loads(invoke("pull", "--json").stdout)
    assert set(pulled["transferred"]) == objects
    s = open_repo(clone).store
    assert set(s.iter_objects()) == objects
    s.materialise_tree(m, clone / ".bake" / "model")
    assert len(list((clone / ".bake" / "model").iterdir())) == 3


def test_push_moves_only_what_the_revisions_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    s = open_repo(root).store
    unrelated = s.put_bytes(b"not referenced by any revision")
    monkeypatch.chdir(root)
    invoke("remote", "add", "origin", str(tmp_path / "remote"))
    invoke("push")
    assert Remote("o", str(tmp_path / "remote")).list_objects() == objects and unrelated not in objects
    # a revision before the bake needs nothing
    assert json.loads(invoke("push", "HEAD~1", "--json").stdout)["needed"] == 0


def test_pull_refuses_a_corrupt_remote_object(tmp_path: Path, remote_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    monkeypatch.chdir(root)
    invoke("remote", "add", "origin", remote_url)
    invoke("push")
    victim = sorted(objects - {m})[0]
    r = Remote("origin", remote_url)
    r.fs.pipe_file(r._obj(victim), b"evil bytes")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    monkeypatch.chdir(clone)
    invoke("init")
    invoke("remote", "add", "origin", remote_url)
    result = invoke("pull")
    assert result.exit_code == 4 and victim in result.stderr
    s = open_repo(clone).store
    assert not s.has(victim) and s.has(m)  # the corrupt one never entered; the rest did
    assert list(s.tmp.iterdir()) == []


def test_interrupted_push_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a", n_files=6)
    monkeypatch.chdir(root)
    invoke("remote", "add", "origin", str(tmp_path / "remote"))
    real_upload = Remote.upload
    calls = {"n": 0}

    def flaky(self: Remote, store: Store, digest: str, overwrite: bool = False) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_upload(self, store, digest, overwrite)

    monkeypatch.setattr(Remote, "upload", flaky)
    result = invoke("push", "-j", "1")
    assert result.exit_code == 130
    monkeypatch.setattr(Remote, "upload", real_upload)
    have = Remote("o", str(tmp_path / "remote")).list_objects()
    assert 0 < len(have) < len(objects)
    assert not list((tmp_path / "remote" / "tmp").iterdir())  # no half object anywhere
    resumed = json.loads(invoke("push", "--json").stdout)
    assert set(resumed["transferred"]) == objects - have
    assert Remote("o", str(tmp_path / "remote")).list_objects() == objects


def test_pull_reports_objects_no_remote_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    monkeypatch.chdir(clone)
    invoke("init")
    invoke("remote", "add", "origin", str(tmp_path / "not-a-store"))
    result = invoke("pull")  # a wrong URL is said as such
    assert result.exit_code == 1 and "has no gitbake store" in result.stderr
    Remote("other", str(tmp_path / "empty-store")).ensure()
    invoke("remote", "add", "empty", str(tmp_path / "empty-store"))
    result = invoke("pull", "empty")
    assert result.exit_code == 1 and m in result.stderr and "push them" in result.stderr


def test_push_force_repairs_a_damaged_remote_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    monkeypatch.chdir(root)
    url = str(tmp_path / "remote")
    invoke("remote", "add", "origin", url)
    invoke("push")
    victim = sorted(objects - {m})[0]
    r = Remote("origin", url)
    os.chmod(r._obj(victim), 0o644)
    r.fs.pipe_file(r._obj(victim), b"rot")
    assert json.loads(invoke("push", "--json").stdout)["transferred"] == []  # a plain push trusts names
    assert json.loads(invoke("push", "--force", "--json").stdout)["transferred"]
    assert r.read_bytes(victim)  # verified: the good copy is back


def test_push_refuses_a_locally_corrupt_object_and_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    s = open_repo(root).store
    victim = sorted(objects - {m})[0]
    os.chmod(s.object_path(victim), 0o644)
    s.object_path(victim).write_bytes(b"rot")
    monkeypatch.chdir(root)
    invoke("remote", "add", "origin", str(tmp_path / "remote"))
    result = invoke("push")
    assert result.exit_code == 4 and "corrupt in the local store" in result.stderr and victim in result.stderr


def test_transport_failures_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    monkeypatch.chdir(root)
    (tmp_path / "a-file").write_text("not a directory")
    invoke("remote", "add", "file", str(tmp_path / "a-file"))
    result = invoke("push", "file")
    assert result.exit_code == 1 and "not a directory" in result.stderr and "Traceback" not in result.output


def test_s3_missing_bucket_is_a_clear_error(tmp_path: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root, m, objects = baked_repo(tmp_path / "a")
    monkeypatch.chdir(root)
    invoke("remote", "add", "nobucket", "s3://no-such-bucket-here/models")
    result = invoke("push", "nobucket")
    assert result.exit_code == 1 and "remote nobucket" in result.stderr and "Traceback" not in result.output


def test_remote_paths_resolve_from_the_cwd_and_stay_outside_the_repo(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("", ".", "sub/store"):
        assert invoke("remote", "add", "x", bad).exit_code == 2
    (model_repo / "sub").mkdir()
    monkeypatch.chdir(model_repo / "sub")
    assert invoke("remote", "add", "up", "../../shared").exit_code == 0
    assert json.loads(invoke("remote", "ls", "--json").stdout)["remotes"]["up"] == str(
        (model_repo.parent / "shared").resolve()
    )


def test_remote_config_commands(model_repo: Path, tmp_path: Path) -> None:
    assert "No remotes" in invoke("remote", "ls").stdout
    assert "(default)" in invoke("remote", "add", "origin", "../rel/path").stdout
    invoke("remote", "add", "backup", "s3://bucket/prefix")
    data = json.loads(invoke("remote", "ls", "--json").stdout)
    assert data["default"] == "origin"
    assert data["remotes"] == {"backup": "s3://bucket/prefix", "origin": str(model_repo.parent / "rel" / "path")}
    assert invoke("remote", "add", "origin", "/x").exit_code == 2
    assert invoke("remote", "add", "bad name", "/x").exit_code == 2
    assert invoke("remote", "rm", "origin").exit_code == 0
    assert json.loads(invoke("remote", "ls", "--json").stdout)["default"] is None
    assert invoke("remote", "rm", "nope").exit_code == 2
    assert git(model_repo, "config", "--get", "bake-remote.backup.url").strip() == "s3://bucket/prefix"


def test_push_without_remote_says_how(model_repo: Path) -> None:
    result = invoke("push")
    assert result.exit_code == 2 and "git bake remote add" in result.stderr


def test_missing_fsspec_names_the_extra(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_fsspec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "fsspec" or name.startswith("fsspec."):
            raise ImportError("No module named 'fsspec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fsspec)
    result = invoke("remote", "add", "origin", "/tmp/x")
    assert result.exit_code == 1 and "gitbake[remote]" in result.stderr


def test_unknown_revision_is_exit_2(model_repo: Path, tmp_path: Path) -> None:
    invoke("remote", "add", "origin", str(tmp_path / "r"))
    result = invoke("push", "origin", "no-such-branch")
    assert result.exit_code == 2 and "unknown model address" in result.stderr


def test_have_any_for_gc(tmp_path: Path) -> None:
    r = Remote("r", str(tmp_path / "r"))
    d = r.put_bytes(b"x")
    assert remote_mod.have_any([r])({d, "2" * 64}) == {d}


def test_an_interrupted_first_push_does_not_brick_the_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first push that died while writing `format` left it empty: later pushes succeeded and every pull
    said "upgrade gitbake". Now `format` lands whole or not at all; an empty one (as older versions left)
    counts as absent and the next push repairs it; stale partial uploads in the remote's tmp/ are cleared."""
    import time

    pytest.importorskip("fsspec", reason="needs fsspec: pip install 'gitbake[remote]'")
    from fsspec.implementations.local import LocalFileSystem

    root, m, objects = baked_repo(tmp_path / "a")
    url = tmp_path / "remote"
    monkeypatch.chdir(root)
    invoke("remote", "add", "origin", str(url))
    real_pipe = LocalFileSystem.pipe_file

    def dies_midway(self: Any, path: str, value: bytes, **kwargs: Any) -> None:
        with open(path, "wb") as fh:
            fh.write(value[:4])  # the first bytes land, then the process is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalFileSystem, "pipe_file", dies_midway)
    assert invoke("push").exit_code == 130
    monkeypatch.setattr(LocalFileSystem, "pipe_file", real_pipe)
    assert not (url / "format").exists() and not list((url / "tmp").iterdir())

    # what an older gitbake left: an empty format file, and partial uploads in tmp/ (one old, one fresh)
    (url / "format").write_bytes(b"")
    (url / "tmp").mkdir(exist_ok=True)
    stale, fresh = url / "tmp" / "stale-partial", url / "tmp" / "another-push-in-progress"
    stale.write_bytes(b"half an object")
    fresh.write_bytes(b"half an object")
    long_ago = time.time() - 2 * remote_mod.TMP_GRACE_S
    os.utime(stale, (long_ago, long_ago))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    monkeypatch.chdir(clone)
    invoke("init")
    invoke("remote", "add", "origin", str(url))
    refused = invoke("pull")
    assert (
        refused.exit_code == 1
        and "upgrade gitbake" not in refused.stderr
        and "interrupted first push" in refused.stderr
    )

    monkeypatch.chdir(root)
    assert invoke("push").exit_code == 0
    assert (url / "format").read_text() == "gitbake-store 1\n"
    assert not stale.exists() and fresh.exists()
    monkeypatch.chdir(clone)
    pulled = invoke("pull", "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert set(json.loads(pulled.stdout)["transferred"]) == objects
