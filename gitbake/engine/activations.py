"""How much memory a micro-batch's activations take in training, and so whether to checkpoint them.

Activation checkpointing keeps only each layer's input and runs the layer's forward again during the
backward pass: about a third more compute, for activations that fit in a fraction of the memory. A bake
of a small model on a CPU has memory to spare and time to lose, a bake of a 7B model on a GPU the reverse,
so `BAKE.model.disable_activation_checkpoint` left unset lets the engine choose from this estimate (the
setting is not in the bake key: both ways train the same adapter). No torch here: the unit tests run it.
"""

from __future__ import annotations

import os
from typing import Any

SHARE = 0.25  # checkpoint when the activations would take more than this share of the free memory


def activation_bytes(config: Any, micro_batch: int, seq_len: int) -> int | None:
    """The activations a transformer keeps for the backward pass of one micro-batch, in 16-bit precision:
    s·b·h·(34 + 5·a·s/h) bytes per layer (Korthikanti et al., "Reducing Activation Recomputation in Large
    Transformer Models", 2022; attention scores counted whole, as eager attention keeps them), plus a fifth
    for the inputs the LoRA adapters on every linear layer keep. None when the config lacks a field."""
    h = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not (isinstance(h, int) and isinstance(layers, int) and isinstance(heads, int)) or min(h, layers, heads) <= 0:
        return None
    s, b = seq_len, micro_batch
    per_layer = s * b * h * (34 + 5 * heads * s / h)
    return int(per_layer * layers * 1.2)


def available_bytes(device: Any = None) -> int | None:
    """Free memory where the activations live: the GPU's free memory, else the host's available memory."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def should_checkpoint(needed: int | None, available: int | None) -> bool:
    """Checkpoint unless the activations are known to fit comfortably (an unknown either way: checkpoint)."""
    if needed is None or available is None:
        return True
    return needed > SHARE * available
