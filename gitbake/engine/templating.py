"""Prompts to token ids: the teacher context and the student context of a question.

teacher context = teacher messages (+ tools) + the question as a user turn + the generation prompt;
student context = the same with the student prompt. The tokenizer's chat template renders them, with
tools passed through (bgit drops them). An empty student prompt renders as *no* system turn: the
question alone. Some templates inject a default system prompt when there is none (Qwen2.5's "You are
Qwen..."); that is exactly what the model sees at inference without a prompt, so it is kept.
Tokenizers without a chat template fall back to a plain "role: content" layout, after the BOS token
the tokenizer puts before any text (a base model such as Gemma 3's GGUF, which ships no template, writes
noise without it). Such a model has no end-of-turn token either, and goes on to write the next "user:"
turn itself: `with_turn_stops` ends its answers there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gitbake.engine.sampling import Sampling

# the plain layout: each turn is BEFORE + role + BETWEEN + content + AFTER, then the generation prompt
PLAIN_TURN = ("", ": ", "\n")
PLAIN_PROMPT = "assistant:"
FALLBACK_TURN_STOP = "\nuser:"  # where the plain layout's next turn starts


def render(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, question: str | None
) -> list[int]:
    """Token ids of `messages` (+ the question as a user turn), ending with the assistant's prompt."""
    turns = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if question is not None:
        turns.append({"role": "user", "content": question})
    if not getattr(tokenizer, "chat_template", None):
        before, between, after = PLAIN_TURN
        text = "".join(before + t["role"] + between + t["content"] + after for t in turns) + PLAIN_PROMPT
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tokenizer.bos_token_id, *ids] if adds_bos(tokenizer) else ids
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if tools:
        kwargs["tools"] = list(tools)
    text = tokenizer.apply_chat_template(turns, **kwargs)
    # the template already placed every special token it wants; do not let the tokenizer add more
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def with_turn_stops(tokenizer: Any, sampling: Sampling) -> Sampling:
    """`sampling`, ending answers where the plain layout's next turn starts when the tokenizer has no chat
    template (its prompts are rendered in that layout); unchanged otherwise."""
    if getattr(tokenizer, "chat_template", None) or FALLBACK_TURN_STOP in sampling.stop:
        return sampling
    return dataclasses.replace(sampling, stop=(*sampling.stop, FALLBACK_TURN_STOP))


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token before a text it encodes."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def adds_eos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its EOS token after a text it encodes."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id


def response_text(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=True))
