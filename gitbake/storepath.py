"""Where a repository's store lives, and which clones share it. Kept apart from `repo` (which loads the
config models) because hooks need the store on every checkout and must start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from gitbake import git
from gitbake.fsutil import write_atomic
from gitbake.keys import digest_bytes
from gitbake.store import Store

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
    clones = store.root / "clones"
    entry = clones / digest_bytes(str(root.resolve()).encode())[:16]
    if not entry.exists():
        clones.mkdir(exist_ok=True)
        write_atomic(entry, str(root.resolve()) + "\n")


def registered_clones(store: Store) -> tuple[list[Path], list[Path]]:
    """(clones that exist, registered clones that are gone or unreachable). Nothing is forgotten here:
    a moved or unmounted clone's models must not look unreferenced (see `forget_clones`)."""
    present: list[Path] = []
    missing: list[Path] = []
    clones = store.root / "clones"
    if not clones.is_dir():
        return present, missing
    for entry in sorted(clones.iterdir()):
        try:
            path = Path(entry.read_text().strip())
        except OSError:
            continue
        (present if (path / ".git").exists() else missing).append(path)
    return present, missing


def forget_clones(store: Store, paths: list[Path]) -> None:
    for path in paths:
        (store.root / "clones" / digest_bytes(str(path).encode())[:16]).unlink(missing_ok=True)
