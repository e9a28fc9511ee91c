"""A model repository: its root and the three files of the contract, loaded once per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gitbake import bread as bread_mod
from gitbake import config, git
from gitbake import recipe as recipe_mod
from gitbake.errors import NotARepoError
from gitbake.lineage import Lineage
from gitbake.plan import Plan, build


@dataclass
class ModelRepo:
    root: Path
    bread: bread_mod.Bread | None
    _lineage: Lineage | None = field(default=None, init=False)
    _recipe: recipe_mod.Recipe | None = field(default=None, init=False)
    _recipe_read: bool = field(default=False, init=False)

    @property
    def recipe(self) -> recipe_mod.Recipe | None:
        # read on first use: most commands never need it, and status must stay fast
        if not self._recipe_read:
            self._recipe = recipe_mod.read(self.root)
            self._recipe_read = True
        return self._recipe

    @property
    def lineage(self) -> Lineage:
        if self._lineage is None:
            self._lineage = Lineage(self.root)
        return self._lineage

    @property
    def input_path(self) -> Path:
        return self.root / config.INPUT_FILE

    def load_input(self) -> config.LoadedInput:
        if not self.input_path.exists():
            return config.parse_input("", self.root)
        return config.load_input(self.input_path, self.root)

    def plan(self, loaded: config.LoadedInput | None = None) -> Plan:
        loaded = loaded or self.load_input()
        return build(loaded, self.root, self.bread, lambda: self.recipe, self.lineage)


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
