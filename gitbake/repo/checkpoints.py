"""A bake's kept checkpoints: the adapters BAKE.checkpoint saved during training, as recipe.yml records
them (`checkpoint_<step>` outputs of the `run_bake` step). A model address `REV@checkpoint-STEP` names
REV's model with its last adapter replaced by the one saved at STEP (repo/address.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gitbake.errors import UsageError
from gitbake.repo.modelversion import ModelVersion

if TYPE_CHECKING:
    from gitbake.repo.repo import ModelRepo

PREFIX = "checkpoint_"


def saved(repo: ModelRepo, rev: str) -> dict[int, str]:
    """step -> adapter manifest of the checkpoints the last bake of `rev` kept."""
    recipe = repo.at(rev).recipe
    if recipe is None:
        return {}
    step = next((s for s in reversed(recipe.steps) if s.action == "run_bake"), None)
    out: dict[int, str] = {}
    for k, digest in ((step.outputs or {}) if step else {}).items():
        if k.startswith(PREFIX) and k[len(PREFIX) :].isdigit():
            out[int(k[len(PREFIX) :])] = digest
    return out


def at_step(repo: ModelRepo, rev: str, model: ModelVersion, step: int) -> ModelVersion:
    """`model` (the model of `rev`) with its last adapter as saved at training step `step`."""
    kept = saved(repo, rev)
    if not model.adapters or step not in kept:
        have = ", ".join(str(s) for s in sorted(kept)) or "none"
        raise UsageError(
            f"{rev}'s bake has no checkpoint at step {step} (saved: {have})",
            "give a saved step; bakes keep checkpoints when BAKE.checkpoint asks (e.g. `- save_every_n_steps: 50`)",
        )
    return ModelVersion(model.base_model, model.adapters[:-1] + (kept[step],), model.model_name)
