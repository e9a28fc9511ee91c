"""What can run: the bounds of an input.yml that need the model, and the total amount of work.

`config.py` bounds each field on its own. Some bounds depend on the base model (a LoRA rank wider than
the layers it adapts, a top-k over more tokens than the vocabulary, answers longer than the context), and
some on several fields at once (questions x answers per question x epochs x tokens). Both are checked
here, when the plan is built, so `validate`, `status`, the pre-commit hook and `run` refuse the same
files before any work starts. The model's shape comes from its `config.json` (tiny's is built in) and
prompt lengths from its `tokenizer.json` (tiny's is byte-level): nothing here imports torch. A model not
on this machine yet cannot be measured here; `pipeline.py` runs this same check again with the loaded
model's real shape, tokenizer and parameter count before any stage does work.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitbake import hub
from gitbake.contract import identity
from gitbake.errors import ConfigError, Issue
from gitbake.reads import note
from gitbake.repo.plan import Plan

if TYPE_CHECKING:
    from gitbake.contract.config import LoadedInput

# `gitbake/engine/tiny.py` CONFIG, without importing numpy; tests/func/test_status.py checks they agree
TINY_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "vocab_size": 262,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}

# The work bound. A bake costs about 8 x parameters floating-point operations per trained token (the student's
# forward and backward passes, the teacher's forward) and a rollout's about 2 x parameters per generated
# token. At REFERENCE_FLOPS, a large GPU kept busy, more than MAX_SECONDS is refused (a CPU is far slower).
# A model whose size is unknown gets MAX_TOKENS instead.
REFERENCE_FLOPS = 1e14  # the messages say 10^14
MAX_SECONDS = 7 * 24 * 3600
MAX_TOKENS = 10**11
_FIX_WORK = (
    "lower epochs, num_traj_per_stimulus, max_tokens, numq or total_trajectories (or split the work into several bakes)"
)


@dataclass(frozen=True)
class Shape:
    hidden_size: int | None
    vocab_size: int | None
    context: int | None
    parameters: int | None


# str -> its number of tokens, without special tokens or the chat template (a lower bound of a turn's length)
TokenCounter = Callable[[str], int]


def model_shape(base_model: str, root: Path) -> Shape | None:
    """The base model's widths, from its config.json; None when it is not on this machine yet."""
    conf = _model_config(base_model, root)
    return None if conf is None else shape_from_config(conf)


def shape_from_config(conf: dict[str, Any], parameters: int | None = None) -> Shape:
    """A model's shape from its config (config.json, or a loaded model's); `parameters`: the real count."""
    text = conf.get("text_config") if isinstance(conf.get("text_config"), dict) else None
    conf = {**conf, **(text or {})}  # a multimodal model's language part is what gets adapted

    def num(key: str) -> int | None:
        value = conf.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    h, inter, layers, vocab = num("hidden_size"), num("intermediate_size"), num("num_hidden_layers"), num("vocab_size")
    params = None
    if h and inter and layers and vocab:
        embeddings = vocab * h * (1 if conf.get("tie_word_embeddings", True) else 2)
        params = embeddings + layers * (4 * h * h + 3 * h * inter)  # attention + gated MLP; GQA makes it a bit less
    return Shape(h, vocab, num("max_position_embeddings"), parameters or params)


def _model_file(base_model: str, root: Path, name: str) -> Path | None:
    """Where a file of the model's snapshot is on this machine (it may not exist); None for tiny."""
    kind = identity.classify(base_model, root)
    found: Path | None = None
    if kind == "dir":
        p = Path(os.path.expanduser(base_model))
        found = (p if p.is_absolute() else root / p) / name
    elif kind == "hub":
        repo_id, _, rev = base_model.partition("@")
        commit = rev if hub.COMMIT.fullmatch(rev) else hub.cached_commit(repo_id, rev or "main")
        found = hub.snapshot(repo_id, commit) / name if commit else None
    if found is not None:
        note(found)  # the checks it feeds wait while it is missing, and change when it does
    return found


