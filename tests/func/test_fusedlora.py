"""The LoRA layers' fused training pass (engine/fusedlora.py): PEFT's values and gradients, PEFT's own
forward wherever it does not apply, and the bake installs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch
from peft import LoraConfig, get_peft_model

from gitbake.contract.config import Bake
from gitbake.engine import bake, fusedlora, models

IDS = torch.tensor([[1, 17, 42, 99, 7, 3, 250, 11, 5, 64, 128, 9]])


def peft_tiny(dtype: str = "fp32", dropout: float = 0.0) -> Any:
    m = models.load_base("tiny", device="cpu", dtype=dtype)
    torch.manual_seed(0)
    # B random, not zero: the adapter's own product must show in the values and reach A's gradient
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout, init_lora_weights=False)
    return get_peft_model(m.model, lora)


def step(pm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every LoRA gradient of one training pass over IDS (a loss that weighs each logit)."""
    pm.zero_grad()
    with torch.enable_grad(), bake.student_precision(pm):
        logits = pm(input_ids=IDS).logits.float()
        (logits * torch.linspace(-1, 1, logits.shape[-1])).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def fused_step(pm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """`step` after installing the fused layers, and how many times the fused pass ran."""
    fusedlora.install(pm)
    applied: list[int] = []
    real = fusedlora._LoraProduct.apply
    fusedlora._LoraProduct.apply = lambda *a: applied.append(1) or real(*a)  # type: ignore[method-assign]
    try:
        logits, grads = step(pm)
    finally:
        fusedlora._LoraProduct.apply = real  # type: ignore[method-assign]
    return logits, grads, len(applied)


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_fused_pass_has_peft_s_values_and_gradients() -> None:
    """In fp32, to rounding: every adapted layer's A and B gradients, not only the loss. A missing term (the
    scale, the adapter's share of dx) would be off by a large fraction of some gradient."""
    pm = peft_tiny()
    logits, grads = step(pm)
    layers = sum(1 for mod in pm.modules() if type(mod) is fusedlora.LoraLinear)
    assert layers == 7 * pm.config.num_hidden_layers
    fused_logits, fused_grads, applied = fused_step(pm)
    assert applied == layers
    assert gap(fused_logits, logits) < 1e-5
    assert grads.keys() == fused_grads.keys() and len(grads) == 2 * layers
    for name, g in grads.items():
        assert g.abs().max() > 0 and gap(fused_grads[name], g) < 1e-5, name


def test_in_bf16_the_fused_pass_is_as_close_to_fp32_as_peft_s() -> None:
    """Under the bake's autocast (bf16 products, fp32 adapter weights): tiny's random weights make bf16's
    rounding a few percent of a gradient, so both bf16 passes are held against the fp32 one. The fused pass
    may round differently, not worse; and its gradients arrive in fp32, where the optimizer keeps them."""
    exact_logits, exact = step(peft_tiny("fp32"))
    pm = peft_tiny("bf16")
    logits, grads = step(pm)
    fused_logits, fused_grads, applied = fused_step(pm)
    assert applied == len(grads) // 2
    assert gap(fused_logits, exact_logits) < 1.5 * gap(logits, exact_logits) + 1e-3
    for name, g in exact.items():
        assert fused_grads[name].dtype == torch.float32
        assert gap(fused_grads[name], g) < 1.5 * gap(grads[name], g) + 1e-3, name


def test_other_passes_keep_peft_s_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """No grad (the eval), the adapter disabled (the teacher), dropout: PEFT's forward, the same outputs."""

    def refuse(*_: Any) -> None:
        raise AssertionError("the fused pass ran")

    monkeypatch.setattr(fusedlora._LoraProduct, "apply", refuse)
    pm = peft_tiny()
    with torch.no_grad():
        before = pm(input_ids=IDS).logits
        with pm.disable_adapter():
            parent = pm(input_ids=IDS).logits
    fusedlora.install(pm)
    with torch.no_grad():
        assert torch.equal(pm(input_ids=IDS).logits, before)
        with pm.disable_adapter():
            assert torch.equal(pm(input_ids=IDS).logits, parent)
    with torch.enable_grad(), pm.disable_adapter():
        assert torch.equal(pm(input_ids=IDS).logits, parent)
    dropped = peft_tiny(dropout=0.1)
    fusedlora.install(dropped)
    with torch.enable_grad():
        dropped(input_ids=IDS).logits.sum().backward()


def bake_config(**over: Any) -> Bake:
    return Bake.model_validate({"name": "t", "datasets": [{"target": "x"}], **over})


def test_the_bake_trains_through_the_fused_pass_and_saves_a_plain_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bake's student gets the fused layers (not under DeepSpeed, whose ZeRO-3 gathers each layer's
    weights in its own hooks, nor with GITBAKE_FUSED_LORA=0), with the unfused bake's curve and an adapter
    PEFT loads."""
    from peft import PeftModel

    prompt = [1, 5, 9, 13, 17, 21]
    data = [bake.Trajectory(prompt + [30 + i], prompt + [30 + i], [40 + i, 41, 42 + i, 2]) for i in range(8)]
    curves = []
    for fused in (True, False):
        monkeypatch.setattr(bake, "FUSED_LORA", fused)
        m = models.load_base("tiny", device="cpu", dtype="fp32")
        baker = bake.Baker(m.model, m.tokenizer, bake_config(epochs=2, optimizer={"learning_rate": 0.003}), "tiny")
        result = baker.train(data, tmp_path / str(fused))
        kinds = {type(mod) for mod in baker.model.modules() if hasattr(mod, "lora_A")}
        assert kinds == ({fusedlora.FusedLoraLinear} if fused else {fusedlora.LoraLinear})
        curves.append([r["loss"] for r in result.metrics])
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)
    loaded = PeftModel.from_pretrained(
        models.load_base("tiny", device="cpu", dtype="fp32").model, str(tmp_path / "True")
    )
    assert {type(mod) for mod in loaded.modules() if hasattr(mod, "lora_A")} == {fusedlora.LoraLinear}

    monkeypatch.setattr(bake, "FUSED_LORA", True)
    m = models.load_base("tiny", device="cpu", dtype="fp32")
    ds = bake.Baker(m.model, m.tokenizer, bake_config(deepspeed={"zero_optimization": {"stage": 3}}), "tiny")
    assert not any(isinstance(mod, fusedlora.FusedLoraLinear) for mod in ds._peft(data).modules())
