"""`git bake diff REV1 [REV2]`: how two model versions differ in *behaviour*, not in bytes.

Mean per-token KL(REV1's model ‖ REV2's model) on answers REV1's model gives to the held-out questions of
both lineages (or `--questions FILE`), the questions where they differ most, and both answers side by
side. With one revision, it is compared with the model it was baked on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake.contract.identity import unpinned
from gitbake.engine.compare import QuestionDiff
from gitbake.errors import UsageError
from gitbake.repo.repo import ModelRepo
from gitbake.use.versions import Version, load, resolve

MAX_QUESTIONS = 32


def read_questions(path: Path) -> list[str]:
    """A .txt file (one question per line) or .jsonl (strings, or objects with `question`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read --questions {path}: {exc}", "give a UTF-8 .txt (one per line) or .jsonl file"
        ) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except ValueError:
                raise UsageError(
                    f"{path}:{n}: not valid JSON", "each line of a .jsonl file is one JSON value"
                ) from None
            q = item.get("question") if isinstance(item, dict) else item
            if not isinstance(q, str):
                raise UsageError(f"{path}:{n}: no question", 'write "text" or {"question": "text"}')
            out.append(q)
        else:
            out.append(line.strip())
    if not out:
        raise UsageError(f"{path} has no questions", "one question per line")
    return out


def lineage_questions(repo: ModelRepo, versions: list[Version]) -> tuple[list[str], str | None]:
    """Held-out questions of the targets the versions' recipes record (training ones if none are held out)."""
    from gitbake.workflow.pipeline import rollout_manifest, split_rollouts

    store = repo.store
    manifests = []
    for v in versions:
        recipe = repo.at(v.commit).recipe
        for step in recipe.steps if recipe else []:
            if step.action == "create_target" and step.key:
                manifest = rollout_manifest(store, recipe, step.key)
                if manifest is not None:
                    manifests.append(manifest)
    held, training = split_rollouts(store, manifests)
    heldout = [rec["question"] for rec in held]
    pick = list(dict.fromkeys(heldout)) or list(dict.fromkeys(rec["question"] for rec in training))
    note = None if heldout else "no held-out questions in these lineages: compared on training questions"
    if not pick:
        raise UsageError(
            "no questions to compare on: these lineages record no rollouts in the store",
            "give --questions FILE, or `git bake pull` the revisions first",
        )
    return pick[:MAX_QUESTIONS], note


@dataclass(frozen=True)
class Diffed:
    """What `git bake diff` measured: KL(a ‖ b) overall and for the `top` questions, largest first."""

    mean_kl: float
    tokens: int
    questions: tuple[QuestionDiff, ...]
    samples_per_question: int
    seed: int
    a: Version
    b: Version
    asked: int  # how many questions were compared
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mean_kl": self.mean_kl,
            "tokens": self.tokens,
            "questions": [q.as_json() for q in self.questions],
            "samples_per_question": self.samples_per_question,
            "seed": self.seed,
            "a": self.a.as_json(),
            "b": self.b.as_json(),
            "asked": self.asked,
        }
        if self.note:
            out["note"] = self.note
        return out


def diff(
    repo: ModelRepo, rev1: str, rev2: str | None, questions_file: Path | None, samples: int, max_tokens: int, top: int
) -> Diffed:
    a = resolve(repo, rev1)
    b = resolve(repo, rev2) if rev2 else a.parent()
    if rev2 is None and b.adapters:  # name the parent by its own bake
        recipe = repo.at(a.commit).recipe
        names = {x.adapter: x.bake_name for x in (recipe.resources.bakes if recipe else []) if x.adapter}
        b.name = names.get(b.adapters[-1], b.name)
    if unpinned(a.base_model) != unpinned(b.base_model):  # two commits of one hub model share a tokenizer
        raise UsageError(
            f"{rev1} and {rev2} are baked on different base models ({a.base_model}, {b.base_model})",
            "compare versions of one lineage: their answers are not token-aligned otherwise",
        )
    if questions_file is not None:
        questions, note = read_questions(questions_file), None
    else:
        questions, note = lineage_questions(repo, [a] + ([b] if rev2 else []))
    from gitbake.engine.compare import behaviour_diff  # the ML stack, once the input is known to be good

    ma, mb = load(repo, a), load(repo, b)
    result = behaviour_diff(ma, mb, questions, samples, max_tokens)
    rows = result.questions[: max(top, 0)] if top >= 0 else result.questions
    return Diffed(
        result.mean_kl,
        result.tokens,
        rows,
        result.samples_per_question,
        result.seed,
        a,
        b,
        len(questions),
        note,
    )
