"""Which attention a bake's passes run on the CPU: gitbake's own materialised attention for rows up to
`MAX` positions.

transformers' SDPA attention runs PyTorch's fused kernel, which on the CPU never materialises the
[heads, L, L] scores: right for long rows, but on a bake's rows (a few hundred positions, a 4D block
mask) it is the slow choice, forward and above all backward, which recomputes the scores block by
block. transformers' own eager attention materialises them, but copies the keys and values once per
query head (grouped-query attention), scales the [heads, L, L] scores in a pass of their own, and runs
the softmax through an fp32 copy of them and back. `materialised_attention` does the same arithmetic
without those passes: each key/value head's query heads are one batch of a single product, the scale
goes onto the queries (L x d, not L x L), the mask is added in place, and the softmax runs in the
scores' precision (its CPU kernel accumulates in fp32 either way). Forward and backward of one
SmolLM2 layer (bf16, 2 threads, a packed row of 4 sequences) took 2.8 ms against 6.2 ms for SDPA at
272 positions, 4.3 against 10.7 at 384 and 45.6 against 58.1 at 1024; a forward without grad 1.0
against 1.5 ms at 272 (docs/engine.md). Its error against a float64 reference is transformers' eager
attention's.

Passes that keep SDPA: rows longer than `MAX`; GPUs (whose fused kernels are the fast path there);
training passes of a bake with activation checkpointing (its backward recomputes the forward after
the switch has ended); generation, which never enters the switch.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import Any

import torch

from gitbake.engine import knobs

MAX = knobs.number("GITBAKE_EAGER_ATTENTION_MAX", 1024)  # 0: SDPA everywhere
NAME = "gitbake_materialised"
# keyword arguments that change the attention's arithmetic beyond scale and mask: the model's own eager
# attention handles them (Gemma 2's logit soft-capping, gpt-oss's sinks)
_OTHER_MATH = ("softcap", "s_aux", "sinks", "head_mask")


def materialised_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [b, h, q, d], key and value [b, kv, k, d], an
    additive mask [b, 1, q, k] (transformers' eager format, registered with it); returns [b, q, h, d]."""
    if (dropout and module.training) or any(kwargs.get(name) is not None for name in _OTHER_MATH):
        eager = _model_eager(module)  # keywords: the files order scaling and dropout differently
        return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)  # type: ignore[no-any-return]
    b, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    group = heads // kv_heads  # query head i reads key/value head i // group, as repeat_kv arranges it
    q = (query * scaling).reshape(b * kv_heads, group * q_len, dim)
    scores = torch.bmm(q, key.reshape(b * kv_heads, k_len, dim).transpose(1, 2))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True: attend (SDPA's form), should one arrive
            attention_mask = torch.zeros((), dtype=scores.dtype).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min
            )
        scores.view(b, kv_heads, group, q_len, k_len).add_(attention_mask[:, :, None, :, :k_len])
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, value.reshape(b * kv_heads, k_len, dim))
    return out.view(b, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _model_eager(module: Any) -> Any:
    """The eager attention of the module's own modeling file (every transformers model defines one)."""
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is not None:
        return own
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward


@functools.cache
def registered() -> bool:
    """Whether transformers knows the attention (and builds eager's additive masks for it): a version
    without its attention and mask registries keeps SDPA."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, materialised_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def eligible(decoder: Any, length: int, device: Any, checkpointed: bool = False) -> bool:
    """Whether a pass over rows of `length` keys runs the materialised attention (the module docstring)."""
    conf: Any = getattr(decoder, "config", None)
    return (
        0 < length <= MAX
        and getattr(conf, "_attn_implementation", None) == "sdpa"
        and torch.device(device).type == "cpu"
        and not (checkpointed and torch.is_grad_enabled())
        and registered()
    )


@contextlib.contextmanager
def for_pass(decoder: Any, length: int, device: Any, checkpointed: bool = False) -> Iterator[None]:
    """Within: `decoder` runs the materialised attention where `eligible`. A layer reads the attention from
    the config at each forward, so it is set for this pass and put back after it (also when the pass
    fails); the backward pass does not read it. The caller builds its 4D masks in eager's additive form."""
    if not eligible(decoder, length, device, checkpointed):
        yield
        return
    conf = decoder.config
    conf._attn_implementation = NAME
    try:
        yield
    finally:
        conf._attn_implementation = "sdpa"
