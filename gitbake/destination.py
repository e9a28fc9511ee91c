"""The one guard for every command that replaces a whole directory (`checkout --to`, `export`).

Such a command builds its output beside the destination and swaps it in, which deletes whatever the
destination held. So the destination must be one that gitbake wrote itself. A plain `model.json` or
`chain.json` proves nothing, since any user directory can hold one. gitbake says so with a marker file
whose first line is a signature no other program writes (`MARKER`, `SIGNATURE`). Whatever the marker
says, a few places are never replaced: the repository, its `.git`, the store, the current directory,
HOME, `/`, and any directory that contains one of them. A symlink is refused rather than replaced by a
directory (which would silently cut the link) or followed (which would replace what it points to).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from gitbake.errors import UsageError

MARKER = ".gitbake-managed"
# what outputs of gitbake before the marker held: named in the refusal, never trusted
LEGACY_SIGNS = ("model.json", "chain.json", "gitbake.json")
SIGNATURE = "gitbake managed directory: replaced by the next `git bake` that writes here; do not edit"


def marker_text(kind: str) -> str:
    """The marker's contents: the signature line, then what wrote the directory (for a person reading it)."""
    return SIGNATURE + "\n" + json.dumps({"kind": kind, "format": 1}) + "\n"


def write_marker(directory: Path, kind: str) -> None:
    (directory / MARKER).write_text(marker_text(kind), encoding="utf-8")


def is_managed(directory: Path) -> bool:
    """Whether `directory` carries gitbake's marker (read without following a symlinked marker)."""
    path = directory / MARKER
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == SIGNATURE
    except OSError:
        return False


def never_replaced(extra: Iterable[Path] = ()) -> list[Path]:
    """The places no command may replace, resolved: `extra` (a repository, its .git, its store) and the
    current directory, HOME and the filesystem root."""
    places = [*extra, Path.cwd(), Path.home(), Path(os.sep)]
    return [p.resolve() for p in places]


def _absolute_not_a_link(dest: Path, instead: str) -> Path:
    """`dest` as an absolute path, refused (exit 2) when it is a symlink: replacing it would cut the link,
    following it would write elsewhere."""
    dest = Path(os.path.abspath(dest))
    if dest.is_symlink():
        target = os.path.realpath(dest)
        raise UsageError(
            f"{dest} is a symbolic link (to {target}); it is left alone",
            f"give the link's target explicitly (`{target}`) or {instead}",
        )
    return dest


def check(dest: Path, *, protected: Iterable[Path] = (), replace: bool = True, what: str = "a directory") -> Path:
    """Make sure writing `dest` can lose nothing, and return it as an absolute path.

    `dest` may be absent, an empty directory, or (with `replace`) a directory that carries gitbake's
    marker. Anything else is refused with exit code 2 and is not touched.
    """
    dest = _absolute_not_a_link(dest, "a new directory")
    real = dest.resolve()
    for place in never_replaced(protected):
        if real == place or real in place.parents:
            raise UsageError(
                f"{dest} is or contains {place}, which gitbake never replaces; it is left alone",
                f"give a new directory for {what}",
            )
    if dest.exists() and not dest.is_dir():
        raise UsageError(
            f"{dest} exists and is not a directory; it is left alone", f"give a new or empty directory for {what}"
        )
    if dest.is_dir() and any(dest.iterdir()):
        if not is_managed(dest):
            older = [n for n in LEGACY_SIGNS if (dest / n).is_file()]
            raise UsageError(
                f"{dest} is not empty and was not written by gitbake (no {MARKER} marker); it is left alone",
                (
                    f"it holds {', '.join(older)}: if an older gitbake wrote it, delete it yourself, then run this "
                    "again; "
                    if older
                    else ""
                )
                + f"or give a new or empty directory for {what}",
            )
        if not replace:
            raise UsageError(
                f"{dest} holds an earlier gitbake output", "add --force to replace it, or give a new directory"
            )
    return dest


def check_file(dest: Path, *, protected: Iterable[Path] = (), replace: bool = False, what: str = "the file") -> Path:
    """Make sure writing the single file `dest` can lose nothing, and return it as an absolute path.

    `dest` may be absent, or (with `replace`, the user's --force) an existing plain file. A symlink, a
    directory, and anything inside a place that is never replaced (a repository's .git, the store) are
    refused with exit code 2 and not touched.
    """
    dest = _absolute_not_a_link(dest, f"a new file name for {what}")
    if dest.is_dir():
        raise UsageError(
            f"{dest} is a directory; it is left alone", f"give a file name for {what}, e.g. {dest}/model.gguf"
        )
    real = dest.resolve()
    for place in [p.resolve() for p in protected]:
        if place in real.parents:
            raise UsageError(
                f"{dest} is inside {place}, which gitbake never writes into; it is left alone",
                f"give a file outside it for {what}",
            )
    if dest.exists() and not dest.is_file():
        raise UsageError(f"{dest} exists and is not a plain file; it is left alone", f"give a new file for {what}")
    if dest.exists() and not replace:
        raise UsageError(f"{dest} already exists", "add --force to replace it, or give a new file name")
    return dest
