"""Which attention the student's training rows run: the materialised one for short rows on the CPU.

transformers' SDPA attention runs PyTorch's fused kernel, which on the CPU never materialises the
[heads, L, L] scores: right for long rows and for passes without grad. Its backward, though, recomputes
the scores block by block, and on the short packed rows of a bake it is the slow half: fwd+bwd of one
SmolLM2 layer at 272 positions took 6.7 ms against 5.2 ms for the eager attention (scores in the
activations' precision, softmax in fp32, as transformers writes it), which is even at about 400
positions and behind at 512 (docs/engine.md). So a training row up to `EAGER_MAX` positions runs the eager
attention, and everything else (the teacher's pass, the eval, long rows, a GPU) keeps SDPA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

EAGER_MAX = int(os.environ.get("GITBAKE_EAGER_ATTENTION_MAX", "384"))


@contextlib.contextmanager
def for_training_row(decoder: Any, length: int, device: Any, allowed: bool = True) -> Iterator[None]:
    """Within: `decoder` runs the eager attention when a row of `length` positions trains on the CPU under
    SDPA (and `allowed`: activation checkpointing would recompute the forward after this has ended). The
    attention a pass runs is read from the config at each layer's forward, so it is set for this pass
    and put back after it; the backward pass does not read it."""
    conf: Any = getattr(decoder, "config", None)
    switch = (
        allowed
        and getattr(conf, "_attn_implementation", None) == "sdpa"
        and torch.is_grad_enabled()
        and torch.device(device).type == "cpu"
        and length <= EAGER_MAX
    )
    if not switch:
        yield
        return
    conf._attn_implementation = "eager"
    try:
        yield
    finally:
        conf._attn_implementation = "sdpa"
