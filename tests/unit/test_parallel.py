"""A launcher's ranks on GPUs: each its own GPU, NCCL between GPUs with gloo beside it for host tensors, and
more ranks than GPUs refused with the fix. (The gloo ranks themselves train in tests/func/test_launch.py.)"""

from __future__ import annotations

import pytest

from gitbake.engine import parallel
from gitbake.errors import EXIT_USAGE, UsageError


def launched(mp: pytest.MonkeyPatch, world: int, rank: int, local: int) -> None:
    mp.setenv("WORLD_SIZE", str(world))
    mp.setenv("RANK", str(rank))
    mp.setenv("LOCAL_RANK", str(local))


def test_gpu_ranks_pair_nccl_with_gloo_for_the_host_tensors() -> None:
    # a step's loss and token count and the teacher's states are gathered on the host: NCCL alone refuses them
    assert parallel.backend(cuda=True) == "cpu:gloo,cuda:nccl"
    assert parallel.backend(cuda=False) == "gloo"


def test_each_rank_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel.cuda_device(gpus=8) == "cuda"  # no launcher: the current GPU
    launched(monkeypatch, world=4, rank=3, local=3)
    assert parallel.cuda_device(gpus=4) == "cuda:3"
    launched(monkeypatch, world=4, rank=2, local=0)  # two machines of two: the second's first rank
    assert parallel.cuda_device(gpus=2) == "cuda:0"


def test_more_ranks_than_gpus_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, world=2, rank=1, local=1)
    with pytest.raises(UsageError) as err:
        parallel.cuda_device(gpus=1)
    assert err.value.exit_code == EXIT_USAGE
    assert "local rank 1" in err.value.message and "1 GPU(s)" in err.value.message
    assert (
        err.value.hint is not None and "--nproc_per_node 1" in err.value.hint and "GITBAKE_DEVICE=cpu" in err.value.hint
    )
