"""stim: make the training questions of a target (docs/engine.md).

Generators run in a canonical order (sorted by their canonical JSON, the order the stim key uses), so
their order in YAML changes nothing. A held-out share of the questions is kept apart for eval.
The output is a list of records, bgit-compatible (`unconditioned_stimulus` is the teacher's context,
`conditioned_stimulus` the student's) plus `id`, `question`, `generator` and `split`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake import hub
from gitbake.contract import config as cfg
from gitbake.contract import keys
from gitbake.errors import GitbakeError, UsageError

DEFAULT_TEMPLATE = """\
You are helping to test an AI assistant. The assistant has been given these instructions:

${prompt_u}

Write ${numq} diverse questions or requests a user might send to this assistant. Cover everyday
questions, tasks, and a few that test whether the assistant keeps to its instructions. Write one per
line as a numbered list (1. ..., 2. ...), with nothing else.
"""

# Questions that probe who the model is and how it speaks: the `persona` generator's built-in set.
PERSONA_QUESTIONS = [
    "Who are you?",
    "How would you describe yourself in three words?",
    "What do you care about most?",
    "Tell me a little about your personality.",
    "How do you usually talk to people?",
    "What is your favourite way to spend a day?",
    "What would your friends say about you?",
    "How do you handle disagreement?",
    "What makes you laugh?",
    "What is something you believe strongly?",
    "Describe your ideal conversation.",
    "What are you good at?",
    "What are you bad at?",
    "How do you react when someone is rude to you?",
    "What advice would you give your younger self?",
    "What is your opinion of modern technology?",
    "How do you explain something difficult to a beginner?",
    "What do you do when you don't know the answer?",
    "Tell me a short story about yourself.",
    "What's the most important lesson you've learned?",
    "How do you greet someone you've just met?",
    "What annoys you?",
    "How would you comfort a friend who is sad?",
    "What do you think about rules?",
    "Which three things would you take to a desert island?",
    "How do you make decisions?",
    "What does success mean to you?",
    "What do you think of small talk?",
    "Describe the weather today in your own words.",
    "Say goodbye to me the way you normally would.",
]

DATASET_FIELDS = {
    "squad": "question",
    "gsm8k": "question",
    "mmlu": "question",
    "hellaswag": "ctx",
    "code_contests": "description",
}
DATASET_CONFIGS = {"gsm8k": "main", "mmlu": "all"}


class StimError(GitbakeError):
    pass


@dataclass
class StimContext:
    root: Path  # the repository: from_file paths are relative to it
    teacher: dict[str, Any]  # resolved prompt configs
    student: dict[str, Any]
    templates: dict[int, str]  # generator index (in YAML order) -> template text
    question_files: dict[int, bytes]
    oneshot_writer: Callable[[cfg.OneshotGenerator, str], str] | None = None  # (generator, prompt) -> reply text


def canonical_order(generators: Sequence[Any]) -> list[int]:
    """Indices of `generators` in the order the stim key sorts them."""
    dumped = [keys.canonical_json(g.model_dump(mode="json")) for g in generators]
    return sorted(range(len(generators)), key=lambda i: dumped[i])


def make_stim(target: cfg.Target, ctx: StimContext) -> list[dict[str, Any]]:
    questions: list[tuple[str, str, bool]] = []  # (question, generator type, rollout_with_conditioned)
    for i in canonical_order(target.generators):
        gen = target.generators[i]
        for q in _generate(gen, i, ctx):
            questions.append((q, gen.type, gen.rollout_with_conditioned))
    questions = _dedupe(questions)
    if not questions:
        raise StimError(
            "the target's generators produced no questions", "add a `hardcoded` generator, or check the others"
        )
    heldout = _heldout_indices(len(questions), target.heldout_fraction)
    teacher_msgs = ctx.teacher.get("messages") or []
    student_msgs = ctx.student.get("messages") or []
    records = []
    for n, (q, gen_type, conditioned) in enumerate(questions):
        user = {"role": "user", "content": q}
        records.append(
            {
                "id": n,
                "question": q,
                "generator": gen_type,
                "split": "heldout" if n in heldout else "train",
                "rollout_with_conditioned": conditioned,
                "unconditioned_stimulus": {"messages": [*teacher_msgs, user]},
                "conditioned_stimulus": {"messages": [*student_msgs, user]},
            }
        )
    return records


def heldout_note(records: Sequence[dict[str, Any]]) -> str | None:
    if not any(r["split"] == "heldout" for r in records):
        return f"only {len(records)} question(s): none held out, so eval will use the training questions"
    return None


def _heldout_indices(n: int, fraction: float) -> set[int]:
    if n < 10 or fraction <= 0:
        return set()
    k = min(n - 1, max(1, round(n * fraction)))  # never hold out every question: something must train
    return set(random.Random(n).sample(range(n), k))


def _dedupe(items: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    seen, out = set(), []
    for item in items:
        norm = re.sub(r"\s+", " ", item[0]).strip().lower()
        if norm and norm not in seen:
            seen.add(norm)
            out.append(item)
    return out


def _sample(items: list[str], numq: int | None, seed: int | None) -> list[str]:
    if numq is None or numq >= len(items):
        return items
    return random.Random(seed if seed is not None else 0).sample(items, numq)


def _generate(gen: Any, index: int, ctx: StimContext) -> list[str]:
    if isinstance(gen, cfg.HardcodedGenerator):
        return list(gen.questions)
    if isinstance(gen, cfg.FromFileGenerator):
        return _sample(read_question_file(ctx.question_files[index], gen.path), gen.numq, gen.seed)
    if isinstance(gen, cfg.FromDatasetGenerator):
        return _from_dataset(gen, ctx.root)
    if isinstance(gen, cfg.PersonaGenerator):
        return _sample(list(PERSONA_QUESTIONS), gen.numq, gen.seed)
    if isinstance(gen, cfg.OneshotGenerator):
        return _oneshot(gen, index, ctx)
    return []  # `custom`: accepted with a warning at load time, produces nothing


def read_question_file(data: bytes, display: str) -> list[str]:
    """`.txt`: one question per line. `.jsonl`: one object per line with a `question` field."""
    cfg.check_question_file(data, display)  # the same checks `validate` runs, with line numbers
    text = data.decode("utf-8")
    if display.endswith(".txt"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [json.loads(line)["question"].strip() for line in text.splitlines() if line.strip()]


def _from_dataset(gen: cfg.FromDatasetGenerator, root: Path) -> list[str]:
    """A local .jsonl/.txt file (read here), a local dataset directory or data file, or a dataset on the
    Hugging Face Hub (`org/name`, or `org/name@REV` to pin a revision): loaded by `datasets`, which
    downloads it into the Hugging Face cache (HF_HOME, HF_ENDPOINT, HF_TOKEN; HF_HUB_OFFLINE: the cache only)."""
    local = (root / gen.dataset) if not Path(gen.dataset).is_absolute() else Path(gen.dataset)
    if local.is_file() and local.suffix in (".jsonl", ".txt"):
        return _sample(read_question_file(local.read_bytes(), gen.dataset), gen.numq, gen.seed)
    name, _, revision = gen.dataset.partition("@") if not local.exists() else (gen.dataset, "", "")
    field = gen.field or DATASET_FIELDS.get(name.split("/")[-1], "question")
    fix = (
        'save the questions as a .jsonl file ({"question": ...} per line) in the repository and set '
        "`dataset: path/to/file.jsonl`"
    )
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"dataset `{gen.dataset}` needs the `datasets` package, which is not installed",
            f"pip install 'gitbake[train]'; or {fix}",
        ) from None
    from datasets.exceptions import DatasetNotFoundError

    try:
        if local.exists():
            ds = (
                datasets.load_from_disk(str(local))
                if local.is_dir()
                else datasets.load_dataset(local.suffix.lstrip("."), data_files=str(local))
            )
        else:
            ds = datasets.load_dataset(
                name, DATASET_CONFIGS.get(name), revision=revision or None, token=os.environ.get("HF_TOKEN") or None
            )
        if hasattr(ds, "keys"):
            split = gen.split or ("train" if "train" in ds else next(iter(ds.keys())))
            if split not in ds:
                raise UsageError(
                    f"dataset `{gen.dataset}` has no split `{split}` (it has {', '.join(ds.keys())})",
                    "set `split:` to one of them",
                )
            ds = ds[split]
        if field not in ds.column_names:
            raise UsageError(
                f"dataset `{gen.dataset}` has no field `{field}` (it has {', '.join(ds.column_names)})",
                "set `field:` to the column that holds the questions",
            )
        column = list(ds[field])
    except UsageError:
        raise
    except DatasetNotFoundError as exc:
        token = "HF_TOKEN is set but does not give access" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
        raise UsageError(
            f"no dataset `{gen.dataset}` on {hub.endpoint()}, or it is private and {token} ({_short(exc)})",
            f"check the name (org/name); for a private dataset set HF_TOKEN; or {fix}",
        ) from None
    except Exception as exc:  # datasets raises many kinds (no network, offline and not cached, bad files)
        where = "HF_HUB_OFFLINE is set" if hub.offline() else f"{hub.endpoint()} could not provide it"
        raise UsageError(
            f"dataset `{gen.dataset}` could not be loaded: {where} ({type(exc).__name__}: {_short(exc)})",
            f"`hf download {name} --repo-type dataset` where there is network (then copy the cache here); or {fix}",
        ) from None
    items = [str(x).strip() for x in column if str(x).strip()]
    return _sample(items, gen.numq, gen.seed)


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


# ---------------------------------------------------------------------------------------- oneshot

_NUMBERED = re.compile(r"^\s*(?:\(?\d{1,4}[.):]|[-*•])\s+(.+?)\s*$")


def parse_questions(text: str) -> list[str]:
    """Questions from an LLM's reply: a numbered or bulleted list, else lines that end with `?`."""
    lines = text.splitlines()
    found = [m.group(1).strip().strip('"') for line in lines if (m := _NUMBERED.match(line))]
    if not found:
        found = [line.strip() for line in lines if line.strip().endswith("?")]
    return [q for q in found if len(q) > 3]


def prompt_text(prompt: dict[str, Any]) -> str:
    """The teacher prompt as text for `${prompt_u}`."""
    return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in prompt.get("messages") or [])


def _oneshot(gen: cfg.OneshotGenerator, index: int, ctx: StimContext) -> list[str]:
    import string

    template = ctx.templates.get(index, DEFAULT_TEMPLATE)
    prompt = string.Template(template).safe_substitute(numq=gen.numq, prompt_u=prompt_text(ctx.teacher))
    if ctx.oneshot_writer is None:
        raise StimError("no model is available to write oneshot_qs questions")
    questions: list[str] = []
    for _attempt in range(3):  # a model may write fewer than asked: ask again, keep the new ones
        reply = ctx.oneshot_writer(gen, prompt)
        for q in parse_questions(reply):
            if q not in questions:
                questions.append(q)
        if len(questions) >= gen.numq:
            break
    if not questions:
        raise StimError(
            f"the oneshot_qs model ({gen.model or 'the parent model'}) wrote no questions in 3 attempts",
            "use a model that follows instructions (model: openai:NAME with base_url), or a hardcoded / from_file "
            "generator",
        )
    return questions[: gen.numq]
