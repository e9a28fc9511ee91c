"""Remote stores through fsspec: `/path`, `file://`, `s3://`, `gs://`, ... (docs/store-format.md).

A remote has the store's layout (`format`, `objects/blake3/ab/cdef...`), so a directory remote is itself
readable as a store. Transfers move only the objects the given revisions need, skip what the other side
has (one listing, not one request per object), run several at a time, and re-hash everything that
arrives: a corrupt object is refused by name. Each object lands whole or not at all (temp name + rename
on filesystems; a single PUT on object stores), so an interrupted transfer resumes by running it again.
The `format` file is written the same way, and one that an interrupted first push of an older gitbake
left empty or partial counts as absent: the next push repairs it. A push also clears the remote's `tmp/`
of the partial files of interrupted pushes, once they are older than TMP_GRACE_S.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from gitbake import git
from gitbake.contract.digest import is_digest
from gitbake.errors import GitbakeError, StoreCorruptError, UsageError
from gitbake.store.objects import FORMAT_LINE, CorruptObject, Store, check_digest

CONFIG_SECTION = "bake-remote"
DEFAULT_KEY = "bake.remote"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_JOBS = 8
# a partial upload in the remote's tmp/ this old is a leftover (no single object takes a day to upload)
TMP_GRACE_S = 86400.0
_FORMAT = re.compile(r"gitbake-store (\d+)")


class RemoteError(GitbakeError):
    pass


class ObjectNotOnRemote(RemoteError):
    pass


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise RemoteError(
            "remotes need fsspec, which is not installed",
            "pip install 'gitbake[remote]'   (and 'gitbake[s3]' for s3:// remotes)",
        ) from None
    return fsspec


# ------------------------------------------------------------------------------------ configuration


def list_remotes(root: Path) -> dict[str, str]:
    out = {}
    for key, value in git.config_get_regexp(root, rf"^{CONFIG_SECTION}\..*\.url$").items():
        name = key[len(CONFIG_SECTION) + 1 : -len(".url")]
        out[name] = value
    return dict(sorted(out.items()))


def default_remote(root: Path) -> str | None:
    return git.config_get(root, DEFAULT_KEY)


def add_remote(root: Path, name: str, url: str) -> bool:
    """Add a remote; the first one becomes the default. Returns whether it became the default."""
    if not _NAME.match(name):
        raise UsageError(f"invalid remote name {name!r}", "use letters, digits, `.`, `_` and `-`")
    if name in list_remotes(root):
        raise UsageError(
            f"remote {name!r} already exists ({list_remotes(root)[name]})",
            f"remove it first: git bake remote rm {name}",
        )
    url = normalise_url(url, root)
    git.config_set(root, f"{CONFIG_SECTION}.{name}.url", url)
    if default_remote(root) is None:
        git.config_set(root, DEFAULT_KEY, name)
        return True
    return False


def remove_remote(root: Path, name: str) -> None:
    if name not in list_remotes(root):
        raise UsageError(f"no remote named {name!r}", "see `git bake remote ls`")
    git.config_unset_section(root, f"{CONFIG_SECTION}.{name}")
    if default_remote(root) == name:
        git.run(root, "config", "--local", "--unset", DEFAULT_KEY, check=False)


def normalise_url(url: str, root: Path, cwd: Path | None = None) -> str:
    """Plain paths become absolute, relative to where the command runs (a remote must not depend on the
    cwd of later commands); a remote inside the work tree would fill the checkout with objects: refused."""
    if not url.strip():
        raise UsageError("a remote needs a URL or a path", "e.g. git bake remote add origin /mnt/shared/models")
    if "://" in url:
        return url
    path = ((cwd or Path.cwd()) / os.path.expanduser(url)).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return str(path)
    raise UsageError(f"{path} is inside this repository's work tree", "put the remote store outside the repository")


def resolve(root: Path, name: str | None) -> Remote:
    remotes = list_remotes(root)
    if name is None:
        name = default_remote(root)
        if name is None:
            raise UsageError(
                "no remote given and no default remote",
                "add one: git bake remote add origin /path/or/s3://bucket/prefix",
            )
    if name not in remotes:
        # a URL or path may be given directly
        if "://" in name or name.startswith(("/", ".", "~")):
            return Remote(name, normalise_url(name, root))
        raise UsageError(f"no remote named {name!r}", "see `git bake remote ls`, or add it with `git bake remote add`")
    return Remote(name, remotes[name])


# ------------------------------------------------------------------------------------------ remote


class Remote:
    """One remote store. The same operations as the local store's, over fsspec."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        fsspec = _fsspec()
        try:
            self.fs, self.base = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise RemoteError(
                f"remote {name} ({url}) needs a package that is not installed: {exc}",
                "for s3:// install 'gitbake[s3]'; for others, the fsspec backend named in the error",
            ) from None
        except ValueError as exc:
            raise UsageError(f"remote {name}: cannot use {url!r}: {exc}") from None
        self.base = self.base.rstrip("/")
        self.atomic_puts = "file" in _protocols(self.fs)  # filesystems need temp + rename; object stores do not

    def _obj(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.base}/objects/blake3/{digest[:2]}/{digest[2:]}"

    def _format_line(self) -> str | None:
        """The remote's `format` line; None when there is none, or only what an interrupted write left
        (empty, or a prefix of a format line): both mean "no format written yet"."""
        try:
            line = self.fs.cat_file(f"{self.base}/format").decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        if not line or (FORMAT_LINE.startswith(line) and not _FORMAT.fullmatch(line)):
            return None
        return str(line)

    def _check_format(self, line: str) -> None:
        m = _FORMAT.fullmatch(line)
        if m is None:
            raise RemoteError(
                f"remote {self.name} ({self.url}) has a `format` file that does not name a gitbake store: "
                f"{line[:80]!r}",
                "check the URL: is this the right directory or bucket?",
            )
        if int(m.group(1)) > int(FORMAT_LINE.split()[1]):
            raise RemoteError(
                f"remote {self.name} ({self.url}) has format {line!r}, which this gitbake cannot read",
                "upgrade gitbake",
            )

    def ensure(self) -> None:
        """Make sure a store exists at the remote (writing or repairing its format file), before writing
        to it; on filesystems, also clear partial files that interrupted pushes left in its tmp/."""
        with _guard(self, "creating the remote store"):
            if self.atomic_puts and self.fs.exists(self.base) and not self.fs.isdir(self.base):
                raise RemoteError(f"remote {self.name}: {self.base} exists and is not a directory")
            line = self._format_line()
            if line is not None:
                self._check_format(line)
            else:
                if self.atomic_puts:
                    self.fs.makedirs(self.base, exist_ok=True)
                self._put_atomic(
                    f"{self.base}/format", lambda path: self.fs.pipe_file(path, FORMAT_LINE.encode()), True
                )
            if self.atomic_puts:
                self._clear_tmp()

    def check(self) -> None:
        """Before reading: the remote must hold a gitbake store of a format we understand."""
        with _guard(self, "reading the remote store"):
            line = self._format_line()
        if line is None:
            raise RemoteError(
                f"remote {self.name} ({self.url}) has no gitbake store (no `format` file, or an empty one that an "
                "interrupted first push left)",
                "check the URL; or push to it (`git bake push`), which writes (or repairs) it",
            )
        self._check_format(line)

    def _clear_tmp(self) -> int:
        """Delete files in the remote's tmp/ older than TMP_GRACE_S: partial uploads of interrupted
        pushes (a push in progress elsewhere writes fresh ones, which stay)."""
        tmp = f"{self.base}/tmp"
        try:
            entries = self.fs.ls(tmp, detail=True)
        except FileNotFoundError:
            return 0
        cleared = 0
        cutoff = time.time() - TMP_GRACE_S
        for info in entries:
            if info.get("type") != "file" or _mtime(info) > cutoff:
                continue
            try:
                self.fs.rm_file(info["name"])
                cleared += 1
            except FileNotFoundError:
                pass  # another push cleared it first
        return cleared

    def list_objects(self) -> set[str]:
        prefix = f"{self.base}/objects/blake3/"
        self.fs.invalidate_cache()  # another client may have written since we last listed
        try:
            with _guard(self, "listing objects"):
                try:
                    found = self.fs.find(prefix)
                except FileNotFoundError:
                    return set()
        except RemoteError:
            raise
        out = set()
        for p in found:
            rel = p[p.find("objects/blake3/") + len("objects/blake3/") :]
            digest = rel.replace("/", "")
            if is_digest(digest):
                out.add(digest)
        return out

    iter_objects = list_objects

    def has(self, digest: str) -> bool:
        return bool(self.fs.exists(self._obj(digest)))

    def put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        self._write(digest, lambda path: self.fs.pipe_file(path, data))
        return digest

    def read_bytes(self, digest: str) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._obj(digest))
        except FileNotFoundError:
            raise RemoteError(f"object {digest} is not on remote {self.name} ({self.url})") from None
        actual = blake3.blake3(data).hexdigest()
        if actual != digest:
            raise CorruptObject(digest, actual, f"remote {self.name} ({self.url})")
        return data

    def upload(self, store: Store, digest: str, overwrite: bool = False) -> int:
        src = store.object_path(digest)
        store.verify(digest, trust_stat=False)  # never spread a corrupt object
        with _guard(self, f"uploading {digest[:12]}"):
            self._write(digest, lambda path: self.fs.put_file(str(src), path), overwrite)
        return src.stat().st_size

    def _write(self, digest: str, write: Callable[[str], None], overwrite: bool = False) -> None:
        self._put_atomic(self._obj(digest), write, overwrite)

    def _put_atomic(self, final: str, write: Callable[[str], None], overwrite: bool) -> None:
        """`write(path)` lands at `final` whole or not at all: on filesystems into tmp/, then renamed."""
        if not self.atomic_puts:
            write(final)  # a PUT is all or nothing on object stores
            return
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{self.base}/tmp/{uuid.uuid4().hex}"
        self.fs.makedirs(f"{self.base}/tmp", exist_ok=True)
        try:
            write(tmp)
            if self.fs.exists(final):
                if not overwrite:
                    return
                self.fs.rm_file(final)  # replacing a damaged copy (push --force)
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)

    def download(self, store: Store, digest: str) -> int:
        """Fetch into the store, hashing as it arrives; a corrupt object never enters the store."""
        check_digest(digest)
        tmp = store.tmp / f"{os.getpid()}-{uuid.uuid4().hex}"
        hasher = blake3.blake3()
        size = 0
        try:
            with store.writing():
                with _guard(self, f"downloading {digest[:12]}"):
                    try:
                        src = self.fs.open(self._obj(digest), "rb")
                    except FileNotFoundError:
                        raise ObjectNotOnRemote(
                            f"object {digest} is not on remote {self.name} ({self.url})",
                            "push it from a clone that has it: git bake push",
                        ) from None
                    with src, open(tmp, "wb") as out:
                        while chunk := src.read(4 << 20):
                            hasher.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                actual = hasher.hexdigest()
                if actual != digest:
                    raise CorruptObject(digest, actual, f"remote {self.name} ({self.url})")
                store.commit_tmp(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return size


@contextmanager
def _guard(remote: Remote, action: str) -> Iterator[None]:
    """Any failure of the transport (OSError, botocore, aiohttp, ...) becomes one clear RemoteError."""
    try:
        yield
    except GitbakeError:
        raise
    except FileNotFoundError as exc:
        raise RemoteError(
            f"remote {remote.name} ({remote.url}): {action}: not found ({exc})",
            "check the URL (and that the bucket exists)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the transports raise anything; the user needs one message
        name = type(exc).__name__
        hint = "check the URL, the network and the credentials"
        if "Credential" in name or "AccessDenied" in str(exc):
            hint = "set credentials for the remote (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)"
        raise RemoteError(
            f"remote {remote.name} ({remote.url}): {action} failed: {name}: {str(exc)[:300]}", hint
        ) from None


def _mtime(info: dict[str, Any]) -> float:
    """A listing entry's modification time in seconds (fsspec backends name and type it differently);
    unknown: now, so an entry whose age cannot be told is never taken for a leftover."""
    value: Any = info.get("mtime", info.get("LastModified", info.get("updated")))
    if isinstance(value, (int, float)):
        return float(value)
    stamp = getattr(value, "timestamp", None)  # a datetime
    return float(stamp()) if callable(stamp) else time.time()


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (list, tuple)) else {proto}


# --------------------------------------------------------------------------------------- transfers


@dataclass
class TransferReport:
    remote: str
    url: str
    needed: int = 0
    transferred: list[str] = field(default_factory=list)
    bytes: int = 0
    skipped: int = 0  # the other side had them
    missing: list[str] = field(default_factory=list)  # needed but nowhere to be found
    corrupt: dict[str, str] = field(default_factory=dict)  # refused: digest -> error
    errors: dict[str, str] = field(default_factory=dict)  # transport failures: digest -> error

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def raise_for_problems(self, verb: str) -> None:
        if self.corrupt:
            names = ", ".join(sorted(self.corrupt))
            if verb == "push":
                raise StoreCorruptError(
                    f"push refused {len(self.corrupt)} object(s) that are corrupt in the local store: {names}",
                    "run `git bake store fsck` (it quarantines them), then `git bake pull` good copies",
                )
            raise StoreCorruptError(
                f"pull refused {len(self.corrupt)} corrupt object(s) from remote {self.remote}: {names}",
                "the remote copy is damaged: from a clone with a good copy run `git bake push --force`, then pull "
                "again",
            )
        if self.errors:
            first = next(iter(self.errors.values()))
            raise RemoteError(
                f"{verb} failed for {len(self.errors)} object(s); the first error: {first}",
                "fix the cause and run it again: what was transferred stays, the rest resumes",
            )
        if self.missing:
            raise GitbakeError(
                f"{len(self.missing)} object(s) needed by these revisions are not available: "
                f"{', '.join(sorted(self.missing))}",
                "push them from a clone that has them"
                if verb == "pull"
                else "they are missing locally: pull them, or re-run the bake",
            )


Progress = Callable[[int, int, int], None]  # done, total, bytes


def _run_parallel(
    digests: Iterable[str], work: Callable[[str], int], report: TransferReport, jobs: int, progress: Progress | None
) -> None:
    todo = sorted(digests)
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(work, d): d for d in todo}
        for fut in as_completed(futures):
            digest = futures[fut]
            try:
                report.bytes += fut.result()
                report.transferred.append(digest)
            except CorruptObject as exc:
                report.corrupt[digest] = exc.message
            except ObjectNotOnRemote:
                report.missing.append(digest)
            except GitbakeError as exc:
                report.errors[digest] = exc.message
            done += 1
            if progress:
                progress(done, len(todo), report.bytes)


