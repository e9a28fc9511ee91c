"""Everything gitbake asks of git. The only module that imports dulwich or runs the git binary.

Reads go through dulwich (no process per call); writes that must fire git's own machinery (init,
commit, config) run the git binary, so the user's configuration, hooks and index semantics apply.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake.errors import GitbakeError, NotARepoError


class GitError(GitbakeError):
    pass


def find_root(start: Path) -> Path | None:
    """The work tree root containing `start` (walks up to a `.git` dir or file), without importing dulwich."""
    cur = start.resolve()
    for candidate in (cur, *cur.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def dot_git(root: Path) -> Path | None:
    """The git directory of the work tree at `root`, read from the filesystem (no process: hooks and
    status run this on every call). A worktree's `.git` is a file `gitdir: PATH`."""
    d = root / ".git"
    if d.is_file():
        target = d.read_text(encoding="utf-8", errors="replace").strip().removeprefix("gitdir:").strip()
        d = (root / target).resolve()
    return d if d.is_dir() else None


OPERATION_MARKERS = ("rebase-merge", "rebase-apply", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "sequencer")


def operation_in_progress(root: Path) -> str | None:
    """The marker of a rebase, merge, cherry-pick, revert or am in progress (None when there is none):
    moving a branch under one of them would break it."""
    d = dot_git(root)
    if d is None:
        return None
    return next((m for m in OPERATION_MARKERS if (d / m).exists()), None)


def require_root(start: Path) -> Path:
    root = find_root(start)
    if root is None:
        raise NotARepoError(
            f"not a git repository: {start}",
            "run `git bake init` to create a model repository, or cd into one",
        )
    return root


def run(root: Path, *args: str, check: bool = True, input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run `git args...` in `root`; raise GitError with git's own message on failure."""
    for attempt in range(50):
        proc = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            input=input,
            env={**_env(), **(env or {})},
        )
        # another git process (an editor polling `git status`) holds index.lock for a moment: wait for it
        if proc.returncode == 0 or "index.lock" not in proc.stderr or attempt == 49:
            break
        import time

        time.sleep(0.1)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise GitError(f"git {' '.join(args)} failed: {msg}")
    return proc.stdout


def clean_env() -> dict[str, str]:
    """The environment without the GIT_* variables a hook exports (for processes we start)."""
    return _env()


def _env() -> dict[str, str]:
    # Inside a hook git exports GIT_DIR/GIT_INDEX_FILE/...; they would point our git calls at the wrong
    # place when we operate on another repository (pre-commit's no_git_env, its issue #300).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEEP_ENV}
    return env


_KEEP_ENV = {
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_DATE",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "GIT_TERMINAL_PROMPT",
    "GIT_TEMPLATE_DIR",
    "GIT_EXEC_PATH",
}


