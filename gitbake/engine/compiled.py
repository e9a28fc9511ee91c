"""Regional compilation of the training loop: each decoder layer through torch.compile, for the bake only.

What a bake on a CPU spends besides its matrix products is mostly small elementwise work (norms, rotary
embeddings, the activation, PEFT's casts into and out of the fp32 LoRA weights, their scaling and sums):
hundreds of tiny ops per layer and micro-batch, each a pass over memory. Inductor fuses them into a few
loops. Compiling one decoder layer (all of them share its code and shapes, so it compiles once, with
dynamic sequence lengths) costs seconds where compiling the whole model costs minutes (PyTorch's "regional
compilation" recipe). Measured on SmolLM2-135M's shape in bf16 on 2 cores: about 1.25x the training
steps per second (docs/engine.md). The layers are compiled only around the training loop: the teacher's
cached-prefix passes and the eval's generation (a key-value cache per layer index) would recompile per
layer.

The compiled path computes the same function; fused loops round in a different order, so the adapter's
bytes can differ in the last bits from an eager bake's (like a different device). Not in the bake key.
`GITBAKE_COMPILE=0|1` overrides the choice (`auto`: on for a bf16 model of at least MIN_PARAMS on a CPU
with a C++ compiler, the case that was measured).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MIN_PARAMS = 50_000_000  # below this (tiny, test models) the compile costs more than it saves


def wanted(model: Any, env: str | None = None) -> bool:
    """Whether to compile the layers of `model`'s bake (GITBAKE_COMPILE, else the measured case)."""
    setting = os.environ.get("GITBAKE_COMPILE", "auto") if env is None else env
    if setting in ("0", "1"):
        return setting == "1"
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or str(param.dtype) != "torch.bfloat16":
        return False
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("cc")):
        return False  # Inductor's CPU code is C++: without a compiler the eager path it is
    return bool(sum(p.numel() for p in model.parameters()) >= MIN_PARAMS)


def layers_of(decoder: Any) -> list[Any]:
    """The decoder's repeated blocks (`layers`, as Llama, Qwen, Gemma, Mistral name them); [] if unknown."""
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None else []


@contextmanager
def compiled_layers(decoder: Any, enabled: bool) -> Iterator[bool]:
    """Within: the decoder's layers run compiled (yields whether they do). After: eager again."""
    layers = layers_of(decoder) if enabled else []
    if not layers:
        yield False
        return
    import torch._dynamo

    # a layer Inductor cannot compile runs eagerly instead of failing the bake
    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield True
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
        torch._dynamo.config.suppress_errors = suppress
