"""Data parallelism for a bake started under a launcher (`torchrun --nproc_per_node N`, `deepspeed`).

The launcher starts N copies of `git bake run bake`, each with RANK / WORLD_SIZE / MASTER_ADDR in its
environment. Every rank builds the same shuffled list of micro-batches; an optimizer step takes
`gradient_accumulation_steps x world size` of them, and rank r trains the r-th run of
`gradient_accumulation_steps` within it. Gradients are summed across ranks (DeepSpeed's engine averages
them, so its losses are scaled by the world size), which makes a step of N ranks the same step as one
rank taking the whole group: the loss curve of a 2-rank bake equals a 1-rank bake with the same global
batch. The teacher's states are computed by each rank for its own share of the trajectories and then
exchanged, so no rank computes all of them. Only rank 0 writes (the adapter, the store, the commit).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gitbake.errors import UsageError

if TYPE_CHECKING:
    import torch


def world() -> tuple[int, int]:
    """(world size, rank) as the launcher set them; (1, 0) without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("RANK", "0") or 0)


def is_rank0() -> bool:
    return world()[1] == 0


def backend(cuda: bool) -> str:
    """The process group's backend: gloo between CPUs; between GPUs NCCL, with gloo beside it for the
    few tensors that stay in host memory (a step's loss and token count, the teacher's states gathered
    on the host), since NCCL moves GPU tensors only."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def cuda_device(gpus: int) -> str:
    """This process's GPU: the launcher's LOCAL_RANK-th (plain "cuda" without a launcher). Every rank
    must have its own before the model is loaded, or all of them load it onto the first GPU. More
    ranks on a machine than it has GPUs would put two on one GPU, which NCCL refuses: said up front."""
    size, _ = world()
    if size <= 1:
        return "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if local >= gpus:
        raise UsageError(
            f"this process is local rank {local} of a launcher's {size}, but this machine has {gpus} GPU(s)",
            f"start one process per GPU (torchrun --nproc_per_node {gpus}), or bake on the CPU with GITBAKE_DEVICE=cpu",
        )
    return f"cuda:{local}"


def init(device: Any = "cpu") -> None:
    """Join the launcher's process group, once (`backend`); nothing without a launcher. `device`: the
    model's, this rank's GPU where it is on one (`cuda_device` chose it when the model was loaded), which
    NCCL then uses."""
    import torch

    size, _ = world()
    if size <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend(device.type == "cuda"))


def active() -> bool:
    import torch

    return world()[0] > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def mine(items: Sequence[Any], ga: int) -> list[Any]:
    """This rank's run of `ga` items in an optimizer step's group (empty when the group is short)."""
    size, rank = world()
    return list(items[rank * ga : (rank + 1) * ga]) if size > 1 else list(items)


def sum_grads(params: Sequence[Any]) -> None:
    """Sum each gradient across ranks (the plain path; DeepSpeed's engine reduces its own)."""
    if not active():
        return
    import torch

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


def sum_floats(*values: float) -> list[float]:
    """The sums across ranks of a few numbers (a step's loss and token count)."""
    if not active():
        return list(values)
    import torch

    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return [float(x) for x in t]


def barrier() -> None:
    if active():
        import torch

        torch.distributed.barrier()


def shard(n: int, rank: int | None = None) -> list[int]:
    """The indices of `n` items a rank (default: this one) computes: every world-size-th, from its rank."""
    size, mine = world()
    return list(range(mine if rank is None else rank, n, size))


def share(local: dict[int, torch.Tensor], rows: Sequence[int], width: int, dtype: Any) -> dict[int, torch.Tensor]:
    """Every rank's `local` tensors ({index: [rows[index], width]}, each rank holding its `shard`), on every
    rank. Each rank knows every index's row count, so one padded all-gather of a flat tensor is enough.
    Floats travel as float32 (gloo does not gather every float type) and come back in `dtype`."""
    if not active():
        return local
    import torch

    size, rank = world()
    owned = [shard(len(rows), r) for r in range(size)]
    longest = max(sum(rows[i] for i in o) for o in owned)
    wire = torch.float32 if torch.empty((), dtype=dtype).is_floating_point() else torch.long
    flat = torch.zeros((longest, width), dtype=wire)
    offset = 0
    for i in owned[rank]:
        flat[offset : offset + rows[i]] = local[i].to(wire)
        offset += rows[i]
    gathered = [torch.empty((longest, width), dtype=wire) for _ in range(size)]
    torch.distributed.all_gather(gathered, flat)
    out: dict[int, torch.Tensor] = {}
    for r, block in enumerate(gathered):
        offset = 0
        for i in owned[r]:
            out[i] = block[offset : offset + rows[i]].to(dtype)
            offset += rows[i]
    return out
