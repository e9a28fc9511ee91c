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
    import json, sys, pathlib
    sys.path.insert(0, {repo!r})
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
    stage = sys.argv[1]
    over = {{}} if stage == "plain" else {{"deepspeed": {{"zero_optimization": {{"stage": int(stage)}}}}}}
    cfg = Bake.model_validate({{"name": "t", "datasets": [{{"target": "x"}}], "epochs": 2, "micro_batch_size": 2,
                               "gradient_accumulation_steps": 2, "optimizer": {{"learning_rate": 0.003}},
                               "model": {{"disable_activation_checkpoint": True}}, **over}})
    out = pathlib.Path(sys.argv[2])
    res = bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(trajs, out)
    print("LOSSES " + json.dumps([r["loss"] for r in res.metrics]))
    """
).format(repo=str(REPO))


def run(stage: str, out: Path) -> list[float]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, stage, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("LOSSES "))
    return list(json.loads(line[len("LOSSES ") :]))


def test_plain_zero2_zero3_same_loss_curve(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="needs deepspeed: pip install 'gitbake[deepspeed]'")

    plain = run("plain", tmp_path / "plain")
    for stage in ("2", "3"):
        curve = run(stage, tmp_path / f"zero{stage}")
        assert len(curve) == len(plain)
        for a, b in zip(plain, curve):
            assert abs(a - b) <= TOLERANCE * max(abs(a), 1e-8), (stage, plain, curve)
        # the ZeRO-3 adapter was gathered before saving: full tensors, and it passed check_adapter
        assert (tmp_path / f"zero{stage}" / "adapter_model.safetensors").stat().st_size > 100_000
