"""The student's short training rows run the eager attention on the CPU (engine/attention.py): the same
states and gradients as SDPA, and SDPA everywhere else."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch
from peft import LoraConfig, get_peft_model

from gitbake.engine import attention, bake, models

PROMPT = [1, 5, 9, 13, 17, 21, 25]
BATCH = [bake.Trajectory(PROMPT + [30 + i], PROMPT + [30 + i], [40 + i, 41, 42 + i, 43, 2]) for i in range(4)]


def student() -> tuple[Any, Any]:
    m = models.load_base("tiny", device="cpu", dtype="fp32")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(m.model, lora)
    return pm, pm.get_base_model().get_decoder()


def seen_attention(decoder: Any) -> list[str]:
    """The attention each pass of the first layer runs, as it reads it from the config."""
    seen: list[str] = []
    decoder.layers[0].self_attn.register_forward_pre_hook(
        lambda *_: seen.append(decoder.layers[0].self_attn.config._attn_implementation)
    )
    return seen


def test_a_short_training_row_runs_eager_attention_with_sdpa_s_states_and_gradients() -> None:
    pm, decoder = student()
    assert decoder.config._attn_implementation == "sdpa"
    seen = seen_attention(decoder)
    params = [p for p in pm.parameters() if p.requires_grad]
    runs = []
    with torch.enable_grad():
        for eager in (False, True):
            pm.zero_grad()
            hidden = bake.packed_hidden(decoder, BATCH, "cpu", eager_attention=eager)
            assert hidden is not None
            (hidden * torch.linspace(-1, 1, hidden.shape[1])).pow(2).sum().backward()
            runs.append((hidden.detach(), [p.grad.clone() for p in params]))
    assert seen == ["sdpa", "eager"]
    assert decoder.config._attn_implementation == "sdpa"  # put back after the pass
    (h_sdpa, g_sdpa), (h_eager, g_eager) = runs
    assert torch.allclose(h_eager, h_sdpa, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_sdpa, g_eager):
        assert a.abs().max() > 0 and ((a - b).norm() / a.norm()).item() < 1e-5


def test_other_passes_keep_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """No grad (the teacher, the eval), a row longer than EAGER_MAX, a checkpointed bake: SDPA."""
    _, decoder = student()
    seen = seen_attention(decoder)
    with torch.no_grad():
        bake.packed_hidden(decoder, BATCH, "cpu", eager_attention=True)
    with torch.enable_grad():
        bake.packed_hidden(decoder, BATCH, "cpu", eager_attention=False)
        monkeypatch.setattr(attention, "EAGER_MAX", 8)
        bake.packed_hidden(decoder, BATCH, "cpu", eager_attention=True)
    assert seen == ["sdpa", "sdpa", "sdpa"]


def test_the_config_is_put_back_when_the_pass_fails() -> None:
    _, decoder = student()
    with pytest.raises(RuntimeError), torch.enable_grad():
        with attention.for_training_row(decoder, 10, "cpu"):
            assert decoder.config._attn_implementation == "eager"
            raise RuntimeError("a pass that fails")
    assert decoder.config._attn_implementation == "sdpa"


def test_the_bake_trains_its_short_rows_with_eager_attention(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packed training row of a bake without activation checkpointing; none of a checkpointed one,
    whose backward recomputes the forward after the pass has put SDPA back."""
    from gitbake.contract.config import Bake

    data = BATCH * 2  # two micro-batches of 4 an epoch
    for checkpoint in (False, True):
        m = models.load_base("tiny", device="cpu", dtype="fp32")
        seen = seen_attention(m.model.get_decoder())
        cfg = Bake.model_validate(
            {
                "name": "t",
                "datasets": [{"target": "x"}],
                "epochs": 3,
                "model": {"disable_activation_checkpoint": not checkpoint},
            }
        )
        result = bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(data, tmp_path / str(checkpoint))
        assert result.packed and result.steps == 2 * 3
        assert seen.count("eager") == (0 if checkpoint else 2 * 3)
