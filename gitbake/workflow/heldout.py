"""What `git bake eval REV` measures on: REV's model (the base model and its adapter chain, the last one
kept apart so that disabling it gives the parent) and the held-out questions of the bake that made it.

The questions come from the one collection of held-out questions (`pipeline.split_rollouts`). When REV's
model cannot be measured here — nothing baked by then, or its objects are not in this store — the error
is an `Unmeasurable`, so that `eval --min` can answer git bisect's "skip" (exit 125) for that commit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitbake.errors import GitbakeError, UsageError
from gitbake.repo.ggufbase import converted_dirs
from gitbake.repo.modelversion import ModelVersion
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter
from gitbake.workflow.pipeline import rollout_manifest, split_rollouts

MAX_TOKENS = 256  # eval's cap on an answer's length, whatever the rollouts allowed


class Unmeasurable(GitbakeError):
    """REV has no model this machine can measure (a commit bisect should skip rather than judge)."""


class NotBaked(Unmeasurable, UsageError):
    """Nothing baked by REV (or a bake this gitbake cannot read): exit 2 for a plain `eval`."""


class NotLocal(Unmeasurable):
    """REV's adapters or rollouts are not in the local store."""


@dataclass(frozen=True)
class Question:
    text: str
    teacher_ids: list[int]  # the question under the teacher prompt
    student_ids: list[int]  # under the student prompt (usually none): what the baked model is asked
    samples: list[list[int]] = field(default_factory=list)  # its held-out rollouts that are teacher samples


@dataclass(frozen=True)
class Heldout:
    """REV's model and the held-out questions of its last bake."""

    rev: str  # the commit
    base: str
    chain: list[str]  # adapter digests, oldest first; the last is REV's bake
    bake: str | None
    key: str | None
    questions: list[Question]
    max_tokens: int  # the longest rollout answer, capped at MAX_TOKENS
    note: str | None  # "no held-out questions: ..." when the bake had too few to hold any out
    bake_config: dict[str, Any] = field(default_factory=dict)  # the bake's resolved BAKE, from the recipe
    rollout_keys: list[str] = field(default_factory=list)  # the keys of the rollouts it trained on


def heldout_of(repo: ModelRepo, address: str) -> Heldout:
    """The held-out questions of the bake behind `address` (REV@checkpoint-STEP: that checkpoint's model)."""
    from gitbake.repo import checkpoints
    from gitbake.repo.address import split_checkpoint

    rev, saved_at = split_checkpoint(address)
    other = repo.at(rev)
    chain = other.bread.parent_adapters if other.bread else None
    if chain and saved_at is not None:
        chain = list(checkpoints.at_step(repo, rev, ModelVersion("", tuple(chain)), saved_at).adapters)
    if not chain:
        raise NotBaked(
            f"{rev} has no baked model (nothing has been baked by then)", "pick a bake commit: see `git bake log`"
        )
    recipe = other.recipe
    step = next((s for s in reversed(recipe.steps) if s.action == "create_bake"), None) if recipe else None
    datasets = (step.model_extra or {}).get("datasets") if step else None
    if step is None or not datasets:
        raise NotBaked(
            f"the recipe.yml of {rev} does not record its bake's datasets", "re-bake it with this gitbake version"
        )
    store = repo.store
    missing = [a for a in chain if not store.has(a)]
    if missing:
        raise NotLocal(
            f"{len(missing)} adapter(s) of {rev} are not in the local store ({missing[0][:12]}...)",
            "fetch them: git bake pull " + rev,
        )
    manifests = []
    for d in datasets:
        manifest = rollout_manifest(store, recipe, d["key"])
        if manifest is None:
            raise NotLocal(f"the rollouts of {d['target']} are not in the store", "fetch them: git bake pull " + rev)
        manifests.append(manifest)
    heldout, training = split_rollouts(store, manifests)
    max_tokens = max([1] + [len(rec["response_ids"]) for rec in heldout + training])
    note = None
    if not heldout:  # as the bake itself did: too few questions to hold any out
        heldout, note = training, "no held-out questions: evaluated on the training questions"
    unique: dict[tuple[tuple[int, ...], tuple[int, ...]], Question] = {}
    for rec in heldout:  # each question has num_traj_per_stimulus rollouts: once each
        ids = (tuple(rec["teacher_ids"]), tuple(rec["student_ids"]))
        q = unique.setdefault(ids, Question(str(rec.get("question", "")), rec["teacher_ids"], rec["student_ids"]))
        if rec.get("teacher_sample") and note is None:  # trained-on answers (no held-out questions) are not taken
            q.samples.append(rec["response_ids"])
    base = (other.bread.pinned_base_model if other.bread else None) or "tiny"
    return Heldout(
        other.rev or rev,
        base,
        list(chain),
        step.resource_name,
        step.key,
        list(unique.values()),
        min(max_tokens, MAX_TOKENS),
        note,
        step.config if isinstance(step.config, dict) else {},
        [d["key"] for d in datasets],
    )


@contextmanager
def loaded(
    repo: ModelRepo, held: Heldout, reporter: Reporter | None = None, as_baked: bool = False
) -> Iterator[tuple[Any, Any]]:
    """(the parent as `engine.models.load` returns it, the PEFT model of REV): the parent with REV's
    adapter kept separate, so `disable_adapter()` is the parent and the teacher (ML stack imported here).
    A GGUF base model loads from its conversion in the store. `as_baked`: in the dtype and attention the
    bake ran with, so that its eval comes out again (the teacher's samples are drawn from the model:
    another dtype draws others); else as chat and serve load it."""
    from gitbake.engine.models import bake_load_options, load, with_adapter

    with tempfile.TemporaryDirectory(dir=repo.store.tmp) as tmp:
        dirs = []
        for i, digest in enumerate(held.chain):
            dest = Path(tmp) / f"{i:03d}"
            repo.store.materialise_tree(digest, dest)
            dirs.append(dest)
        reporter = reporter or Reporter()
        reporter.say(f"loading {held.base} + {len(held.chain)} adapter(s)")
        options = bake_load_options(held.bake_config) if as_baked else {}
        parent = load(held.base, dirs[:-1], root=repo.root, gguf=converted_dirs(repo.store, reporter), **options)
        yield parent, with_adapter(parent, dirs[-1])
