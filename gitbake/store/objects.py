"""The content-addressed store (docs/store-format.md).

    <root>/format                       "gitbake-store 1"
    <root>/objects/blake3/ab/cdef...    file contents, named by blake3 digest, read-only (0444)
    <root>/keys/<stage>/<key>           -> digest of the stage's manifest
    <root>/tmp/                         in-progress writes
    <root>/locks/                       flock(2) files (`open`: held shared by every process using the store)
    <root>/leases/                      what running bakes read or will write (gitbake/repo/leases.py)
    <root>/quarantine/                  objects fsck found corrupt
    <root>/statcache.sqlite             stat cache (gitbake/store/statcache.py)

Every write goes one way: into `tmp/` (a kernel copy, then hashed; or streamed and hashed on the way),
fsync, then link into place; the digest is always that of the bytes in `tmp/`; an object that
exists is never rewritten, a digest is validated before it becomes a path, and a crash leaves at most a
stray file in `tmp/` (which `fsck` and `gc` clear). Writers hold the store's shared lock; fsck and gc take it
exclusively, so they never delete what a writer is about to reference.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import blake3

from gitbake.contract.digest import is_digest
from gitbake.errors import GitbakeError, StoreCorruptError, UsageError
from gitbake.store.locks import FileLock
from gitbake.store.statcache import StatCache

FORMAT = 1
FORMAT_LINE = f"gitbake-store {FORMAT}\n"
ALGO = "blake3"
STAGES = ("stim", "rollout", "bake", "eval")
MANIFEST_KIND = "gitbake-manifest"
_STAGE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
CHUNK = 4 << 20
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class InvalidDigest(UsageError):
    pass


class ObjectMissing(GitbakeError):
    pass


class StoreFull(GitbakeError):
    pass


def disk_error(exc: OSError, root: Path) -> GitbakeError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(
            f"no space left on the device of the store ({root}); nothing was stored",
            "free some space (`git bake store gc` deletes unreachable objects), or point `git config bake.storePath` "
            "at a larger disk",
        )
    return GitbakeError(f"writing to the store ({root}) failed: {exc}")


class NotAnObjectFile(StoreCorruptError):
    """An object's name holds something other than a regular file (a symlink, a directory): tampering."""

    def __init__(self, digest: str, what: str, root: Path) -> None:
        super().__init__(
            f"object {digest} in {root} is not a regular file but {what}",
            "run `git bake store fsck` to move it to quarantine/, then `git bake pull` to fetch a good copy",
        )
        self.digest = digest
        self.what = what


class BadManifest(StoreCorruptError, ValueError):
    """An object read as a manifest (a stored directory) does not parse as one. Also a ValueError, which
    is what callers that probe whether an object is a manifest catch."""

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(
            f"object {digest} is not a valid gitbake manifest: {reason}",
            "run `git bake store fsck` to see what is damaged, then `git bake pull` (or bake again) to restore it",
        )
        self.digest = digest
        self.reason = reason


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages about tampered objects)."""
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


class CorruptObject(StoreCorruptError):
    def __init__(self, digest: str, actual: str, where: str) -> None:
        super().__init__(
            f"object {digest} in {where} is corrupt: its content hashes to {actual}",
            "run `git bake store fsck` to quarantine it, then `git bake pull` to fetch a good copy from a remote",
        )
        self.digest = digest


def check_digest(digest: str) -> str:
    """A digest is 64 lowercase hex characters, nothing else ever becomes a path (`../../x` is refused)."""
    if not is_digest(digest):
        raise InvalidDigest(f"invalid digest {digest!r}", "a digest is 64 lowercase hex characters (blake3)")
    return digest


def check_key(stage: str, key: str) -> None:
    if not _STAGE.match(stage):
        raise InvalidDigest(f"invalid stage name {stage!r}", f"stages are {', '.join(STAGES)}")
    check_digest(key)


@dataclass(frozen=True)
class FileEntry:
    digest: str
    size: int


@dataclass
class Manifest:
    """A directory as an object: relative path -> (digest, size), plus free-form metadata."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        body = {
            "kind": MANIFEST_KIND,
            "format": FORMAT,
            "files": {p: {"digest": e.digest, "size": e.size} for p, e in sorted(self.files.items())},
            "meta": self.meta,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
            raise ValueError("not a gitbake manifest")
        raw_files, meta = body.get("files"), body.get("meta") or {}
        if not isinstance(raw_files, dict) or not isinstance(meta, dict):
            raise ValueError("a manifest's files and meta must be objects")
        files = {}
        for rel, entry in raw_files.items():
            _check_relpath(rel)
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("digest"), str)
                or not isinstance(entry.get("size"), int)
            ):
                raise ValueError(f"bad manifest entry for {rel!r}")
            try:
                files[rel] = FileEntry(check_digest(entry["digest"]), entry["size"])
            except InvalidDigest:
                raise ValueError(f"bad digest in manifest entry for {rel!r}") from None
        return cls(files, dict(meta))

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files.values())


