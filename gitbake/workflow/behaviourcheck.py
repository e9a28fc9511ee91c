"""`git bake eval REV --expect REGEX --lang CODE [--min RATE] [--max RATE]`: the share of held-out answers
that show a behaviour, for the teacher (the parent with the prompt: the ceiling), the parent without the
prompt, and REV's model without the prompt. Greedy decoding, so the same model gives the same figures.

`--min` / `--max` turn the rate of REV's model into a verdict (exit 0 or 1) for `git bisect run`; a
revision with nothing to measure is bisect's "skip" (the CLI exits 125 on `heldout.Unmeasurable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gitbake.engine.behaviour import Behaviour, Rate, behaviour
from gitbake.errors import UsageError
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter
from gitbake.workflow.heldout import Heldout, Unmeasurable, heldout_of, loaded

BATCH = 16  # rows decoded together: on a CPU, 16 rows cost little more per step than one


@dataclass(frozen=True)
class Thresholds:
    """The verdict's bounds on REV's rate: `min <= rate <= max` passes (either may be absent)."""

    min: float | None = None
    max: float | None = None

    def passes(self, rate: float) -> bool:
        return (self.min is None or rate >= self.min) and (self.max is None or rate <= self.max)

    def describe(self) -> str:
        return " and ".join(
            ([f">= {self.min:g} (--min)"] if self.min is not None else [])
            + ([f"<= {self.max:g} (--max)"] if self.max is not None else [])
        )


@dataclass(frozen=True)
class Request:
    """A checked `eval` request: a behaviour to measure (None: the KL eval), bounds for a verdict, and
    whose held-out questions to ask (None: those of REV's own bake)."""

    behaviour: Behaviour | None
    thresholds: Thresholds | None = None
    questions_from: str | None = None


def request(
    expect: str | None,
    lang: str | None,
    min_rate: float | None = None,
    max_rate: float | None = None,
    questions_from: str | None = None,
) -> Request:
    """The options of `eval`, checked before any model is loaded (UsageError, exit 2, naming the fix)."""
    for name, value in (("--min", min_rate), ("--max", max_rate)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} {value:g}: a rate is between 0 and 1", f"for example {name} 0.8")
    if min_rate is not None and max_rate is not None and min_rate > max_rate:
        raise UsageError(f"--min {min_rate:g} is above --max {max_rate:g}: no rate passes", "swap them")
    thresholds = Thresholds(min_rate, max_rate) if min_rate is not None or max_rate is not None else None
    if expect is None and lang is None:
        if thresholds is not None:
            raise UsageError(
                "--min/--max judge a behaviour's rate, and no behaviour was given",
                "add --expect REGEX and/or --lang CODE, e.g. git bake eval --lang fr --min 0.8",
            )
        if questions_from is not None:
            raise UsageError(
                "--questions picks the questions of a behaviour check, and no behaviour was given",
                "add --expect REGEX and/or --lang CODE",
            )
        return Request(None)
    return Request(behaviour(expect, lang), thresholds, questions_from)


@dataclass(frozen=True)
class Answers:
    """One held-out question and the three greedy answers to it."""

    question: str
    teacher: str
    parent: str
    model: str


@dataclass(frozen=True)
class BehaviourRates:
    """What `git bake eval --expect/--lang` measured on REV's model."""

    behaviour: Behaviour
    rev: str
    bake: str | None
    adapter: str
    teacher: Rate  # the parent with the teacher prompt: the ceiling
    parent: Rate  # the parent without it
    model: Rate  # REV's model without it
    answers: list[Answers]
    max_tokens: int
    note: str | None

    @property
    def questions(self) -> int:
        return len(self.answers)

    def as_json(self) -> dict[str, Any]:
        return {
            "behaviour": self.behaviour.as_json(),
            "rev": self.rev,
            "bake": self.bake,
            "adapter": self.adapter,
            "questions": self.questions,
            "teacher": self.teacher.as_json(),
            "parent": self.parent.as_json(),
            "model": self.model.as_json(),
            "max_tokens": self.max_tokens,
            "note": self.note,
            "answers": [a.__dict__ for a in self.answers],
        }


def behaviour_rates(repo: ModelRepo, rev: str, req: Request, reporter: Reporter | None = None) -> BehaviourRates:
    """Greedy answers of the teacher, the parent and REV's model to the held-out questions of REV's bake
    (or of `req.questions_from`'s, so that every revision of a bisect is asked the same questions)."""
    wanted, questions_from = req.behaviour, req.questions_from
    if wanted is None:
        raise UsageError("no behaviour to check", "give --expect REGEX and/or --lang CODE")
    held = heldout_of(repo, rev)
    asked = held if questions_from is None else _questions_of(repo, questions_from)
    if asked.base != held.base:  # the questions are token ids: only the same tokenizer can read them
        raise UsageError(
            f"--questions {questions_from}: its model is based on {asked.base}, {rev}'s on {held.base}",
            "take the questions of a revision with the same base model",
        )
    from gitbake.engine.infer import complete  # the ML stack, once the revision is known to have a model

    with loaded(repo, held, reporter) as (parent, pm):
        inner, tok = pm.get_base_model(), parent.tokenizer  # the LoRA is injected: disable_adapter() switches it
        with pm.disable_adapter():
            teacher = complete(inner, tok, [q.teacher_ids for q in asked.questions], asked.max_tokens, BATCH)
            before = complete(inner, tok, [q.student_ids for q in asked.questions], asked.max_tokens, BATCH)
        after = complete(inner, tok, [q.student_ids for q in asked.questions], asked.max_tokens, BATCH)
    answers = [Answers(q.text, t, p, m) for q, t, p, m in zip(asked.questions, teacher, before, after)]
    return BehaviourRates(
        wanted,
        held.rev,
        held.bake,
        held.chain[-1],
        wanted.rate(teacher),
        wanted.rate(before),
        wanted.rate(after),
        answers,
        asked.max_tokens,
        asked.note,
    )


def _questions_of(repo: ModelRepo, rev: str) -> Heldout:
    """The held-out questions of `--questions REV`: a revision that cannot give them is a mistake in the
    command, the same for every commit a bisect tries, so it is not a "skip"."""
    try:
        return heldout_of(repo, rev)
    except Unmeasurable as exc:
        raise UsageError(f"--questions {rev}: {exc.message}", exc.hint) from None
