"""Keys and names: blake3 over canonical JSON of everything that changes a result (docs/config.md, keys).

A key is a promise: two configurations with the same key produce the same output, so the store may
reuse it. Hence a key covers the *resolved* config (defaults filled in), the contents of files the
config points at, the prompts, and the model it runs on; and it leaves out only the fields listed in
`EXCLUDED`, which cannot change the output (logging, checkpoint cadence, concurrency, the DeepSpeed stage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import blake3

# Bump when the training algorithm changes in a way that changes the adapter it produces, so old
# cache entries are not mistaken for new results.
ENGINE_VERSION = "gitbake-bake-8"  # 2: a bf16/fp16 base trains its LoRA products in that precision;
# 3: the student's micro-batches run as packed rows (the same sums, in another order);
# 4: every response token weighs the same in the loss, not one over its micro-batch's tokens;
# 5: a short training row on a CPU runs the eager attention (the same products, rounded otherwise)
# 6: the bake's passes on a CPU run gitbake's materialised attention (engine/attention.py), with grad or not
# 7: a CPU bake's LoRA layers that read one input run as one set of products (engine/grouped.py), and
# Adam(W) updates every tensor in one fused kernel (the same arithmetic, rounded otherwise)
# 8: each such group is one autograd function with LoRA's backward in closed form, and a CPU bake's frozen
# bf16 weights are multiplied in oneDNN's layout (engine/prepacked.py; the gradients rounded otherwise)
# Bump when sampling draws differently for the same seed (the rollout's samples change), for the same reason.
# 2: answers are sampled in stages of growing length (engine/rollout.py).
# 3: a model without a chat template is prompted after its BOS token and stops at the next turn
# (engine/templating.py); an answer cut by a stop string keeps none of the stop's tokens.
SAMPLER_VERSION = "gitbake-sample-3"

NAME_HEX = 12  # display names: <name>_<first 12 hex of the key>
KEY_HEX = 64

# Fields of the resolved config that cannot change a stage's output, per section (dotted paths).
# Documented in docs/config.md; tests/unit/test_keys.py checks every other field does change the key.
EXCLUDED: dict[str, tuple[str, ...]] = {
    "TARGET": ("name", "template"),
    "BAKE": (
        "name",
        "wandb",
        "checkpoint",
        "train_log_iter_interval",
        "eval_interval",
        "deepspeed.zero_optimization.stage",
        "template",
        "model_name",
        "activation_checkpoint_cpu_offload",
        "data.cache_dir",
        "data.dl_num_workers",
        "data.num_proc",
        "data.type",
        "data.sources",
        "data.eval_sources",
        "data.train_eval_split",
        "model.disable_activation_checkpoint",
        "model.save_name",
        "model.parent_model_name",
        "model.peft_config",
        "model.student_model_path",
    ),
}

_HEX = re.compile(r"^[0-9a-f]+$")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, integral floats as integers (YAML's `1` and `1.0` mean the
    same number): one byte string per value, whatever the YAML looked like."""
    return json.dumps(_normal(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _normal(obj: Any) -> Any:
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _normal(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normal(v) for v in obj]
    return obj


def digest_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def key_of(obj: Any) -> str:
    return digest_bytes(canonical_json(obj))


def display_name(name: str, key: str) -> str:
    return f"{name}_{key[:NAME_HEX]}"


def split_name(hashed: str) -> tuple[str, str] | None:
    """`yoda_bake_3f2a9c1d04be` -> (`yoda_bake`, `3f2a9c1d04be`); also bgit's 16-hex sha256 names."""
    m = re.match(r"^(?P<base>.+)_(?P<hex>[0-9a-f]{12}|[0-9a-f]{16})$", hashed)
    if not m:
        return None
    return m.group("base"), m.group("hex")


def is_key(value: str) -> bool:
    return len(value) == KEY_HEX and bool(_HEX.match(value))


def strip_excluded(section: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `resolved` without the fields that cannot change the output."""
    out: dict[str, Any] = json.loads(json.dumps(resolved))
    for path in EXCLUDED[section]:
        parts = path.split(".")
        node: Any = out
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def prompt_key(prompt: dict[str, Any]) -> str:
    """The prompt's messages and tools; its display `name` is not part of what it means."""
    return key_of({"kind": "prompt", "messages": prompt.get("messages", []), "tools": prompt.get("tools")})


def stim_key(generators: list[dict[str, Any]], teacher_key: str, split: dict[str, Any] | None = None) -> str:
    """Generators (with file contents and generating-model identity folded in), order-free, and how the
    held-out questions are split off."""
    ordered = sorted(generators, key=canonical_json)
    return key_of({"kind": "stim", "generators": ordered, "teacher": teacher_key, "split": split or {}})


def rollout_key(stim: str, teacher_key: str, student_key: str, sampling: dict[str, Any], model_identity: Any) -> str:
    return key_of(
        {
            "kind": "rollout",
            "stim": stim,
            "teacher": teacher_key,
            "student": student_key,
            "sampling": sampling,
            "model": model_identity,
            "sampler": SAMPLER_VERSION,
        }
    )


def bake_key(config: dict[str, Any], datasets: list[dict[str, Any]], parent_identity: Any) -> str:
    """`config` is the resolved BAKE section; datasets are `{rollout, weight}` by rollout key."""
    body = strip_excluded("BAKE", config)
    body.pop("datasets", None)
    return key_of(
        {
            "kind": "bake",
            "config": body,
            "datasets": sorted(datasets, key=canonical_json),
            "parent": parent_identity,
            "engine": ENGINE_VERSION,
        }
    )


def eval_seed(rollout_keys: Iterable[str]) -> int:
    """The seed of the teacher samples an eval draws itself (where the held-out rollouts are not such
    samples): a function of the rollouts the bake trained on, not of the bake, so every bake of the same
    rollouts (a learning-rate sweep, more epochs) is measured on the same held-out answers."""
    return int(key_of(sorted(rollout_keys))[:8], 16)