def _check_relpath(rel: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel in ("", ".") or "\\" in rel:
        raise ValueError(f"unsafe path in manifest: {rel!r}")


@dataclass(frozen=True)
class PutResult:
    digest: str
    size: int
    how: str  # "new" (written), "exists" (already stored), "cached" (stat cache: not even read), "taken" (moved in)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / ALGO
        self.tmp = root / "tmp"
        self.keys = root / "keys"
        self.locks = root / "locks"
        self.quarantine = root / "quarantine"
        self.leases = root / "leases"
        self._init()
        self.statcache = StatCache(root / "statcache.sqlite")
        self._presence = _Presence(self.locks / "open")

    def _init(self) -> None:
        fmt = self.root / "format"
        if fmt.exists():
            line = fmt.read_text().strip()
            m = re.match(r"^gitbake-store (\d+)$", line)
            if not m:
                raise StoreCorruptError(
                    f"{fmt} does not name a gitbake store format: {line!r}",
                    "is bake.storePath pointing at the right directory?",
                )
            if int(m.group(1)) > FORMAT:
                raise GitbakeError(
                    f"the store at {self.root} has format {m.group(1)}, newer than this gitbake ({FORMAT})",
                    "upgrade gitbake",
                )
        for d in (self.objects, self.tmp, self.keys, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        if not fmt.exists():
            tmp = self.tmp / f"format.{uuid.uuid4().hex}"
            tmp.write_text(FORMAT_LINE)
            os.replace(tmp, fmt)

    def close(self) -> None:
        self.statcache.close()
        self._presence.close()

    # ----------------------------------------------------------------------------------- locking
    def writing(self) -> FileLock:
        """Shared lock held while writing: many writers at once, none while fsck or gc run."""
        return FileLock(self.locks / "store", shared=True, what="store")

    def exclusive(self, timeout: float = 600.0) -> FileLock:
        return FileLock(self.locks / "store", timeout=timeout, what="store (fsck/gc)")

    def clear_tmp(self) -> tuple[int, int]:
        """Remove the leftovers in `tmp/`: (removed, kept). Call with the exclusive lock held.

        A file directly in `tmp/` is a single write, made under the shared lock, so none is in progress
        now: every one is a leftover of a crash. A directory is a job's working area (a bake's adapter
        being trained, a dataset being written), used without that lock for as long as the job runs: it
        is removed only when no other process has the store open (the `locks/open` presence lock, which
        the kernel drops when its holder dies, so a killed job's folders go as soon as nothing else runs)."""
        try:
            entries = list(self.tmp.iterdir())
        except FileNotFoundError:
            return 0, 0
        alone = self._presence.alone()
        removed = kept = 0
        try:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    if not alone:
                        kept += 1
                        continue
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += not entry.exists()
                    continue
                try:
                    entry.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        finally:
            if alone:
                self._presence.share()
        return removed, kept

    # ------------------------------------------------------------------------------------- paths
    def object_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.object_path(digest).is_file()

    def touch(self, digest: str) -> None:
        """Mark an existing object as just stored: gc's grace period (and a bake's lease, which keeps
        whatever is stored after it began) protects what a running bake reuses. Callers hold the shared
        lock, so gc cannot delete the object between the check that it exists and this.

        Only the mtime moves (the bytes are untouched); the stat cache's record follows it."""
        path = self.object_path(digest)
        try:
            os.utime(path)
            self.statcache.record_object(digest, os.stat(path))
        except OSError:
            pass

    def size(self, digest: str) -> int:
        return self.object_path(digest).stat().st_size

    def open(self, digest: str) -> BinaryIO:
        path = self.object_path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise ObjectMissing(
                f"object {digest} is not in the store ({self.root})", "fetch it with `git bake pull`"
            ) from None
        except IsADirectoryError:
            raise NotAnObjectFile(digest, "a directory", self.root) from None

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as fh:
            return fh.read()

    def iter_objects(self) -> Iterator[str]:
        if not self.objects.is_dir():
            return
        for shard in sorted(self.objects.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for obj in sorted(shard.iterdir()):
                digest = shard.name + obj.name
                if is_digest(digest):
                    yield digest

    # -------------------------------------------------------------------------------------- puts
    def put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        with self.writing():
            if self.has(digest):
                self.touch(digest)
                return digest
            tmp = self._tmp_path()
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                self.commit_tmp(tmp, digest)
            except OSError as exc:
                raise disk_error(exc, self.root) from exc
            finally:
                _unlink(tmp)
        return digest

    def put_file(self, path: Path, take: bool = False) -> PutResult:
        """Store a file's contents. `take=True`: the store may take the file over (moved in after
        hashing, not copied); the caller must not touch it afterwards."""
        started = time.time_ns()
        st = os.stat(path)
        with self.writing():
            if not take:  # a file handed over is fresh: asking the stat cache would only cost time
                cached = self.statcache.lookup(st)
                if cached is not None and self.has(cached):
                    self.touch(cached)
                    return PutResult(cached, st.st_size, "cached")
            if take:
                result = self._take(path, st)
                if result is not None:
                    return result
            tmp = self._tmp_path()
            try:
                digest, size = self._stream_into(path, tmp)
                how = "exists" if self.has(digest) else "new"
                self.commit_tmp(tmp, digest)
            except OSError as exc:
                if exc.filename is not None and Path(exc.filename) == path:
                    raise  # the source is unreadable: not the store's problem
                raise disk_error(exc, self.root) from exc
            finally:
                _unlink(tmp)
            if os.stat(path).st_mtime_ns == st.st_mtime_ns:
                self.statcache.record(st, digest, started)
            return PutResult(digest, size, how)

    def _take(self, path: Path, st: os.stat_result) -> PutResult | None:
        digest = hash_file(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # nearly free for a file already on disk; makes a fresh one durable first
        finally:
            os.close(fd)
        final = self.object_path(digest)
        if final.exists():
            _unlink(path)
            self.touch(digest)
            return PutResult(digest, st.st_size, "exists")
        final.parent.mkdir(exist_ok=True)
        os.chmod(path, 0o444)
        try:
            os.link(path, final)  # never replaces an existing object (unlike rename)
        except FileExistsError:
            _unlink(path)
            return PutResult(digest, st.st_size, "exists")
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                os.chmod(path, stat.S_IMODE(st.st_mode))
                return None  # another filesystem: fall back to a streamed copy
            raise
        _unlink(path)
        _fsync_dir(final.parent)
        self.statcache.record_object(digest, os.stat(final))
        return PutResult(digest, st.st_size, "taken")

    def put_dir(self, path: Path, meta: dict[str, object] | None = None, take: bool = False) -> str:
        """Store every regular file under `path`; the directory becomes a manifest object."""
        manifest = Manifest(meta=dict(meta or {}))
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = f.relative_to(path).as_posix()
            res = self.put_file(f, take=take)
            manifest.files[rel] = FileEntry(res.digest, res.size)
        return self.put_bytes(manifest.to_bytes())

    def put_manifest(self, manifest: Manifest) -> str:
        for rel, entry in manifest.files.items():
            _check_relpath(rel)
            if not self.has(entry.digest):
                raise ObjectMissing(f"manifest names {rel} = {entry.digest}, which is not in the store")
        return self.put_bytes(manifest.to_bytes())

    def _tmp_path(self) -> Path:
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}"

    def _stream_into(self, src: Path, tmp: Path) -> tuple[str, int]:
        """Copy `src` to `tmp` (fsynced) and hash what `tmp` holds: the kernel copies where it can (a
        reflink on copy-on-write filesystems), else the bytes stream through a buffer, hashed on the way."""
        copied = _kernel_copy(src, tmp)
        if copied is not None:
            return hash_file(tmp), copied  # the bytes stored, read back from the page cache
        hasher = blake3.blake3()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        with open(src, "rb", buffering=0) as fin, open(tmp, "wb", buffering=0) as fout:
            while True:
                n = fin.readinto(buf)
                if not n:
                    break
                hasher.update(view[:n])
                _write_all(fout, view[:n])
                size += n
            os.fsync(fout.fileno())
            if os.fstat(fout.fileno()).st_size != size:  # never trust a write the disk did not finish
                raise OSError(errno.ENOSPC, "short write", str(tmp))
        return hasher.hexdigest(), size

    def commit_tmp(self, tmp: Path, digest: str) -> None:
        """Link a fully written, fsynced file of `tmp/` into place as `digest` (never over an object)."""
        final = self.object_path(digest)
        if final.exists():
            self.touch(digest)
            return
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        try:
            os.link(tmp, final)
        except FileExistsError:
            self.touch(digest)
            return  # another writer stored the same bytes first
        _fsync_dir(final.parent)
        self.statcache.record_object(digest, os.stat(final))

    # -------------------------------------------------------------------------------- manifests
    def is_manifest(self, digest: str) -> bool:
        path = self.object_path(digest)
        try:
            with path.open("rb") as fh:
                head = fh.read(len(b'{"files":'))
        except OSError:  # missing, or not a file (fsck quarantines that)
            return False
        if head != b'{"files":':
            return False
        try:
            self.read_manifest(digest)
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return True

    def read_manifest(self, digest: str) -> Manifest:
        """The manifest `digest`; BadManifest (a clean StoreCorruptError, never a traceback) when that
        object is not one: every command that reads a stored directory comes through here."""
        data = self.read_bytes(digest)
        try:
            return Manifest.from_bytes(data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise BadManifest(digest, str(exc) or type(exc).__name__) from None

    def closure(self, roots: set[str]) -> set[str]:
        """`roots` plus every object their manifests name (the files of each stored directory)."""
        out: set[str] = set()
        for d in roots:
            check_digest(d)
            out.add(d)
            if self.has(d) and self.is_manifest(d):
                out |= {e.digest for e in self.read_manifest(d).files.values()}
        return out

    # -------------------------------------------------------------------------------------- keys
    def key_path(self, stage: str, key: str) -> Path:
        check_key(stage, key)
        return self.keys / stage / key

    def set_key(self, stage: str, key: str, digest: str) -> None:
        check_digest(digest)
        path = self.key_path(stage, key)
        with self.writing():  # gc must not delete the object between this check and the key
            if not self.has(digest):
                raise ObjectMissing(
                    f"cannot point {stage} key {key[:12]} at {digest}: not in the store",
                    "a `git bake store gc` may have run meanwhile: run the command again",
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp_path()
            try:
                tmp.write_text(digest + "\n")
                os.replace(tmp, path)
            except OSError as exc:
                raise disk_error(exc, self.root) from exc
            finally:
                _unlink(tmp)

    def get_key(self, stage: str, key: str) -> str | None:
        """The digest a stage key points to, when that object is present (a cache hit)."""
        try:
            digest = self.key_path(stage, key).read_text().strip()
        except FileNotFoundError:
            return None
        if not is_digest(digest) or not self.has(digest):
            return None
        return digest

    def iter_keys(self) -> Iterator[tuple[str, str, str, float]]:
        """(stage, key, digest, mtime) of every key file."""
        if not self.keys.is_dir():
            return
        for stage_dir in sorted(self.keys.iterdir()):
            if not stage_dir.is_dir():
                continue
            for key_file in sorted(stage_dir.iterdir()):
                try:
                    digest = key_file.read_text().strip()
                    mtime = key_file.stat().st_mtime
                except OSError:
                    continue
                yield stage_dir.name, key_file.name, digest, mtime

    # ---------------------------------------------------------------------------------- checking
    def hash_object(self, digest: str) -> str:
        return hash_file(self.object_path(digest))

    def verify(self, digest: str, trust_stat: bool = True) -> None:
        """Raise CorruptObject unless the object hashes to its name. With `trust_stat`, an object whose
        size and mtime are as written is trusted without reading it (what keeps materialising O(1))."""
        path = self.object_path(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ObjectMissing(
                f"object {digest} is not in the store ({self.root})", "fetch it with `git bake pull`"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise NotAnObjectFile(digest, file_kind(st.st_mode), self.root)
        if trust_stat and self.statcache.object_trusted(digest, st):
            return
        actual = self.hash_object(digest)
        if actual != digest:
            self.statcache.forget_object(digest)
            raise CorruptObject(digest, actual, str(self.root))
        self.statcache.record_object(digest, st)

    # ------------------------------------------------------------------------------ materialise
    def materialise(self, digest: str, dest: Path) -> str:
        """Put the object's content at `dest`: reflink, else hardlink to the read-only object, else copy.

        Returns the method used. The object is checked first (by stat when it is as written)."""
        self.verify(digest)
        src = self.object_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if os.path.samefile(src, dest):
                return "hardlink"
        except FileNotFoundError:
            pass
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            how = _link_or_copy(src, tmp)
            os.replace(tmp, dest)
        finally:
            _unlink(tmp)
        return how

    def materialise_tree(self, digest: str, dest: Path) -> dict[str, str]:
        """Make `dest` exactly the manifest's directory (built beside it, then swapped in)."""
        manifest = self.read_manifest(digest)
        for entry in manifest.files.values():
            self.verify(entry.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
        methods: dict[str, str] = {}
        try:
            for rel, entry in manifest.files.items():
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                methods[rel] = _link_or_copy(self.object_path(entry.digest), target)
            swap_in(staging, dest)
        finally:
            if staging.exists():
                rmtree(staging)
        return methods


# --------------------------------------------------------------------------------------- helpers


def hash_file(path: Path) -> str:
    """blake3 of a file: memory-mapped (no copy through Python), multi-threaded on large files."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if os.path.getsize(path):
        hasher.update_mmap(path)
    return hasher.hexdigest()


def _link_or_copy(src: Path, dest: Path) -> str:
    """reflink (O(1) on CoW filesystems), then hardlink (O(1), shares the read-only inode), then copy."""
    try:
        with open(src, "rb") as fs, open(dest, "xb") as fd:
            fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
        os.chmod(dest, 0o444)
        return "reflink"
    except OSError:
        _unlink(dest)
    try:
        os.link(src, dest)
        return "hardlink"
    except OSError:
        pass
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o444)
    return "copy"


def _kernel_copy(src: Path, dst: Path) -> int | None:
    """`src` copied to a new `dst` by copy_file_range and fsynced; its size. The bytes never pass through
    Python (cp does the same), and a copy-on-write filesystem shares the extents instead of copying. None,
    with nothing written, where the kernel cannot (not a regular file, another filesystem on an old kernel,
    no such call): the caller streams instead. A full disk raises OSError, as a write would."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return None
    with open(src, "rb", buffering=0) as fin:
        st = os.fstat(fin.fileno())
        # small files gain nothing, and some that report size 0 (/proc, sysfs) copy as empty in the kernel
        if not stat.S_ISREG(st.st_mode) or st.st_size < CHUNK:
            return None
        with open(dst, "wb", buffering=0) as fout:
            size = 0
            while True:
                try:
                    n = copy(fin.fileno(), fout.fileno(), 1 << 30)
                except OSError as exc:
                    if size == 0 and exc.errno in (
                        errno.EXDEV,
                        errno.EINVAL,
                        errno.ENOSYS,
                        errno.EOPNOTSUPP,
                        errno.EBADF,
                        errno.EPERM,
                    ):
                        return None
                    raise
                if n == 0:
                    break
                size += n
            os.fsync(fout.fileno())
            if os.fstat(fout.fileno()).st_size != size:  # never trust a copy the disk did not finish
                raise OSError(errno.ENOSPC, "short write", str(dst))
    return size


def _write_all(fout: BinaryIO, data: memoryview) -> None:
    """An unbuffered write may be short (a nearly full disk): loop until all is written or it fails."""
    while len(data):
        n = fout.write(data)
        if not n:
            raise OSError(errno.ENOSPC, "No space left on device")
        data = data[n:]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def swap_in(staging: Path, dest: Path) -> None:
    """Replace `dest` with the complete directory `staging`: the old one is renamed away first and
    removed after, so `dest` is never half-written (the moment between the renames it is absent)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(dest, old)
    os.rename(staging, dest)
    if old is not None:
        rmtree(old)


class _Presence:
    """A shared flock(2) on `locks/open` while this Store is open: a process that can take it exclusively
    knows no other process uses the store, so the folders in `tmp/` are leftovers. Best effort: a store
    we cannot write (a full disk, a read-only mount) is still usable, only not marked as in use."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        except OSError:
            self.close()

    def alone(self) -> bool:
        """Whether no other process (nor another Store of this one) has the store open; if so, the lock
        is now held exclusively until `share()`."""
        if self.fd is None:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts our shared lock, if no one else holds one
        except OSError:
            self.share()  # a failed conversion drops the lock we had (flock(2)): take it again
            return False
        return True

    def share(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


def rmtree(path: Path) -> None:
    """Remove a materialised tree (links to read-only objects: unlinking them leaves the store alone)."""
    # read-only files in a writable directory unlink fine; nothing here needs chmod first
    shutil.rmtree(path, ignore_errors=True)
