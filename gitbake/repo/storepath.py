"""Where a repository's store lives, and which clones share it. Kept apart from `repo` (which loads the
config models) because hooks need the store on every checkout and must start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from gitbake import git
from gitbake.contract.keys import digest_bytes
from gitbake.fsutil import write_atomic
from gitbake.store.objects import Store

STORE_PATH_CONFIG = "bake.storePath"


def store_root(root: Path) -> Path:
    """`git config bake.storePath` (relative to the work tree), else `<git-common-dir>/bake`, which
    worktrees of one repository share."""
    configured = git.config_get(root, STORE_PATH_CONFIG)
    if configured:
        p = Path(os.path.expanduser(configured))
        return p if p.is_absolute() else (root / p).resolve()
    return git.common_dir(root) / "bake"


def open_store(root: Path) -> Store:
    """The store of the repository at `root`, which is registered with it so a shared store's gc sees
    the refs of every clone that uses it."""
    store = Store(store_root(root))
    register_clone(store, root)
    return store


def register_clone(store: Store, root: Path) -> None:
    """Record the clone (its work tree, and the git directory its refs live in, which tells a removed
    worktree from an unmounted clone later: `registered_clones`)."""
    clones = store.root / "clones"
    entry = clones / digest_bytes(str(root.resolve()).encode())[:16]
    if not entry.exists():
        clones.mkdir(exist_ok=True)
        write_atomic(entry, f"{root.resolve()}\n{git.common_dir(root)}\n")


def registered_clones(store: Store) -> tuple[list[Path], list[Path], list[Path]]:
    """(clones that exist, registered clones that are gone or unreachable, worktrees that git removed).

    A missing clone's models must not look unreferenced (a moved or unmounted clone): it is only
    reported, for the caller to refuse (see `forget_clones`). A missing worktree whose repository is
    here and no longer lists it (`git worktree remove`) has no refs left to keep: it can be forgotten."""
    present: list[Path] = []
    missing: list[Path] = []
    removed: list[Path] = []
    clones = store.root / "clones"
    if not clones.is_dir():
        return present, missing, removed
    listed: dict[Path, set[Path] | None] = {}
    for entry in sorted(clones.iterdir()):
        try:
            lines = entry.read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        path = Path(lines[0].strip())
        if (path / ".git").exists():
            present.append(path)
            continue
        common = Path(lines[1].strip()) if len(lines) > 1 and lines[1].strip() else _default_owner(store)
        known = _worktrees(common, listed) if common is not None else None
        (removed if known is not None and path not in known else missing).append(path)
    return present, missing, removed


def _default_owner(store: Store) -> Path | None:
    """For a registration from before gitbake recorded git directories: the repository whose default
    store (`<git-common-dir>/bake`) this is, if it is one."""
    parent = store.root.parent
    return (
        parent if store.root.name == "bake" and (parent / "HEAD").is_file() and (parent / "objects").is_dir() else None
    )


def _worktrees(common: Path, cache: dict[Path, set[Path] | None]) -> set[Path] | None:
    """The work trees git knows for the repository whose git directory is `common` (None: not readable,
    so nothing can be concluded)."""
    if common not in cache:
        cache[common] = None
        if common.is_dir():
            try:
                out = git.run(common, "worktree", "list", "--porcelain")
            except git.GitError:
                out = None
            if out is not None:
                cache[common] = {
                    Path(line[len("worktree ") :]) for line in out.splitlines() if line.startswith("worktree ")
                }
    return cache[common]


def forget_clones(store: Store, paths: list[Path]) -> None:
    for path in paths:
        (store.root / "clones" / digest_bytes(str(path).encode())[:16]).unlink(missing_ok=True)
