"""How differently two models behave: per-token KL between their next-token distributions on the same
answers, and their (greedy) answers side by side. The questions are asked without any prompt: that is
how a baked model is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gitbake.engine.rollout import SamplingSettings, generate_batches
from gitbake.engine.templating import render, response_text


def _token_kl(model_a: Any, model_b: Any, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """KL(a ‖ b) at each answer position (row j predicts answer token j)."""
    ids = torch.tensor([prompt + answer])
    n = len(answer)
    with torch.no_grad():
        la = torch.log_softmax(model_a(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float(), -1)
        lb = torch.log_softmax(model_b(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float(), -1)
    return (la.exp() * (la - lb)).sum(-1)


def behaviour_diff(
    a: Any, b: Any, questions: Sequence[str], samples: int = 2, max_tokens: int = 64, seed: int = 0
) -> dict[str, Any]:
    """`a`, `b`: loaded models (sharing a tokenizer). KL(a ‖ b) on answers sampled from `a`."""
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
    rows: list[dict[str, Any]] = []
    total, tokens = 0.0, 0
    for qi, q in enumerate(questions):
        kls = []
        for k in range(samples):
            resp, _ = sampled[qi * samples + k]
            if resp:
                kls.append(_token_kl(a.model, b.model, prompts[qi], resp))
        if not kls:
            continue
        cat = torch.cat(kls)
        total += float(cat.sum())
        tokens += int(cat.numel())
        rows.append(
            {
                "question": q,
                "kl": float(cat.mean()),
                "tokens": int(cat.numel()),
                "answer_a": response_text(tok, answers_a[qi][0]),
                "answer_b": response_text(b.tokenizer, answers_b[qi][0]),
            }
        )
    rows.sort(key=lambda r: -float(r["kl"]))
    return {
        "mean_kl": total / tokens if tokens else 0.0,
        "tokens": tokens,
        "questions": rows,
        "samples_per_question": samples,
        "seed": seed,
    }
