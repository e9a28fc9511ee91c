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


def resolve(repo: ModelRepo, address: str, checkpoint: int | None = None) -> Version:
    """The model a model address names (repo/address.py: a revision, a bake or model name, optionally
    `@checkpoint-STEP`); `checkpoint` (chat's --checkpoint) is the same as that suffix."""
    from gitbake.repo import checkpoints
    from gitbake.repo.address import split_checkpoint
    from gitbake.repo.history import version_at

    rev, step = split_checkpoint(address)
    if checkpoint is not None and step not in (None, checkpoint):
        raise UsageError(
            f"{address} names checkpoint {step}, and --checkpoint {checkpoint} another",
            "give the checkpoint once",
        )
    step = checkpoint if checkpoint is not None else step
    v = version_at(repo.root, rev)
    name = v.bake_name or v.base_model
    model = v.model
    if step is not None:
        model = checkpoints.at_step(repo, rev, model, step)
        name = f"{name}@checkpoint-{step}"
    return Version(address, v.commit, name, model, step)


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
