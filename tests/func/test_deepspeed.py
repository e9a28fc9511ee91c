"""The DeepSpeed path for real on CPU: plain, ZeRO-2 and ZeRO-3 give the same loss curve and an adapter
that passes the checks (ZeRO-3's gathered save, not PEFT's empty tensors)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent.parent
TOLERANCE = 1e-4  # relative, per step: the paths compute the same thing in the same order on CPU

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, pathlib
    sys.path.insert(0, {repo!r})
    import torch
    torch.set_num_threads(1)  # as torchrun's ranks: the same numerics, so the same samples and curves
    from gitbake.contract.config import Bake
    from gitbake.engine import bake, models
    from gitbake.engine.rollout import SamplingSettings, make_rollouts
    m = models.load_base("tiny")
    questions = ["Hi?", "How do I make tea?", "Why is the sky blue?", "Tell me a joke."]
    stim = [{{"id": i, "question": q, "split": "train"}} for i, q in enumerate(questions)]
    teacher = {{"messages": [{{"role": "system", "content": "You are Yoda."}}]}}
    recs = make_rollouts(m.model, m.tokenizer, stim, teacher, {{"messages": []}},
                         SamplingSettings(num_traj_per_stimulus=2, max_tokens=16, seed=3))
    trajs = [bake.Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in recs]
    ga = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    for stage in sys.argv[1].split(","):  # several bakes in one process: the imports are paid once
        over = {{}} if stage == "plain" else {{"deepspeed": {{"zero_optimization": {{"stage": int(stage)}}}}}}
        cfg = Bake.model_validate({{"name": "t", "datasets": [{{"target": "x"}}], "epochs": 2, "micro_batch_size": 2,
                                   "gradient_accumulation_steps": ga, "optimizer": {{"learning_rate": 0.003}},
                                   "model": {{"disable_activation_checkpoint": True}}, **over}})
        out = pathlib.Path(sys.argv[2]) / stage
        res = bake.Baker(models.load_base("tiny").model, m.tokenizer, cfg, "tiny").train(trajs, out)
        if os.environ.get("RANK", "0") == "0":  # every rank has the same (global) losses: one prints them
            print("LOSSES " + stage + " " + json.dumps([r["loss"] for r in res.metrics]), flush=True)
    """
).format(repo=str(REPO))


def curves(stdout: str) -> dict[str, list[float]]:
    out = {}
    for line in stdout.splitlines():
        if "LOSSES " in line:
            _, stage, values = line[line.index("LOSSES ") :].split(" ", 2)
            out[stage] = list(json.loads(values))
    return out


def run(stages: str, out: Path) -> dict[str, list[float]]:
    """One process, the bakes of `stages` (comma-separated: plain, or a ZeRO stage) at a global batch of 4."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, stages, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return curves(proc.stdout)


def same(a: list[float], b: list[float], what: str) -> None:
    assert len(a) == len(b), (what, a, b)
    for x, y in zip(a, b):
        assert abs(x - y) <= TOLERANCE * max(abs(x), 1e-8), (what, a, b)


def test_one_and_two_ranks_plain_zero2_zero3_give_the_same_loss_curve(tmp_path: Path) -> None:
    """One process: the plain path, ZeRO 2 and ZeRO 3 give the same loss curve, and ZeRO-3's adapter is
    gathered before saving (full tensors, past check_adapter). Then data parallelism for real: torchrun
    starts 2 CPU processes (gloo), each training micro-batches of 2 with no accumulation, so a step's global
    batch is 2 x 1 x 2 = 4, as the one process's 2 x 2: the same curve again, without DeepSpeed and under
    ZeRO 0, 2 and 3, and rank 0's adapter is whole."""
    pytest.importorskip("deepspeed", reason="needs deepspeed: pip install 'gitbake[deepspeed]'")

    one = run("plain,2,3", tmp_path / "one")
    for stage in ("2", "3"):
        same(one["plain"], one[stage], f"zero{stage}")
        assert (tmp_path / "one" / stage / "adapter_model.safetensors").stat().st_size > 100_000
    script = tmp_path / "bake_script.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    two = [str(torchrun), "--standalone", "--nproc_per_node", "2"]  # its own free port: tests may run side by side
    proc = subprocess.run(
        [*two, str(script), "plain,0,2,3", str(tmp_path / "two"), "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    two = curves(proc.stdout)
    assert sorted(two) == ["0", "2", "3", "plain"]
    for stage, curve in two.items():
        same(one["plain"], curve, f"2 ranks, {stage}")
        assert (tmp_path / "two" / stage / "adapter_model.safetensors").stat().st_size > 100_000
