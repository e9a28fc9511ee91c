"""How differently two models behave: per-token KL between their next-token distributions on the same
answers, and their (greedy) answers side by side. The questions are asked without any prompt: that is
how a baked model is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The result types are read by `use.diff` before any model is loaded (a bad revision is refused at once):
# this module imports torch and the rest of the engine only when it measures.


@dataclass(frozen=True)
class QuestionDiff:
    """One question's answers from both models and how far apart they are (KL, nats/token)."""

    question: str
    kl: float
    tokens: int
    answer_a: str
    answer_b: str

    def as_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "kl": self.kl,
            "tokens": self.tokens,
            "answer_a": self.answer_a,
            "answer_b": self.answer_b,
        }


@dataclass(frozen=True)
class BehaviourDiff:
    """KL(a ‖ b) over every sampled answer token, and each question's row, largest KL first."""

    mean_kl: float
    tokens: int
    questions: tuple[QuestionDiff, ...]
    samples_per_question: int
    seed: int


def _token_kl(model_a: Any, model_b: Any, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """KL(a ‖ b) at each answer position (row j predicts answer token j)."""
    import torch

    ids = torch.tensor([prompt + answer])
    n = len(answer)
    with torch.no_grad():  # each model reads the ids on its own device (a GPU's, or the CPU)
        la = model_a(input_ids=ids.to(model_a.device)).logits[0, len(prompt) - 1 : len(prompt) - 1 + n]
        lb = model_b(input_ids=ids.to(model_b.device)).logits[0, len(prompt) - 1 : len(prompt) - 1 + n]
        la, lb = torch.log_softmax(la.float().cpu(), -1), torch.log_softmax(lb.float().cpu(), -1)
    return (la.exp() * (la - lb)).sum(-1)


def behaviour_diff(
    a: Any, b: Any, questions: Sequence[str], samples: int = 2, max_tokens: int = 64, seed: int = 0
) -> BehaviourDiff:
    """`a`, `b`: loaded models (sharing a tokenizer). KL(a ‖ b) on answers sampled from `a`."""
    import torch

    from gitbake.engine.rollout import SamplingSettings, generate_batches
    from gitbake.engine.templating import render, response_text

    tok = a.tokenizer
    prompts = [render(tok, [], None, q) for q in questions]
    sampled = generate_batches(
        a.model,
        tok,
        [p for p in prompts for _ in range(samples)],
        SamplingSettings(temperature=1.0, max_tokens=max_tokens, seed=seed, batch_size=16),
    )
    greedy = SamplingSettings(temperature=0.0, max_tokens=max_tokens, seed=seed, batch_size=16)
    answers_a = generate_batches(a.model, tok, prompts, greedy)
    answers_b = generate_batches(b.model, b.tokenizer, prompts, greedy)
    rows: list[QuestionDiff] = []
    total, tokens = 0.0, 0
    for qi, q in enumerate(questions):
        kls = []
        for k in range(samples):
            resp = sampled[qi * samples + k].ids
            if resp:
                kls.append(_token_kl(a.model, b.model, prompts[qi], resp))
        if not kls:
            continue
        cat = torch.cat(kls)
        total += float(cat.sum())
        tokens += int(cat.numel())
        rows.append(
            QuestionDiff(
                q,
                float(cat.mean()),
                int(cat.numel()),
                response_text(tok, answers_a[qi].ids),
                response_text(b.tokenizer, answers_b[qi].ids),
            )
        )
    rows.sort(key=lambda r: -r.kl)
    return BehaviourDiff(total / tokens if tokens else 0.0, tokens, tuple(rows), samples, seed)
