"""Optional rollout backend: vLLM, when it is installed and a CUDA GPU is present.

vLLM batches and pages the KV cache far better than `generate` on a GPU. It is chosen automatically
when available (`GITBAKE_ROLLOUT_BACKEND=hf` forces transformers, `=vllm` requires vLLM). Sampling
uses the same settings and a seed derived from the rollout key, so a rerun reproduces its samples on
the same hardware. The model is given by path (tiny, a directory or the hub cache snapshot): vLLM loads
it offline like transformers does.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from gitbake.errors import UsageError


def wanted() -> bool:
    """Whether to use vLLM for this rollout."""
    choice = os.environ.get("GITBAKE_ROLLOUT_BACKEND", "auto").lower()
    if choice == "hf":
        return False
    available = importlib.util.find_spec("vllm") is not None and _cuda()
    if choice == "vllm" and not available:
        raise UsageError(
            "GITBAKE_ROLLOUT_BACKEND=vllm, but vLLM is not installed or no CUDA GPU is present",
            "pip install vllm on a GPU machine, or unset GITBAKE_ROLLOUT_BACKEND",
        )
    return available


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def generate(
    model_path: str,
    prompts: Sequence[Sequence[int]],
    temperature: float,
    max_tokens: int,
    extra: dict[str, Any],
    seed: int,
    eos_token_id: int | None,
) -> list[tuple[list[int], bool]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=seed, enforce_eager=False)
    # one seed per request: with a shared seed, the trajectories of one question would all be the same
    params = [
        SamplingParams(
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed * 1_000_003 + i,
            top_p=float(extra.get("top_p", 1.0)),
            top_k=int(extra.get("top_k", -1)),
            min_p=float(extra.get("min_p", 0.0)),
            repetition_penalty=float(extra.get("repetition_penalty", 1.0)),
        )
        for i in range(len(prompts))
    ]
    outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
    results = []
    for out in outs:
        ids = list(out.outputs[0].token_ids)
        finished = eos_token_id is not None and ids[-1:] == [eos_token_id]
        results.append((ids, finished))
    return results
