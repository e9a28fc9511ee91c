"""Prompts to token ids: the teacher context and the student context of a question.

teacher context = teacher messages (+ tools) + the question as a user turn + the generation prompt;
student context = the same with the student prompt. The tokenizer's chat template renders them, with
tools passed through (bgit drops them). An empty student prompt renders as *no* system turn: the
question alone. Some templates inject a default system prompt when there is none (Qwen2.5's "You are
Qwen..."); that is exactly what the model sees at inference without a prompt, so it is kept.
Tokenizers without a chat template fall back to a plain "role: content" layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, question: str | None
) -> list[int]:
    """Token ids of `messages` (+ the question as a user turn), ending with the assistant's prompt."""
    turns = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if question is not None:
        turns.append({"role": "user", "content": question})
    if getattr(tokenizer, "chat_template", None):
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if tools:
            kwargs["tools"] = list(tools)
        text = tokenizer.apply_chat_template(turns, **kwargs)
    else:
        text = "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
    # the template already placed every special token it wants; do not let the tokenizer add more
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def response_text(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=True))
