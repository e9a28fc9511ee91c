"""The compiled training loop for real (GITBAKE_COMPILE=1 on tiny): Inductor's fused layers train the same
loss curve as the eager ones, the adapter passes its checks, and the layers are eager again afterwards
(the eval's generation must not run them compiled)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")

from gitbake.contract.config import Bake
from gitbake.engine import bake, compiled, models
from gitbake.engine.rollout import SamplingSettings, make_rollouts
from gitbake.reporter import Reporter

QUESTIONS = ["What is the capital of France?", "How do I make tea?", "Why is the sky blue?", "Tell me a joke."]


def test_compiled_layers_train_the_same_curve_and_are_eager_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = models.load_base("tiny")
    stim = [{"id": i, "question": q, "split": "train"} for i, q in enumerate(QUESTIONS)]
    teacher = {"messages": [{"role": "system", "content": "You are Yoda."}]}
    recs = make_rollouts(
        m.model, m.tokenizer, stim, teacher, {"messages": []}, SamplingSettings(num_traj_per_stimulus=2, max_tokens=16)
    )
    trajs = [bake.Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in recs]
    cfg = Bake.model_validate(
        {
            "name": "t",
            "datasets": [{"target": "x"}],
            "epochs": 2,
            "micro_batch_size": 2,
            "optimizer": {"learning_rate": 0.003},
            "model": {"disable_activation_checkpoint": True},
        }
    )
    curves, said = {}, {}
    for setting in ("0", "1"):
        monkeypatch.setenv("GITBAKE_COMPILE", setting)
        lines: list[str] = []
        reporter = Reporter()
        monkeypatch.setattr(reporter, "say", lines.append)
        baker = bake.Baker(models.load_base("tiny").model, m.tokenizer, cfg, "tiny", reporter=reporter)
        res = baker.train(trajs, tmp_path / setting)
        curves[setting] = [row["loss"] for row in res.metrics]
        said[setting] = lines
        layers = compiled.layers_of(baker.model.get_base_model().get_decoder())
        assert layers and all(layer._compiled_call_impl is None for layer in layers)  # eager again
        bake.check_adapter(tmp_path / setting, cfg.model.baked_adapter_config.model_dump())
    assert any("compiling the decoder layers" in line for line in said["1"])
    assert not any("compiling" in line for line in said["0"])
    assert len(curves["0"]) == len(curves["1"]) == 8
    for eager, fused in zip(curves["0"], curves["1"]):
        assert abs(eager - fused) <= 1e-4 * abs(eager), (curves["0"], curves["1"])
    assert curves["1"][-1] < curves["1"][0]  # it trained
