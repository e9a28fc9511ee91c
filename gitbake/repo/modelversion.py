"""The one type for "a commit's model": a base model plus an ordered adapter chain.

`.bake/model` is materialised from one (modeldir), `chat`/`serve`/`export`/`diff` load one (use.versions);
the views that add a revision, a name or history details carry one rather than repeating its fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelVersion:
    """The base model, then the adapters (store digests of their manifests) merged onto it in order."""

    base_model: str
    adapters: tuple[str, ...] = ()
    model_name: str | None = None  # bgit-style name of the last bake's model, None for the base model

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.base_model, *self.adapters)

    def parent(self) -> ModelVersion:
        """The model the last adapter was baked on (its name is not recorded here)."""
        return ModelVersion(self.base_model, self.adapters[:-1], None)

    def as_json(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "adapters": list(self.adapters), "model_name": self.model_name}


class CarriesModel:
    """For the types that carry a ModelVersion as `model` (a revision's version, a logged one): its
    fields read through, so callers need not know which view they hold."""

    model: ModelVersion

    @property
    def base_model(self) -> str:
        return self.model.base_model

    @property
    def adapters(self) -> tuple[str, ...]:
        return self.model.adapters

    @property
    def model_name(self) -> str | None:
        return self.model.model_name

    @property
    def chain(self) -> tuple[str, ...]:
        return self.model.chain