def init(path: Path, branch: str = "main") -> None:
    path.mkdir(parents=True, exist_ok=True)
    # -b needs git >= 2.28; fall back to setting HEAD for older gits
    proc = subprocess.run(["git", "init", "-q", "-b", branch], cwd=path, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        run(path, "init", "-q")
        run(path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")


def add(root: Path, paths: Sequence[str]) -> None:
    run(root, "add", "--", *paths)


def commit(root: Path, message: str, paths: Sequence[str] | None = None, no_verify: bool = False) -> str:
    args = ["commit", "-q", "-m", message]
    if no_verify:
        args.append("--no-verify")
    if paths is not None:
        args += ["--", *paths]
    run(root, *args)
    return run(root, "rev-parse", "HEAD").strip()


def has_commits(root: Path) -> bool:
    return head(root) is not None


def head(root: Path) -> str | None:
    from dulwich.repo import Repo

    with Repo(str(root)) as repo:
        try:
            return repo.head().decode()
        except KeyError:
            return None


def config_get(root: Path, key: str) -> str | None:
    proc = subprocess.run(["git", "config", "--get", key], cwd=root, capture_output=True, text=True, env=_env())
    return proc.stdout.strip() if proc.returncode == 0 else None


def config_get_regexp(root: Path, pattern: str) -> dict[str, str]:
    proc = subprocess.run(
        ["git", "config", "--local", "--get-regexp", pattern], cwd=root, capture_output=True, text=True, env=_env()
    )
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def config_set(root: Path, key: str, value: str) -> None:
    run(root, "config", "--local", key, value)


def config_unset_section(root: Path, section: str) -> bool:
    proc = subprocess.run(
        ["git", "config", "--local", "--remove-section", section], cwd=root, capture_output=True, text=True, env=_env()
    )
    return proc.returncode == 0


def hooks_dir(root: Path) -> Path:
    """Where git looks for hooks: honours core.hooksPath (relative paths are relative to the work tree)."""
    custom = config_get(root, "core.hooksPath")
    if custom:
        p = Path(os.path.expanduser(custom))
        return p if p.is_absolute() else root / p
    return _common(root) / "hooks"


def _common(root: Path) -> Path:
    raw = Path(run(root, "rev-parse", "--git-common-dir").strip())
    return raw if raw.is_absolute() else (root / raw).resolve()


def common_dir(root: Path) -> Path:
    return _common(root)


@dataclass(frozen=True)
class FileVersion:
    commit: str
    path: str
    data: bytes
    time: int  # commit time, seconds since epoch
    summary: str


def history(root: Path, paths: Sequence[str], rev: str = "HEAD") -> Iterator[FileVersion]:
    """Each distinct version of `paths` in the ancestry of `rev`, newest first.

    A version is reported at the newest commit that has it; older commits with the same blob are skipped,
    so the cost is one tree lookup per commit and one blob read per distinct version.
    """
    from dulwich.objects import Commit
    from dulwich.repo import Repo

    with Repo(str(root)) as repo:
        resolved = rev_parse(root, rev)
        if resolved is None:  # no commits yet, or an unknown revision
            return
        head_id = resolved.encode()
        seen: set[bytes] = set()
        for entry in repo.get_walker(include=[head_id]):  # type: ignore[list-item]
            c: Commit = entry.commit
            summary = c.message.decode("utf-8", "replace").splitlines()[0] if c.message else ""
            for path, data in _new_blobs(repo, c, paths, seen):
                yield FileVersion(c.id.decode(), path, data, c.commit_time, summary)


def _new_blobs(repo: Any, commit: Any, paths: Sequence[str], seen: set[bytes]) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of `paths` in `commit` whose blob is not in `seen` (which it updates)."""
    from dulwich.object_store import tree_lookup_path
    from dulwich.objects import Blob

    for path in paths:
        try:
            _mode, sha = tree_lookup_path(repo.object_store.__getitem__, commit.tree, path.encode())
        except KeyError:
            continue
        if sha in seen:
            continue
        seen.add(sha)
        blob = repo.object_store[sha]
        if isinstance(blob, Blob):
            yield path, blob.data


def show(root: Path, rev: str, path: str) -> bytes | None:
    """Contents of `path` at `rev` (any revision git understands), or None when absent."""
    from dulwich.object_store import tree_lookup_path
    from dulwich.objects import Blob, Commit
    from dulwich.repo import Repo

    commit_id = rev_parse(root, rev)
    if commit_id is None:
        return None
    with Repo(str(root)) as repo:
        commit = repo[commit_id.encode()]
        assert isinstance(commit, Commit)
        try:
            _mode, sha = tree_lookup_path(repo.object_store.__getitem__, commit.tree, path.encode())
        except KeyError:
            return None
        blob = repo.object_store[sha]
        return blob.data if isinstance(blob, Blob) else None


def blob(root: Path, sha: str) -> bytes | None:
    """The exact bytes of blob `sha` (e.g. an index entry's: `run` decodes text), or None when it is not one."""
    from dulwich.objects import Blob, ObjectID
    from dulwich.repo import Repo

    with Repo(str(root)) as repo:
        obj = repo.object_store[ObjectID(sha.encode())]
    return bytes(obj.data) if isinstance(obj, Blob) else None


def rev_parse(root: Path, rev: str) -> str | None:
    """The commit id `rev` names (HEAD~2, a branch, a tag, a short id), or None."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        env=_env(),
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def all_commits(root: Path) -> list[str]:
    """Every commit reachable from a ref or a reflog entry (what gc must keep the models of)."""
    proc = subprocess.run(
        ["git", "rev-list", "--all", "--reflog"], cwd=root, capture_output=True, text=True, env=_env()
    )
    if proc.returncode != 0:
        # an unreadable ref must never look like "nothing is reachable" to gc
        raise GitError(
            f"cannot list the commits of {root}: {proc.stderr.strip()}",
            "repair the repository (git fsck), then run again",
        )
    return proc.stdout.split()


def blobs_at(root: Path, commits: Sequence[str], paths: Sequence[str]) -> Iterator[tuple[str, str, bytes]]:
    """(commit, path, contents) of `paths` at each commit, each distinct blob once."""
    from dulwich.objects import Commit
    from dulwich.repo import Repo

    seen: set[bytes] = set()
    with Repo(str(root)) as repo:
        for cid in commits:
            try:
                commit = repo[cid.encode()]
            except KeyError:
                continue
            if not isinstance(commit, Commit):
                continue
            for path, data in _new_blobs(repo, commit, paths, seen):
                yield cid, path, data


# ------------------------------------------------------------------------------------ bake commits


def write_blob(root: Path, data: bytes) -> str:
    """Store `data` as a blob in the repository's object database; its id."""
    proc = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=root, input=data, capture_output=True, env=_env()
    )
    if proc.returncode != 0:
        raise GitError(f"git hash-object failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def commit_files(root: Path, parent: str, files: dict[str, bytes], message: str) -> str:
    """A new commit on top of `parent` whose tree is the parent's with `files` replaced.

    Built in a private index, so the user's index and working tree are not touched and no hook fires:
    a background bake can commit while the user keeps working."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gitbake-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run(root, "read-tree", parent, env=env)
        for path, data in files.items():
            blob = write_blob(root, data)
            run(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = run(root, "write-tree", env=env).strip()
    return run(root, "commit-tree", tree, "-p", parent, input=message).strip()


def update_ref(root: Path, ref: str, new: str, old: str | None, message: str) -> bool:
    """Compare-and-swap: point `ref` at `new` only if it still points at `old` (None: must not exist)."""
    args = ["update-ref", "-m", message]
    if ref == "HEAD":
        args.append("--no-deref")
    proc = subprocess.run(
        ["git", *args, ref, new, old or "0" * 40], cwd=root, capture_output=True, text=True, env=_env()
    )
    return proc.returncode == 0


def symbolic_head(root: Path) -> str | None:
    """The branch ref HEAD points at (refs/heads/main), or None when detached.

    Read from HEAD itself: status and the hooks ask on every call, and a git process costs more than the
    answer. git answers what the file cannot say (a reftable repository's HEAD is a placeholder)."""
    try:
        d = dot_git(root)
        head = (d / "HEAD").read_text(encoding="utf-8").strip() if d else None
    except (OSError, UnicodeDecodeError):
        head = None
    if head is not None and not head.startswith("ref: "):
        return None  # detached: HEAD holds a commit id
    if head is not None and head != "ref: refs/heads/.invalid":
        return head.removeprefix("ref: ").strip()
    proc = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=root, capture_output=True, text=True, env=_env())
    return proc.stdout.strip() if proc.returncode == 0 else None


def current_branch(root: Path) -> str | None:
    """The name of the branch HEAD points at (`main`), or None when detached."""
    ref = symbolic_head(root)
    return ref.removeprefix("refs/heads/") if ref is not None else None


def index_blob(root: Path, path: str) -> str | None:
    """The blob id the index holds for `path` (stage 0), or None."""
    out = run(root, "ls-files", "-s", "--", path)
    for line in out.splitlines():
        meta, _, name = line.partition("\t")
        parts = meta.split()
        if name == path and len(parts) == 3 and parts[2] == "0":
            return parts[1]
    return None


def tree_blob(root: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}:{path}"],
        cwd=root,
        capture_output=True,
        text=True,
        env=_env(),
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def hash_file_blob(path: Path) -> str:
    """git's blob id of a file's bytes (what `git hash-object` prints), without running git."""
    import hashlib

    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def set_index_entry(root: Path, path: str, blob: str) -> None:
    run(root, "update-index", "--cacheinfo", f"100644,{blob},{path}")


def refresh_index(root: Path, paths: Sequence[str]) -> None:
    # a file rewritten with its index blob's bytes: refresh its stat data so git status stays clean
    run(root, "update-index", "-q", "--refresh", "--", *paths, check=False)


def parents(root: Path, rev: str) -> list[str]:
    out = run(root, "rev-list", "--parents", "-n", "1", rev).split()
    return out[1:]


def changed_files(root: Path, commit: str) -> list[str]:
    """Paths a commit changed against its first parent (all its files for a root commit)."""
    out = run(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root", "-m", "--first-parent", commit)
    return sorted(set(out.split()))


def commit_message(root: Path, rev: str) -> str:
    return run(root, "log", "-1", "--format=%B", rev)


def refs(root: Path, prefix: str) -> dict[str, str]:
    """ref name -> commit id for every ref under `prefix` (refs/heads/, refs/bake/)."""
    out = run(root, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    found = {}
    for line in out.splitlines():
        name, _, sha = line.partition(" ")
        if sha:
            found[name] = sha
    return found


def may_have_refs(root: Path, prefix: str) -> bool:
    """Whether any ref under `prefix` (e.g. refs/bake/) can exist, from the files alone: a loose ref
    directory or a packed-refs line. False is certain; True is worth asking git (`refs`)."""
    d = dot_git(root)
    if d is None:
        return True
    common = d
    if (d / "commondir").is_file():  # a worktree: refs live in the main repository's git dir
        common = (d / (d / "commondir").read_text().strip()).resolve()
    if (common / prefix).is_dir():
        return True
    try:
        return f" {prefix}" in (common / "packed-refs").read_text(errors="replace")
    except OSError:
        return False


def delete_ref(root: Path, ref: str) -> None:
    run(root, "update-ref", "-d", ref)


def first_parent_log(root: Path, rev: str, paths: Sequence[str]) -> list[tuple[str, int, str]]:
    """(commit, time, subject) of commits on `rev`'s first-parent line that touched `paths`, newest first."""
    out = run(root, "log", "--first-parent", "--format=%H %ct %s", rev, "--", *paths, check=False)
    rows = []
    for line in out.splitlines():
        sha, t, subject = (line.split(" ", 2) + [""])[:3]
        rows.append((sha, int(t), subject))
    return rows


def git_dir(root: Path) -> Path:
    raw = Path(run(root, "rev-parse", "--git-dir").strip())
    return raw if raw.is_absolute() else (root / raw).resolve()
