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
from typing import TYPE_CHECKING

from gitbake.engine.sampling import Sampling, TokenLogprob
from gitbake.errors import UsageError

if TYPE_CHECKING:
    from gitbake.engine.rollout import Response


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
    model_path: str, prompts: Sequence[Sequence[int]], sampling: Sampling, max_tokens: int, eos_token_id: int | None
) -> list[Response]:
    from vllm import LLM, SamplingParams

    from gitbake.engine.rollout import Response

    seed = sampling.seed or 0
    llm = LLM(model=model_path, seed=seed, enforce_eager=False)
    # one seed per request: with a shared seed, the trajectories of one question would all be the same
    params = [
        SamplingParams(
            temperature=sampling.temperature,
            max_tokens=max_tokens,
            seed=seed * 1_000_003 + i,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,
            min_p=sampling.min_p or 0.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            repetition_penalty=sampling.repetition_penalty,
            stop=list(sampling.stop) or None,
            logprobs=max(sampling.top_logprobs, 1) if sampling.logprobs else None,
        )
        for i in range(len(prompts))
    ]
    outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
    results = []
    for out in outs:
        ids = list(out.outputs[0].token_ids)
        finished = eos_token_id is not None and ids[-1:] == [eos_token_id]
        lps = None
        if sampling.logprobs:  # vLLM's: a dict per position, token id -> Logprob (the chosen token among them)
            lps = []
            for tok, d in zip(ids, out.outputs[0].logprobs or []):
                ranked = sorted(d.items(), key=lambda kv: -kv[1].logprob)[: sampling.top_logprobs]
                lps.append(TokenLogprob(tok, float(d[tok].logprob), tuple((t, float(v.logprob)) for t, v in ranked)))
        results.append(Response(ids, finished, lps))
    return results
