"""DeepSpeed: the bake under its engine when `BAKE.deepspeed` asks for it.

One process per GPU through the `deepspeed` launcher on GPU machines; on a CPU-only machine the engine
runs single-process with the gloo backend and torch's AdamW (`torch_adam`), which is how the suite
exercises ZeRO 0-3 for real. Only rank 0 writes anything. Under ZeRO-3 the LoRA weights are gathered
before saving (otherwise PEFT saves empty tensors: the ZeRO-3 empty-adapter bug, which the adapter check
would refuse anyway).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gitbake.errors import UsageError

if TYPE_CHECKING:
    from gitbake.contract.config import Bake


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError(
            "BAKE.deepspeed is set, but DeepSpeed is not installed",
            "pip install 'gitbake[deepspeed]'   (or remove the deepspeed section to train without it)",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> None:
    """DeepSpeed's communication over the launcher's process group (engine/parallel.py made it), or a
    single-process group without a launcher."""
    import deepspeed
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        # on a CPU, DeepSpeed would compile its shared-memory all-reduce kernel with gcc on first use (a
        # minute or more): one process exchanges nothing, and a few CPU ranks exchange only LoRA gradients,
        # which gloo's all-reduce handles in milliseconds
        import deepspeed.ops

        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)  # wraps the launcher's group
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def zero_stage(cfg: Bake) -> int:
    """The ZeRO stage a bake asks for: 0 without DeepSpeed."""
    return cfg.deepspeed.zero_optimization.stage if cfg.deepspeed is not None else 0


def ds_config(cfg: Bake) -> dict[str, Any]:
    """BAKE fields -> a DeepSpeed config; the user's own `BAKE.deepspeed` keys are kept."""
    import torch

    user = cfg.deepspeed.model_dump(mode="json") if cfg.deepspeed is not None else {}
    o = cfg.optimizer
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        # gitbake accumulates itself (one backward per optimizer step): DeepSpeed's own accumulation under
        # ZeRO-3 drifted from the plain path's loss curve here, ours matches it exactly
        "gradient_accumulation_steps": 1,
        "zero_optimization": dict(user.pop("zero_optimization", {}) or {"stage": 0}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if "optimizer" not in user:
        kind = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}[o.type]
        params: dict[str, Any] = {"lr": o.learning_rate, "weight_decay": o.weight_decay}
        if kind != "SGD":
            params["betas"] = list(o.betas)
            params["torch_adam"] = True  # no compiled op needed (and the only choice on CPU)
        conf["optimizer"] = {"type": kind, "params": params}
    if torch.cuda.is_available() and "bf16" not in user and "fp16" not in user and torch.cuda.is_bf16_supported():
        conf["bf16"] = {"enabled": cfg.model.dtype in ("auto", "bf16", "bfloat16")}
    conf.update(user)
    return conf


def initialize(model: Any, params: list[Any], cfg: Bake, scheduler_factory: Any) -> tuple[Any, Any, Any]:
    import deepspeed

    init_distributed()
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config(cfg), lr_scheduler=scheduler_factory
    )
    return engine, optimizer, scheduler


@contextlib.contextmanager
def gathered(params: list[Any], stage: int) -> Iterator[None]:
    """Under ZeRO-3 the parameters are partitioned; gather them (to rank 0) to read or save them."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield
