"""A model repository: its root and the three files of the contract, loaded once per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import identity
from gitbake.contract.files import INPUT_FILE
from gitbake.errors import NotARepoError
from gitbake.repo import limits, revfiles
from gitbake.repo.lineage import Lineage
from gitbake.repo.plan import Plan, build
from gitbake.repo.storepath import open_store
from gitbake.store.objects import Store

if TYPE_CHECKING:
    from gitbake.contract import (
        config,
    )  # loaded with the first plan: status may reuse a cached one
    from gitbake.contract import (
        recipe as recipe_mod,
    )


@dataclass
class ModelRepo:
    """The repository as its working tree has it, or (`rev` set) as a commit has it: a background bake
    works from the commit that triggered it, whatever the user does to the working tree meanwhile."""

    root: Path
    bread: bread_mod.Bread | None
    rev: str | None = None
    _lineage: Lineage | None = field(default=None, init=False)
    _store: Store | None = field(default=None, init=False)
    _recipe: recipe_mod.Recipe | None = field(default=None, init=False)
    _recipe_read: bool = field(default=False, init=False)
    _where: str | None = field(default=None, init=False)  # the revision as the user named it, for errors

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.root)
        return self._store

    @property
    def recipe(self) -> recipe_mod.Recipe | None:
        # read on first use: most commands never need it, and status must stay fast
        if not self._recipe_read:
            if self.rev is None:
                from gitbake.contract import recipe as recipe_mod

                self._recipe = recipe_mod.read(self.root)
            else:
                self._recipe = revfiles.recipe_at(self.root, self.rev, self._where)
            self._recipe_read = True
        return self._recipe

    @property
    def lineage(self) -> Lineage:
        if self._lineage is None:
            self._lineage = Lineage(self.root, self.rev)
        return self._lineage

    def at(self, rev: str) -> ModelRepo:
        """This repository as commit `rev` has it (its .bread, recipe.yml and history)."""
        commit = revfiles.resolve(self.root, rev)
        other = ModelRepo(self.root, revfiles.bread_at(self.root, commit, rev), commit)
        other._where = rev
        other._store = self._store
        return other

    def never_replaced(self) -> list[Path]:
        """What no command that replaces a directory may replace (gitbake.destination): the work tree, its
        .git (and the common dir of a worktree) and the store."""
        return [self.root, git.git_dir(self.root), git.common_dir(self.root), self.store.root]

    @property
    def input_path(self) -> Path:
        return self.root / INPUT_FILE

    def load_input(self) -> config.LoadedInput:
        from gitbake.contract import config

        if not self.input_path.exists():
            return config.parse_input("", self.root)
        return config.load_input(self.input_path, self.root)

    def plan(self, loaded: config.LoadedInput | None = None) -> Plan:
        loaded = loaded or self.load_input()
        base = self.bread.base_model if self.bread else None
        # a local model directory or GGUF is hashed through the store's stat cache (one stat per unchanged file)
        cache = self.store.statcache if base and identity.classify(base, self.root) in ("dir", "gguf") else None
        plan = build(loaded, self.root, self.bread, lambda: self.recipe, self.lineage, cache)
        # every command that plans (validate, status, the pre-commit hook, run) refuses what cannot run
        limits.check(loaded, plan, self.root)
        return plan


def open_repo(cwd: Path) -> ModelRepo:
    """The model repository containing `cwd`; exit code 3 when there is none."""
    root = git.find_root(cwd)
    if root is None:
        raise NotARepoError(
            f"not a git repository: {cwd}",
            "create a model repository with `git bake init DIR`, or cd into one",
        )
    bread = bread_mod.read(root)
    if bread is None:
        raise NotARepoError(
            f"{root} is a git repository but not a gitbake model repository (no .bread)",
            "run `git bake init` here to make it one",
        )
    return ModelRepo(root, bread)
