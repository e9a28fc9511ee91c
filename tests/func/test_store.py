"""The local store: puts, manifests, keys, stat cache, materialise, and what crashes and races leave."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import blake3
import pytest

from gitbake.errors import GitbakeError, StoreCorruptError
from gitbake.repo.fsck import fsck
from gitbake.store import objects as store_mod
from gitbake.store.objects import CorruptObject, InvalidDigest, Manifest, ObjectMissing, Store

REPO = Path(__file__).parent.parent.parent


@pytest.fixture
def st(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def old_file(path: Path, data: bytes) -> Path:
    """A file written a while ago (not racy for the stat cache)."""
    path.write_bytes(data)
    past = time.time_ns() - 10 * 10**9
    os.utime(path, ns=(past, past))
    return path


def test_layout_and_format_file(st: Store) -> None:
    assert (st.root / "format").read_text() == "gitbake-store 1\n"
    d = st.put_bytes(b"hello")
    assert d == blake3.blake3(b"hello").hexdigest()
    path = st.root / "objects" / "blake3" / d[:2] / d[2:]
    assert path.is_file() and path.read_bytes() == b"hello"
    assert path.stat().st_mode & 0o777 == 0o444


def test_newer_format_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store(root)
    (root / "format").write_text("gitbake-store 99\n")
    with pytest.raises(GitbakeError, match="newer"):
        Store(root)


def test_put_file_new_exists_cached(st: Store, tmp_path: Path) -> None:
    f = old_file(tmp_path / "a.bin", os.urandom(100_000))
    first = st.put_file(f)
    assert first.how == "new" and first.size == 100_000 and st.has(first.digest)
    again = st.put_file(f)
    assert again.how == "cached" and again.digest == first.digest
    copy = old_file(tmp_path / "b.bin", f.read_bytes())  # same bytes, another inode: read, not rewritten
    assert st.put_file(copy).how == "exists"


def test_stat_cache_misses_a_modified_file(st: Store, tmp_path: Path) -> None:
    f = old_file(tmp_path / "a.bin", b"one")
    st.put_file(f)
    st_before = f.stat()
    f.write_bytes(b"two")  # same size, new content
    os.utime(f, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))  # even with the old mtime back
    res = st.put_file(f)
    assert res.how == "new" and res.digest == blake3.blake3(b"two").hexdigest()


def test_racy_file_is_not_cached(st: Store, tmp_path: Path) -> None:
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"just written")
    st.put_file(f)
    assert st.put_file(f).how == "exists"  # hashed again: its mtime is too recent to trust


def test_take_over_moves_the_file_in(st: Store, tmp_path: Path) -> None:
    f = tmp_path / "adapter_model.safetensors"
    f.write_bytes(b"weights" * 1000)
    ino = f.stat().st_ino
    res = st.put_file(f, take=True)
    assert res.how == "taken" and not f.exists()
    assert st.object_path(res.digest).stat().st_ino == ino  # the same inode: no copy was made
    g = tmp_path / "again.safetensors"
    g.write_bytes(b"weights" * 1000)
    assert st.put_file(g, take=True).how == "exists" and not g.exists()


def test_put_dir_makes_a_manifest(st: Store, tmp_path: Path) -> None:
    d = tmp_path / "adapter"
    (d / "sub").mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "sub" / "x.bin").write_bytes(b"x")
    m = st.put_dir(d, {"kind": "adapter"})
    assert st.is_manifest(m) and not st.is_manifest(st.put_bytes(b'{"files": 1}'))
    man = st.read_manifest(m)
    assert set(man.files) == {"adapter_config.json", "sub/x.bin"} and man.meta == {"kind": "adapter"}
    assert st.closure({m}) == {m} | {e.digest for e in man.files.values()}
    assert st.put_dir(d, {"kind": "adapter"}) == m  # deterministic


def test_manifest_rejects_unsafe_paths(st: Store) -> None:
    d = st.put_bytes(b"x")
    for bad in ("../escape", "/abs", "a/../../b"):
        data = Manifest({bad: store_mod.FileEntry(d, 1)}).to_bytes()
        with pytest.raises(ValueError, match="unsafe"):
            Manifest.from_bytes(data)


@pytest.mark.parametrize("digest", ["../../x", "ab", "A" * 64, "g" * 64, "a" * 63 + "/", "", "a" * 65])
def test_invalid_digests_never_become_paths(st: Store, digest: str) -> None:
    for op in (st.object_path, st.has, st.open, st.verify):
        with pytest.raises(InvalidDigest):
            op(digest)
    with pytest.raises(InvalidDigest):
        st.set_key("bake", digest, st.put_bytes(b"x"))
    with pytest.raises(InvalidDigest):
        st.set_key("../x", "a" * 64, st.put_bytes(b"x"))


def test_keys(st: Store) -> None:
    d = st.put_bytes(b"result")
    key = "c" * 64
    assert st.get_key("bake", key) is None
    st.set_key("bake", key, d)
    assert st.get_key("bake", key) == d
    assert (st.root / "keys" / "bake" / key).read_text() == d + "\n"
    assert [(s, k, t) for s, k, t, _ in st.iter_keys()] == [("bake", key, d)]
    with pytest.raises(ObjectMissing):
        st.set_key("bake", key, "e" * 64)
    st.object_path(d).unlink()
    assert st.get_key("bake", key) is None  # a key to a missing object is no cache hit


def test_materialise_links_and_is_read_only(st: Store, tmp_path: Path) -> None:
    d = st.put_bytes(os.urandom(1 << 20))
    dest = tmp_path / "work" / "adapter.bin"
    how = st.materialise(d, dest)
    assert how in ("reflink", "hardlink")
    assert dest.read_bytes() == st.read_bytes(d)
    assert not os.access(dest, os.W_OK) or os.getuid() == 0
    assert dest.stat().st_mode & 0o222 == 0
    assert st.materialise(d, dest) == ("hardlink" if how == "hardlink" else how)  # re-run: nothing to do


def test_materialise_tree_is_exactly_the_manifest(st: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    (src / "b").write_text("b")
    m = st.put_dir(src)
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "stale").write_text("old")
    methods = st.materialise_tree(m, dest)
    assert set(methods) == {"a", "b"} and sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert not list(tmp_path.glob(".model.*"))


def test_flipped_byte_fsck_names_it_and_materialise_refuses(st: Store, tmp_path: Path) -> None:
    good = st.put_bytes(b"good object")
    bad = st.put_bytes(b"this object will rot")
    path = st.object_path(bad)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(3)
        fh.write(b"X")
    with pytest.raises(CorruptObject) as exc:
        st.materialise(bad, tmp_path / "out")
    assert bad in exc.value.message and exc.value.exit_code == 4 and not (tmp_path / "out").exists()
    report = fsck(st)
    assert list(report.corrupt) == [bad] and not report.ok
    assert not st.has(bad) and st.has(good)
    assert Path(report.quarantined[0]).read_bytes().startswith(b"thiX")
    assert fsck(st).ok  # quarantined: the store is clean again


def test_fsck_reports_manifests_with_missing_files(st: Store, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    m = st.put_dir(tmp_path / "d")
    f = next(iter(st.read_manifest(m).files.values())).digest
    st.object_path(f).unlink()
    report = fsck(st)
    assert report.missing_in_manifests == {m: [f]}


class _NearlyFullDisk:
    """Files in the store's tmp/ accept `room` bytes, then fail with ENOSPC. With `short`, the last write
    that does not fit is first accepted in part (a short count), as a real nearly full disk does."""

    def __init__(self, inner: object, budget: dict[str, int], short: bool) -> None:
        self.inner, self.budget, self.short = inner, budget, short

    def write(self, data: object) -> int:
        n = min(len(data), self.budget["left"])  # type: ignore[arg-type]
        if n == 0 or (n < len(data) and not self.short):  # type: ignore[arg-type]
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget["left"] -= n
        return self.inner.write(bytes(data)[:n])  # type: ignore[attr-defined, call-overload, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def __enter__(self) -> _NearlyFullDisk:
        return self

    def __exit__(self, *a: object) -> None:
        self.inner.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("short", [False, True], ids=["ENOSPC", "short writes"])
@pytest.mark.parametrize("how", ["streamed", "kernel copy"])
def test_full_disk_fails_cleanly_and_never_stores_a_truncated_object(
    how: str, short: bool, st: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the last write does not fit: a short write there must not go unnoticed
    src = old_file(tmp_path / "big.bin", os.urandom(store_mod.CHUNK + 2000))
    budget = {"left": store_mod.CHUNK + 1000}
    real_open, real_copy = open, os.copy_file_range
    if how == "streamed":
        monkeypatch.setattr(store_mod, "_kernel_copy", lambda src, dst: None)
    else:

        def fake_copy(fd_in: int, fd_out: int, count: int, *args: object) -> int:
            # the file does not fit: ENOSPC at once, or (`short`) what fits is copied first, a short count
            n = min(count, budget["left"])
            if n == 0 or not short:
                raise OSError(errno.ENOSPC, "No space left on device")
            budget["left"] -= n
            return real_copy(fd_in, fd_out, n)

        monkeypatch.setattr(os, "copy_file_range", fake_copy)

    def fake_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        fh = real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]
        return _NearlyFullDisk(fh, budget, short) if "w" in mode and str(path).startswith(str(st.tmp)) else fh

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(store_mod.StoreFull, match="no space left"):
        st.put_file(src)
    monkeypatch.setattr("builtins.open", real_open)
    assert list(st.iter_objects()) == [] and list(st.tmp.iterdir()) == []


def test_put_copies_in_the_kernel_and_streams_where_it_cannot(
    st: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regular file is copied by copy_file_range (no bytes through Python); a pipe, or a filesystem
    pair the kernel refuses, is streamed; both store the same object under the same digest."""
    data = os.urandom(3 * store_mod.CHUNK + 5)
    src = old_file(tmp_path / "a.bin", data)
    calls: list[int] = []
    real_copy = os.copy_file_range

    def counting(fd_in: int, fd_out: int, count: int, *args: object) -> int:
        calls.append(count)
        return real_copy(fd_in, fd_out, count)

    monkeypatch.setattr(os, "copy_file_range", counting)
    digest = st.put_file(src).digest
    assert calls and st.object_path(digest).read_bytes() == data and digest == store_mod.hash_file(src)
    calls.clear()  # a small file (or one that says it is empty, as /proc's do) is streamed
    small = st.put_file(old_file(tmp_path / "small.bin", b"x" * 1000)).digest
    assert not calls and st.object_path(small).read_bytes() == b"x" * 1000

    def refused(fd_in: int, fd_out: int, count: int, *args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    other = Store(tmp_path / "other")
    assert other.put_file(src).digest == digest and other.object_path(digest).read_bytes() == data
    assert list(other.tmp.iterdir()) == []
    other.close()


def test_sigkill_mid_put_leaves_no_object(st: Store, tmp_path: Path) -> None:
    fifo = tmp_path / "slow-source"
    os.mkfifo(fifo)
    code = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from gitbake.store.objects import Store
        Store(Path({str(st.root)!r})).put_file(Path({str(fifo)!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    with open(fifo, "wb") as feeder:
        feeder.write(os.urandom(8 << 20))  # the writer is now mid-put, waiting for the rest
        feeder.flush()
        deadline = time.time() + 30
        while time.time() < deadline and not any(f.stat().st_size for f in st.tmp.iterdir()):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(st.iter_objects()) == []
    assert len(list(st.tmp.iterdir())) == 1  # the stray file of the killed write
    report = fsck(st)
    assert report.tmp_removed == 1 and report.ok and list(st.tmp.iterdir()) == []


def test_eight_processes_put_at_once(st: Store, tmp_path: Path) -> None:
    shared = old_file(tmp_path / "shared.bin", os.urandom(2 << 20))
    code = textwrap.dedent(
        f"""
        import os, sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from gitbake.store.objects import Store
        s = Store(Path({str(st.root)!r}))
        i = int(sys.argv[1])
        own = Path({str(tmp_path)!r}) / f"own-{{i}}.bin"
        own.write_bytes(bytes([i]) * (1 << 20) + os.urandom(1024))
        print(s.put_file(Path({str(shared)!r})).digest, s.put_file(own).digest, s.put_bytes(b"tiny shared"))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, text=True) for i in range(8)
    ]
    outputs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    digests = {d for out in outputs for d in out}
    assert len(digests) == 8 + 2  # one shared file, one shared blob, eight own files
    assert set(st.iter_objects()) == digests
    for d in digests:
        st.verify(d, trust_stat=False)
    assert fsck(st).ok


def test_corrupt_object_cli_exit_4(model_repo: Path) -> None:
    from gitbake.repo.repo import open_repo

    from helpers import invoke

    s = open_repo(model_repo).store
    d = s.put_bytes(b"will rot")
    os.chmod(s.object_path(d), 0o644)
    s.object_path(d).write_bytes(b"has rot!")
    result = invoke("store", "fsck")
    assert result.exit_code == 4 and d in result.stderr and "git bake pull" in result.stderr
    assert invoke("store", "fsck").exit_code == 0


def test_store_root_config_and_worktrees(model_repo: Path, tmp_path: Path) -> None:
    from gitbake.repo.repo import open_repo
    from gitbake.repo.storepath import store_root

    from helpers import git

    assert store_root(model_repo) == model_repo / ".git" / "bake"
    git(model_repo, "worktree", "add", "-q", str(tmp_path / "wt"))
    assert store_root(tmp_path / "wt") == model_repo / ".git" / "bake"  # worktrees share one store
    git(model_repo, "config", "bake.storePath", str(tmp_path / "shared"))
    assert open_repo(model_repo).store.root == tmp_path / "shared"


def test_du(model_repo: Path) -> None:
    import json

    from gitbake.repo.repo import open_repo

    from helpers import invoke

    s = open_repo(model_repo).store
    d = s.put_bytes(b"12345")
    s.set_key("stim", "a" * 64, d)
    data = json.loads(invoke("store", "du", "--json").stdout)
    assert data["objects"] == 1 and data["bytes"] == 5 and data["keys"] == {"stim": 1}
    assert "objects: 1" in invoke("store", "du").stdout


def test_store_errors_are_gitbake_errors() -> None:
    assert issubclass(CorruptObject, StoreCorruptError)


def test_fsck_quarantines_what_is_not_a_file_instead_of_aborting(st: Store, tmp_path: Path) -> None:
    """An object that is a dangling symlink or a directory used to abort fsck with a traceback."""
    good = st.put_bytes(b"good")
    link, folder = "a" * 64, "b" * 64
    st.object_path(link).parent.mkdir(exist_ok=True)
    os.symlink(tmp_path / "nowhere", st.object_path(link))
    st.object_path(folder).parent.mkdir(exist_ok=True)
    st.object_path(folder).mkdir()
    with pytest.raises(StoreCorruptError, match="a directory"):
        st.read_bytes(folder)
    with pytest.raises(StoreCorruptError, match="a symlink"):
        st.verify(link)
    report = fsck(st)
    assert report.not_files == {link: "a symlink", folder: "a directory"} and not report.ok
    assert len(report.quarantined) == 2 and st.has(good) and fsck(st).ok


def test_fsck_checks_manifests_and_what_head_needs(model_repo: Path) -> None:
    """fsck said "store OK" for a manifest that does not parse and for a missing manifest of HEAD's model,
    and checkout and chat then crashed with tracebacks. Now fsck names both (exit 4), and checkout and
    chat say what is wrong."""
    import json

    from gitbake.contract import bread
    from gitbake.repo.repo import open_repo

    from helpers import bake_git, git, invoke

    s = open_repo(model_repo).store
    weights = s.put_bytes(b"weights")
    body = {
        "files": {"../../escape": {"digest": weights, "size": 7}},
        "format": 1,
        "kind": "gitbake-manifest",
        "meta": {},
    }
    bad = s.put_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    unkeyed = s.put_bytes(json.dumps({**body, "files": {"a": {"digest": "zz", "size": 1}}}, sort_keys=True).encode())
    b = bread.read(model_repo)
    assert b is not None
    b.set("PARENT_MODEL", "adapters", json.dumps([bad]))
    bread.write(model_repo, b)
    git(model_repo, "commit", "-qam", "a model whose manifest is damaged")

    result = invoke("store", "fsck", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 4 and set(report["bad_manifests"]) == {bad, unkeyed}
    assert "unsafe path" in report["bad_manifests"][bad] and "HEAD's .bread" in report["bad_manifests"][bad]
    for args in (["checkout"], ["chat", "-p", "hi"]):
        out = bake_git(model_repo, *args)
        assert out.returncode == 4 and bad in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)

    missing = "c" * 64  # HEAD's model names a manifest that is not here at all
    b.set("PARENT_MODEL", "adapters", json.dumps([missing]))
    bread.write(model_repo, b)
    git(model_repo, "commit", "-qam", "a model whose manifest is missing")
    result = invoke("store", "fsck")
    assert result.exit_code == 4 and f"missing: {missing}, which HEAD's .bread names" in result.stderr
    assert "store OK" not in result.stdout


def test_fsck_clears_the_tmp_folders_of_killed_jobs(st: Store) -> None:
    """A killed job's working folder in tmp/ used to stay for ever. fsck removes tmp/ folders once no
    other process has the store open; while one does (a job still running), they stay."""
    code = textwrap.dedent(
        f"""
        import sys, tempfile, time; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from gitbake.store.objects import Store
        store = Store(Path({str(st.root)!r}))
        work = tempfile.TemporaryDirectory(dir=store.tmp)  # as a bake's stages hold theirs
        (Path(work.name) / "adapter_model.safetensors").write_bytes(b"half-trained")
        print(work.name, flush=True)
        time.sleep(600)
        """
    )
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    running = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout is not None and running.stdout is not None
        dead_dir, live_dir = Path(killed.stdout.readline().strip()), Path(running.stdout.readline().strip())
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        report = fsck(st)
        assert report.tmp_kept == 2 and dead_dir.is_dir() and live_dir.is_dir()  # a job still uses the store
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
        killed.stdout.close()  # type: ignore[union-attr]
        running.stdout.close()  # type: ignore[union-attr]
    report = fsck(st)
    assert report.tmp_removed == 2 and report.tmp_kept == 0 and list(st.tmp.iterdir()) == [] and report.ok