def push(
    store: Store,
    remote: Remote,
    roots: set[str],
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    force: bool = False,
) -> TransferReport:
    """Upload what `roots` need. `force`: upload even what the remote has (repairs a damaged remote copy)."""
    report = TransferReport(remote.name, remote.url)
    local_missing = {d for d in roots if not store.has(d)}
    needed = store.closure(roots - local_missing) | local_missing
    report.needed = len(needed)
    report.missing = sorted(d for d in needed if not store.has(d))
    remote.ensure()
    have = set() if force else remote.list_objects()
    todo = {d for d in needed if d not in have and store.has(d)}
    report.skipped = len(needed & have)
    _run_parallel(todo, lambda d: remote.upload(store, d, overwrite=force), report, jobs, progress)
    return report


def pull(
    store: Store, remote: Remote, roots: set[str], jobs: int = DEFAULT_JOBS, progress: Progress | None = None
) -> TransferReport:
    report = TransferReport(remote.name, remote.url)
    first = {d for d in roots if not store.has(d)}
    if first:
        remote.check()  # an unreachable or wrong URL is said as such, not as "objects missing"
    # first the roots (manifests among them), then the files the manifests name
    report.skipped += len(roots) - len(first)
    _run_parallel(first, lambda d: remote.download(store, d), report, jobs, progress)
    files: set[str] = set()
    for d in roots:
        if store.has(d) and store.is_manifest(d):
            files |= {e.digest for e in store.read_manifest(d).files.values()}
    second = {d for d in files if not store.has(d)}
    report.skipped += len(files) - len(second)
    _run_parallel(second, lambda d: remote.download(store, d), report, jobs, progress)
    report.needed = len(roots | files)
    return report


def have_any(remotes: list[Remote]) -> Callable[[set[str]], set[str]]:
    """For gc: which of the candidates some remote holds (one listing per remote)."""

    def check(candidates: set[str]) -> set[str]:
        found: set[str] = set()
        for r in remotes:
            try:
                found |= candidates & r.list_objects()
            except Exception:  # an unreachable remote proves nothing: keep the objects
                continue
        return found

    return check
