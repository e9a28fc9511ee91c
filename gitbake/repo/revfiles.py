"""`.bread` and `recipe.yml` as a commit has them: the one reader for every command that looks at history.

A commit's copy can be damaged (not UTF-8, binary, unparseable) while the working tree's is good. Every
reader gets the same ConfigError naming `<rev>:<file>` (exit 2). Its fix restores a good copy from another
commit: `git checkout HEAD -- .bread` would be circular when HEAD's copy is the damaged one. History
walkers that skip a damaged old version catch exactly `DAMAGED`, so they all skip the same things.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import yamlio
from gitbake.contract.files import RECIPE_FILE
from gitbake.errors import ConfigError

if TYPE_CHECKING:
    from gitbake.contract import recipe as recipe_mod  # its parser loads pydantic: only when a recipe is read

# what a damaged version of a lineage file raises, wherever it is read: walkers skip exactly this
DAMAGED = ConfigError


def resolve(root: Path, rev: str) -> str:
    """The commit a model address names (a revision, a bake or model name: repo/address.py), or the one
    error for an address that names nothing."""
    from gitbake.repo.address import commit_of  # it walks history only when git cannot resolve `rev`

    return commit_of(root, rev)


def restore_fix(path: str, where: str | None) -> str:
    """How to get a good `path` back: from the index/HEAD for the working tree's copy, else from a
    commit before the damaged one (`where`)."""
    if where is None:
        return yamlio.written_by_gitbake(path).not_utf8
    return (
        f"gitbake writes {path}, and {where}'s copy is damaged: restore a good one from an earlier commit, e.g. "
        f"`git show {where}~1:{path} > {path}` (`git log --oneline -- {path}` lists the commits that changed it), "
        "and commit it"
    )


def _hints(path: str, where: str | None) -> yamlio.Hints:
    fix = restore_fix(path, where)
    return yamlio.Hints(too_big=fix, binary=fix, not_utf8=fix, directory=fix)


def display(path: str, where: str | None) -> str:
    return path if where is None else f"{where}:{path}"


def parse_bread(data: bytes, where: str | None) -> bread_mod.Bread:
    """A version of `.bread` (`where`: the revision it is from, None for the working tree), checked fully
    (its adapter chain included), or ConfigError naming `<where>:.bread`."""
    name = display(bread_mod.BREAD_FILE, where)
    try:
        b = bread_mod.parse(yamlio.decode_text(data, name, hints=_hints(bread_mod.BREAD_FILE, where)), name)
        b.parent_adapters  # noqa: B018 - parsed lazily elsewhere: a bad chain is a damaged file, found here
        return b
    except ConfigError as exc:
        raise _located(exc, bread_mod.BREAD_FILE, where) from None


def parse_recipe(data: bytes, where: str | None) -> recipe_mod.Recipe:
    """A version of `recipe.yml`, or ConfigError naming `<where>:recipe.yml`."""
    from gitbake.contract import recipe as recipe_mod

    name = display(RECIPE_FILE, where)
    try:
        return recipe_mod.parse(yamlio.decode_text(data, name, hints=_hints(RECIPE_FILE, where)), name)
    except ConfigError as exc:
        raise _located(exc, RECIPE_FILE, where) from None


def _located(exc: ConfigError, path: str, where: str | None) -> ConfigError:
    """The parsers' issues name the bare file and say to check it out again: name the revision, and
    the fix that works for it."""
    if where is None:
        return exc
    name, fix = display(path, where), restore_fix(path, where)
    return ConfigError([dataclasses.replace(i, file=name, fix=fix) for i in exc.issues])


def bread_at(root: Path, commit: str, where: str | None = None) -> bread_mod.Bread | None:
    """`commit`'s `.bread` (None when it has none); `where` names the revision in errors (default: the
    commit's short id)."""
    data = git.show(root, commit, bread_mod.BREAD_FILE)
    return parse_bread(data, where or commit[:12]) if data is not None else None


def recipe_at(root: Path, commit: str, where: str | None = None) -> recipe_mod.Recipe | None:
    data = git.show(root, commit, RECIPE_FILE)
    return parse_recipe(data, where or commit[:12]) if data is not None else None


def parse(path: str, data: bytes, where: str | None) -> bread_mod.Bread | recipe_mod.Recipe:
    """Either lineage file, by its name."""
    return parse_bread(data, where) if path == bread_mod.BREAD_FILE else parse_recipe(data, where)
