"""rollout: sample the teacher's answers to every question, batched (docs/engine.md).

Prompts are tokenised once (teacher and student contexts), expanded `num_traj_per_stimulus` times,
sorted by length so a batch pads little, left-padded, and generated with the KV cache. Each batch is
seeded from the rollout seed and its index, so a CPU run is reproducible. Token ids of the prompts and
the response are kept, so the bake never re-tokenises (baking-method.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gitbake.engine.templating import render, response_text
from gitbake.progress import Progress
from gitbake.reporter import Reporter


@dataclass
class SamplingSettings:
    num_traj_per_stimulus: int = 1
    temperature: float = 1.0
    max_tokens: int = 256
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 8


def contexts(
    tokenizer: Any, stim: Sequence[dict[str, Any]], teacher: dict[str, Any], student: dict[str, Any]
) -> list[tuple[list[int], list[int]]]:
    """(teacher ids, student ids) of every stim record."""
    out = []
    for rec in stim:
        q = rec["question"]
        t = render(tokenizer, teacher.get("messages") or [], teacher.get("tools"), q)
        s = render(tokenizer, student.get("messages") or [], student.get("tools"), q)
        out.append((t, s))
    return out


def generate_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    progress: Progress | None = None,
) -> list[tuple[list[int], bool]]:
    """Sample one response per prompt: (response ids, ended with EOS). Batched, left-padded."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    # the model's own stop tokens (chat models often have several, e.g. <end_of_turn>), else the tokenizer's
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []) | (
        {eos} if eos is not None else set()
    )
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_tokens,
        "pad_token_id": pad,
        "eos_token_id": sorted(stops) if stops else None,
    }
    if settings.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=settings.temperature, top_k=0)
    else:
        gen_kwargs.update(do_sample=False)
    gen_kwargs.update(settings.extra_kwargs)
    for b, start in enumerate(range(0, len(order), settings.batch_size)):
        idx = order[start : start + settings.batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = list(prompts[i])
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        torch.manual_seed(settings.seed * 1_000_003 + b)
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
        for row, i in enumerate(idx):
            resp = out[row, width:].tolist()
            finished = False
            ends = [k for k, tok in enumerate(resp) if tok in stops]
            if ends:
                resp = resp[: ends[0] + 1]  # keep the stop token: the student must learn to stop
                finished = True
            else:
                while resp and resp[-1] == pad:
                    resp.pop()
            results[i] = (resp, finished)
        if progress:
            progress.update(len(idx))
    return results


def make_rollouts(
    model: Any,
    tokenizer: Any,
    stim: Sequence[dict[str, Any]],
    teacher: dict[str, Any],
    student: dict[str, Any],
    settings: SamplingSettings,
    label: str = "rollout",
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    ctx = contexts(tokenizer, stim, teacher, student)
    prompts, owners = [], []
    for rec, (t_ids, s_ids) in zip(stim, ctx):
        # rollout_with_conditioned: the answer is sampled from the student's context (bgit.md §5)
        source = s_ids if rec.get("rollout_with_conditioned") else t_ids
        for k in range(settings.num_traj_per_stimulus):
            prompts.append(source)
            owners.append((rec, k, t_ids, s_ids))
    progress = (reporter or Reporter()).progress(label, len(prompts), unit="traj")
    from gitbake.engine import vllm_backend

    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    # vLLM loads weights from disk: only for an unmodified model (a merged parent exists only in memory)
    if path and not getattr(model, "_gitbake_merged", False) and vllm_backend.wanted():
        responses = vllm_backend.generate(
            path,
            prompts,
            settings.temperature,
            settings.max_tokens,
            settings.extra_kwargs,
            settings.seed,
            tokenizer.eos_token_id,
        )
    else:
        responses = generate_batches(model, tokenizer, prompts, settings, progress)
    out = []
    for n, ((rec, k, t_ids, s_ids), (resp, finished)) in enumerate(zip(owners, responses)):
        out.append(
            {
                "id": n,
                "stimulus_id": rec["id"],
                "traj": k,
                "split": rec["split"],
                "question": rec["question"],
                "teacher_ids": t_ids,
                "student_ids": s_ids,
                "response_ids": resp,
                "response": response_text(tokenizer, resp),
                "finished": finished,
                "temperature": settings.temperature,
            }
        )
    return out
