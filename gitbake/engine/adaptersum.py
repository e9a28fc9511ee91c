"""One LoRA adapter equal to a chain of them (`git bake export --adapter DIR --single`).

A bake's adapter is trained on its parent *merged*: the model of a chain is
    W = W0 + s1 B1 A1 + s2 B2 A2 + ...        (si = lora_alpha_i / r_i, or / sqrt(r_i) with rsLoRA)
for every targeted linear layer. Each term is a product of low-rank factors, and a sum of such products
is one product of the concatenated factors:
    s1 B1 A1 + s2 B2 A2 = [s1 B1 | s2 B2] [A1 ; A2]
so one adapter of rank r1 + r2 + ..., with scale 1 (lora_alpha = r), gives the same W exactly: no
approximation, only the rounding of the fp32 arithmetic. A layer that an adapter of the chain does not
target gets zero blocks there. vLLM's multi-LoRA and PEFT load it on the base model alone.

What this cannot express exactly, and so refuses (exit 2) rather than approximate: DoRA (its magnitude
vector is not additive), per-module `rank_pattern`/`alpha_pattern`, `layers_to_transform`, trained
`modules_to_save`, `fan_in_fan_out` layers and LoRA on biases. gitbake's own bakes use none of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake.errors import UsageError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
# config fields whose non-default value makes the sum inexact or the layout different
UNSUPPORTED = {
    "use_dora": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None,),
    "modules_to_save": (None, []),
    "fan_in_fan_out": (False, None),
    "lora_bias": (False, None),
    "bias": ("none", None),
}


@dataclass(frozen=True)
class Summed:
    """What `write_single` wrote: the adapter's rank and the layers it covers."""

    rank: int
    ranks: tuple[int, ...]  # each chained adapter's rank, in order
    modules: int  # LoRA layers (module paths) in the single adapter
    target_modules: tuple[str, ...]


def _config(adapter: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((adapter / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{adapter / CONFIG} cannot be read: {exc}", "fetch the model again: git bake pull") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"{adapter} is a {config.get('peft_type')} adapter: only LoRA chains can be summed")
    for key, fine in UNSUPPORTED.items():
        if config.get(key, fine[0]) not in fine:
            raise UsageError(
                f"--single: {adapter.name} sets `{key}: {json.dumps(config[key])}`, which one summed LoRA adapter "
                "cannot express exactly",
                "export the chain without --single (`--adapter DIR`), or a merged model (`--merged DIR`)",
            )
    return config


def _scale(config: dict[str, Any]) -> float:
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _layers(weights: dict[str, Any], where: Path) -> dict[str, tuple[Any, Any]]:
    """module path -> (A, B) of one adapter's state dict."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in weights:
        if key.endswith(A_SUFFIX):
            module = key[: -len(A_SUFFIX)]
            if module + B_SUFFIX not in weights:
                raise UsageError(f"{where / WEIGHTS}: {key} has no lora_B partner", "fetch the model again")
            out[module] = (weights[key], weights[module + B_SUFFIX])
        elif not key.endswith(B_SUFFIX):
            raise UsageError(
                f"--single: {where / WEIGHTS} holds `{key}`, which is not a LoRA factor",
                "export the chain without --single (`--adapter DIR`), or a merged model (`--merged DIR`)",
            )
    return out


def write_single(adapters: list[Path], dest: Path, base_model: str, revision: str | None = None) -> Summed:
    """Write into `dest` one PEFT LoRA adapter whose delta is the sum of the chain's, for `base_model`
    (`base_model_name_or_path`, loadable outside gitbake: a hub id with `revision`, or a path)."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [_config(a) for a in adapters]
    chain = [_layers(load_file(str(a / WEIGHTS)), a) for a in adapters]
    ranks = tuple(int(c["r"]) for c in configs)
    total = sum(ranks)
    modules = sorted({m for layers in chain for m in layers})
    summed: dict[str, Any] = {}
    for module in modules:
        shapes = {(a.shape[1], b.shape[0]) for layers in chain if module in layers for a, b in [layers[module]]}
        if len(shapes) != 1:
            raise UsageError(f"--single: the adapters disagree on the shape of {module}", "re-bake on one base model")
        (fan_in, fan_out) = shapes.pop()
        a_sum = torch.zeros(total, fan_in, dtype=torch.float32)
        b_sum = torch.zeros(fan_out, total, dtype=torch.float32)
        offset = 0
        for config, layers, r in zip(configs, chain, ranks):
            if module in layers:
                a, b = layers[module]
                a_sum[offset : offset + r] = a.float()
                b_sum[:, offset : offset + r] = b.float() * _scale(config)
            offset += r
        summed[module + A_SUFFIX] = a_sum.contiguous()
        summed[module + B_SUFFIX] = b_sum.contiguous()
    targets = tuple(sorted({m.rsplit(".", 1)[-1] for m in modules}))
    config = dict(configs[-1])
    config.update(
        r=total,
        lora_alpha=float(total),  # scale 1: the chain's scales are folded into B
        use_rslora=False,
        target_modules=list(targets),
        base_model_name_or_path=base_model,
        revision=revision,
        inference_mode=True,
    )
    dest.mkdir(parents=True, exist_ok=True)
    save_file(summed, str(dest / WEIGHTS), metadata={"format": "pt"})
    (dest / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Summed(total, ranks, len(modules), targets)
