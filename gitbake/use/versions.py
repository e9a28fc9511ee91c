"""A model version to *use* (chat, serve, export, diff): a revision's model, named, with its adapters
materialised from the store, and the one loader of it. The ML stack is imported only when `load` runs,
so resolving a revision (and refusing a bad one) stays fast.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake.errors import UsageError
from gitbake.repo import modeldir
from gitbake.repo.ggufbase import converted_dirs
from gitbake.repo.modelversion import CarriesModel, ModelVersion
from gitbake.repo.repo import ModelRepo


@dataclass
class Version(CarriesModel):
    """A revision's model (`model`), as chat, serve, export and diff use it: named, from a commit."""

    rev: str
    commit: str
    name: str  # what serve and chat call it: the bake name, or the base model's
    model: ModelVersion
    checkpoint: int | None = None

    def parent(self) -> Version:
        """The model this version was baked on (the base model for a first bake)."""
        if not self.adapters:
            raise UsageError(
                f"{self.rev} is the base model {self.base_model}: it has no parent to compare with",
                "give two revisions: git bake diff REV1 REV2",
            )
        name = f"parent of {self.name}" if len(self.adapters) > 1 else self.base_model
        return Version(f"{self.rev} (parent model)", self.commit, name, self.model.parent())

    def as_json(self) -> dict[str, object]:
        return {
            "rev": self.rev,
            "commit": self.commit,
            "name": self.name,
            "base_model": self.base_model,
            "adapters": list(self.adapters),
            "model_name": self.model_name,
            "checkpoint": self.checkpoint,
        }


def resolve(repo: ModelRepo, rev: str, checkpoint: int | None = None) -> Version:
    """The model of `rev`; with `checkpoint`, the last bake's adapter as saved at that training step."""
    from gitbake.repo.history import version_at

    v = version_at(repo.root, rev)
    name = v.bake_name or v.base_model
    model = v.model
    if checkpoint is not None:
        saved = checkpoints(repo, rev)
        if not v.adapters or checkpoint not in saved:
            have = ", ".join(str(s) for s in sorted(saved)) or "none"
            raise UsageError(
                f"{rev}'s bake has no checkpoint at step {checkpoint} (saved: {have})",
                "bakes keep checkpoints when BAKE.checkpoint asks (e.g. `- save_every_n_steps: 50`)",
            )
        model = ModelVersion(model.base_model, model.adapters[:-1] + (saved[checkpoint],), model.model_name)
        name = f"{name}@{checkpoint}"
    return Version(rev, v.commit, name, model, checkpoint)


def checkpoints(repo: ModelRepo, rev: str) -> dict[int, str]:
    """step -> adapter manifest of the checkpoints the last bake of `rev` kept (recipe.yml records them)."""
    other = repo.at(rev)
    recipe = other.recipe
    if recipe is None:
        return {}
    step = next((s for s in reversed(recipe.steps) if s.action == "run_bake"), None)
    out: dict[int, str] = {}
    for k, digest in ((step.outputs or {}) if step else {}).items():
        if k.startswith("checkpoint_") and k[len("checkpoint_") :].isdigit():
            out[int(k[len("checkpoint_") :])] = digest
    return out


@contextmanager
def materialised(repo: ModelRepo, version: Version) -> Iterator[list[Path]]:
    """The version's adapter directories (linked from the store, fetched from the bake remote if needed),
    for as long as the block runs."""
    from gitbake.workflow.run import fetch_objects

    store = repo.store
    if modeldir.missing(store, version.model):
        fetch_objects(repo.root, store, set(version.adapters))
    with tempfile.TemporaryDirectory(dir=store.tmp, prefix="use-") as tmp:
        modeldir.materialise(store, version.model, Path(tmp) / "model", version.commit)
        yield [Path(tmp) / "model" / "adapters" / str(i) for i in range(len(version.adapters))]


def load(repo: ModelRepo, version: Version) -> Any:
    """The version's model: its base model with its adapter chain materialised from the store and merged."""
    from gitbake.engine.models import load as load_model

    with materialised(repo, version) as dirs:
        return load_model(version.base_model, dirs, root=repo.root, gguf=converted_dirs(repo.store))
