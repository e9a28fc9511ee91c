"""The lineage: what earlier commits of this branch baked, read from `.bread` and `recipe.yml` history.

Targets are found by their hashed name or by their plain name (the newest one wins), which fixes bgit's
"fix target name" pain (a bgit bug): a bake may reuse a target from any earlier commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import keys
from gitbake.contract.files import RECIPE_FILE
from gitbake.repo import revfiles

if TYPE_CHECKING:
    from gitbake.contract import recipe as recipe_mod


@dataclass
class KnownTarget:
    name: str  # hashed name, e.g. yoda_target_3f2a9c1d04be (ours) or ..._<16 hex> (bgit's)
    plain: str
    key: str | None  # full rollout key when we made it; bgit's sha256 otherwise
    commit: str | None  # newest commit that records it; None for the working tree
    source: str  # ".bread", "recipe.yml" or "input.yml"
    config: dict[str, Any] | None = None
    stim_key: str | None = None

    @property
    def foreign(self) -> bool:
        """Made by bgit in Bread's cloud: its questions and answers are not on this machine."""
        split = keys.split_name(self.name)
        return split is not None and len(split[1]) == 16

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plain": self.plain,
            "key": self.key,
            "stim_key": self.stim_key,
            "commit": self.commit,
            "source": self.source,
            "foreign": self.foreign,
            "config": self.config,
        }


@dataclass
class Lineage:
    root: Path
    rev: str | None = None  # None: the working tree's files and HEAD's history; else that commit's history only
    _targets: list[KnownTarget] | None = field(default=None, init=False)

    def targets(self) -> list[KnownTarget]:
        """Every target recorded in the working tree's and the history's .bread / recipe.yml, newest first."""
        if self._targets is None:
            found: dict[str, KnownTarget] = {}
            for t in self._scan():
                prev = found.get(t.name)
                if prev is None:
                    found[t.name] = t
                elif prev.config is None and t.config is not None:
                    prev.config, prev.stim_key = t.config, t.stim_key
                    prev.key = prev.key or t.key
            self._targets = list(found.values())
        return self._targets

    def find_target(self, ref: str) -> list[KnownTarget]:
        """Targets matching `ref` by hashed name (exact) or plain name (newest first)."""
        exact = [t for t in self.targets() if t.name == ref]
        if exact:
            return exact
        return [t for t in self.targets() if t.plain == ref]

    def _scan(self) -> Iterable[KnownTarget]:
        bread_file, recipe_file = bread_mod.BREAD_FILE, RECIPE_FILE
        wt: list[tuple[str | None, str, bytes]] = []
        for name in (bread_file, recipe_file) if self.rev is None else ():
            p = self.root / name
            if p.is_file():
                wt.append((None, name, p.read_bytes()))
        versions = [
            (v.commit, v.path, v.data) for v in git.history(self.root, [bread_file, recipe_file], self.rev or "HEAD")
        ]
        for commit, path, data in wt + versions:
            try:
                parsed = revfiles.parse(path, data, commit[:12] if commit else None)
            except revfiles.DAMAGED:
                continue  # a damaged historic file must not hide the rest of the lineage
            if isinstance(parsed, bread_mod.Bread):
                yield from _from_bread(parsed, commit)
            else:
                yield from _from_recipe(parsed, commit)


def _plain(name: str) -> str:
    split = keys.split_name(name)
    return split[0] if split else name


def _from_bread(b: bread_mod.Bread, commit: str | None) -> Iterable[KnownTarget]:
    t = b.target
    if t is not None and t.name:
        yield KnownTarget(t.name, _plain(t.name), t.hash, commit, ".bread")


def _from_recipe(r: recipe_mod.Recipe, commit: str | None) -> Iterable[KnownTarget]:
    for step in r.targets_defined():
        if step.resource_name:
            stim = step.model_extra.get("stim_key") if step.model_extra else None
            yield KnownTarget(
                step.resource_name, _plain(step.resource_name), step.key, commit, "recipe.yml", step.config, stim
            )
    for name in r.resources.targets:
        yield KnownTarget(name, _plain(name), None, commit, "recipe.yml")


@dataclass
class StaleBake:
    """A bake commit whose model was not baked on its parent's model (a rebase replayed it elsewhere)."""

    commit: str
    left_out: list[str]  # adapters of the parent's model that this commit's model does not have


def stale_bakes(root: Path, commits: Iterable[str]) -> list[StaleBake]:
    """The bake commits among `commits` that are not one bake on top of their parent's model: a bake
    commit's adapter chain is its parent's chain plus the one adapter it trained, or its model is not
    what its place in the history says."""
    from gitbake.contract.recipe import TRAILER

    out = []
    for commit in commits:
        if f"\n{TRAILER}: " not in git.commit_message(root, commit):
            continue
        parents = git.parents(root, commit)
        mine, theirs = _chain(root, commit), _chain(root, parents[0]) if parents else []
        if mine is None or theirs is None or (len(mine) == len(theirs) + 1 and mine[:-1] == theirs):
            continue  # a model we cannot read (bgit's cloud) is not ours to judge
        out.append(StaleBake(commit, [a for a in theirs if a not in mine]))
    return out


def _chain(root: Path, rev: str) -> list[str] | None:
    try:
        b = revfiles.bread_at(root, rev)
    except revfiles.DAMAGED:
        return None
    return b.parent_adapters if b is not None else []