def _model_config(base_model: str, root: Path) -> dict[str, Any] | None:
    if identity.classify(base_model, root) == "tiny":
        return dict(TINY_SHAPE)
    path = _model_file(base_model, root, "config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None  # not downloaded yet, or unreadable: the model-dependent checks wait until it is
    return data if isinstance(data, dict) else None


def token_counter(base_model: str, root: Path) -> TokenCounter | None:
    """Counts tokens as the model's tokenizer does, without torch; None when it cannot be known here.
    tiny is byte-level without merges: one token per byte. Another model needs its tokenizer.json and the
    `tokenizers` library (loaded only on first use: most files have short prompts that need no count)."""
    if identity.classify(base_model, root) == "tiny":
        return lambda text: len(text.encode("utf-8"))
    path = _model_file(base_model, root, "tokenizer.json")
    if path is None or not path.is_file() or importlib.util.find_spec("tokenizers") is None:
        return None
    cache: list[Any] = []

    def count(text: str) -> int:
        if not cache:
            from tokenizers import Tokenizer

            try:
                cache.append(Tokenizer.from_file(str(path)))
            except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot read
                raise ConfigError(
                    [
                        Issue(
                            str(path),
                            None,
                            None,
                            "",
                            f"the base model's tokenizer cannot be read ({exc})",
                            "restore the model's tokenizer.json (download or export it again)",
                        )
                    ]
                ) from None
        return len(cache[0].encode(text, add_special_tokens=False).ids)

    return count


def measurable(plan: Plan, root: Path) -> bool:
    """Whether `check` could measure everything here, without loading the model."""
    base = plan.parent.base_model
    return model_shape(base, root) is not None and token_counter(base, root) is not None


def check(
    loaded: LoadedInput, plan: Plan, root: Path, shape: Shape | None = None, count: TokenCounter | None = None
) -> None:
    """Raise ConfigError, located, when the plan cannot run on its model or would run for weeks.
    `shape` and `count`: the loaded model's (pipeline.py); by default from its files on this machine."""
    if shape is None:
        shape = model_shape(plan.parent.base_model, root)
    if count is None:
        count = token_counter(plan.parent.base_model, root)
    issues = (
        _model_bounds(loaded, plan, shape) + _prompt_length(loaded, plan, shape, count) + _work(loaded, plan, shape)
    )
    if issues:
        raise ConfigError(issues)


def _prompt_text(config: dict[str, Any]) -> str:
    """A prompt's text as the model reads it, less the chat template's own tokens."""
    parts = [str(m.get("content") or "") for m in config.get("messages") or []]
    if config.get("tools"):
        parts.append(json.dumps(config["tools"]))
    return "".join(parts)


def _longest_question(loaded: LoadedInput, generators: list[dict[str, Any]]) -> str:
    """The longest question known before the stim stage (listed, or read from a file)."""
    longest = ""
    for i, g in enumerate(generators):
        candidates: list[str] = list(g.get("questions") or []) if g["type"] == "hardcoded" else []
        if g["type"] == "from_file":
            candidates = [line for line in loaded.question_files.get(i, b"").decode("utf-8", "replace").splitlines()]
        longest = max([longest, *candidates], key=len)
    return longest


def _prompt_length(loaded: LoadedInput, plan: Plan, shape: Shape | None, count: TokenCounter | None) -> list[Issue]:
    """A prompt plus its question plus the answer must fit the model's context, and a prompt must leave
    room for the answer in data.max_length: else the rollout runs for nothing and the bake has no data."""
    t = plan.target
    if t is None or count is None:
        return []
    doc, issues, name = loaded.doc, list[Issue](), plan.parent.base_model
    question = count(_longest_question(loaded, t.config["generators"]))
    max_tokens = t.config["max_tokens"]
    for role, ref in (("teacher", t.teacher), ("student", t.student)):
        prompt = plan.prompts.get(ref) if ref else None
        if prompt is None or not (text := _prompt_text(prompt.config)):
            continue
        where = ("PROMPT", ref, "messages") if ref in (loaded.config.PROMPT or {}) else ("TARGET",)
        tokens = count(text)
        if shape is not None and shape.context is not None and tokens + question + max_tokens > shape.context:
            issues.append(
                doc.issue(
                    where,
                    f"the {role} prompt `{ref}` is {tokens:,} tokens: with the longest question ({question:,}) "
                    f"and max_tokens {max_tokens:,} it is longer than {name}'s context ({shape.context:,} tokens)",
                    "shorten the prompt (or the questions), or lower TARGET.max_tokens",
                )
            )
        elif (
            plan.bake is not None
            and any(d.key == t.key for d in plan.bake.datasets)
            and tokens >= plan.bake.config["data"]["max_length"]
        ):
            limit = plan.bake.config["data"]["max_length"]
            issues.append(
                doc.issue(
                    where,
                    f"the {role} prompt `{ref}` is {tokens:,} tokens: data.max_length {limit:,} leaves no room "
                    "for an answer, so the bake would have nothing to train on",
                    f"shorten the prompt, or raise BAKE.data.max_length above {tokens + question:,}",
                )
            )
    return issues


def _model_bounds(loaded: LoadedInput, plan: Plan, shape: Shape | None) -> list[Issue]:
    if shape is None:
        return []
    doc, issues = loaded.doc, list[Issue]()
    name = plan.parent.base_model
    if plan.bake is not None and shape.hidden_size is not None:
        r = plan.bake.config["model"]["baked_adapter_config"]["r"]
        if r > shape.hidden_size:
            issues.append(
                doc.issue(
                    ("BAKE", "model", "baked_adapter_config", "r"),
                    f"LoRA rank {r} is wider than the layers of {name} (hidden size {shape.hidden_size})",
                    f"use a rank <= {shape.hidden_size}; 8 to 64 is usual",
                )
            )
    if plan.bake is not None and shape.vocab_size is not None:
        topk = plan.bake.config["data"].get("topk")
        if topk is not None and topk > shape.vocab_size:
            issues.append(
                doc.issue(
                    ("BAKE", "data", "topk"),
                    f"topk {topk} is more than the {shape.vocab_size:,} tokens of {name}'s vocabulary",
                    f"use a value <= {shape.vocab_size}, or drop `topk` for the full KL",
                )
            )
    if plan.target is not None and shape.context is not None:
        max_tokens = plan.target.config["max_tokens"]
        if max_tokens > shape.context:
            issues.append(
                doc.issue(
                    ("TARGET", "max_tokens"),
                    f"max_tokens {max_tokens} is longer than {name}'s context ({shape.context:,} tokens)",
                    f"use a value <= {shape.context}",
                )
            )
    return issues


def _questions(loaded: LoadedInput, generators: list[dict[str, Any]]) -> int:
    """How many questions the generators make, at most."""
    total = 0
    for i, g in enumerate(generators):
        numq = g.get("numq")
        if g["type"] == "hardcoded":
            total += len(g["questions"])
        elif g["type"] == "from_file":
            lines = sum(1 for line in loaded.question_files.get(i, b"").splitlines() if line.strip())
            total += min(lines, numq) if numq else lines
        elif isinstance(numq, int):
            total += numq
    return total


def _work(loaded: LoadedInput, plan: Plan, shape: Shape | None) -> list[Issue]:
    doc, issues = loaded.doc, list[Issue]()
    params = shape.parameters if shape is not None else None
    trajectories: int | None = None
    if plan.target is not None:
        t = plan.target.config
        trajectories = _questions(loaded, t["generators"]) * t["num_traj_per_stimulus"]
        tokens = trajectories * t["max_tokens"]
        problem = _too_much(tokens, 2 * params if params else None)
        if problem:
            where = (
                ("TARGET", "num_traj_per_stimulus")
                if "num_traj_per_stimulus" in (doc.data.get("TARGET") or {})
                else ("TARGET",)
            )
            issues.append(
                doc.issue(
                    where,
                    f"the rollout would generate about {tokens:.2g} tokens ({trajectories:,} answers x "
                    f"{t['max_tokens']:,} tokens): {problem}",
                    _FIX_WORK,
                )
            )
    if plan.bake is not None:
        b = plan.bake.config
        total = b.get("total_trajectories")
        # only this file's target is counted: a dataset from an earlier commit was bounded when it was made
        mine = (
            trajectories
            if plan.target is not None and all(d.key == plan.target.key for d in plan.bake.datasets)
            else None
        )
        known = [n for n in (total, mine) if n is not None]
        if known:
            n = min(known)
            length = (
                min(b["data"]["max_length"], plan.target.config["max_tokens"])
                if plan.target is not None
                else b["data"]["max_length"]
            )
            tokens = n * b["epochs"] * length
            problem = _too_much(tokens, 8 * params if params else None)
            if problem:
                where = ("BAKE", "epochs") if "epochs" in (doc.data.get("BAKE") or {}) else ("BAKE",)
                issues.append(
                    doc.issue(
                        where,
                        f"the bake would train on about {tokens:.2g} tokens ({n:,} trajectories x {b['epochs']:,} "
                        f"epochs x up to {length:,} tokens): {problem}",
                        _FIX_WORK,
                    )
                )
    return issues


def _too_much(tokens: int, flops_per_token: int | None) -> str | None:
    """Why `tokens` is too much work, with the time it would take; None when it is not."""
    if flops_per_token is not None:
        seconds = tokens * flops_per_token / REFERENCE_FLOPS
        if seconds > MAX_SECONDS:
            return (
                f"about {_duration(seconds)} even on a large GPU at 10^14 FLOP/s (far longer on a CPU); "
                f"the limit is {_duration(MAX_SECONDS)}"
            )
        return None
    if tokens > MAX_TOKENS:
        return f"the limit is {MAX_TOKENS:.0e} tokens (weeks of work on any machine)"
    return None


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:,.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{seconds:.0f} seconds"
