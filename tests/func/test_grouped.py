"""A bake's LoRA layers that read the same input run as one set of products (engine/grouped.py): PEFT's
outputs and gradients, the frozen weights as they were afterwards, and PEFT's own forward wherever the
grouping does not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch
from peft import LoraConfig, get_peft_model

from gitbake.contract.config import Bake
from gitbake.engine import bake, grouped, models

PROMPT = [1, 5, 9, 13, 17, 21, 25]
BATCH = [bake.Trajectory(PROMPT + [30 + i], PROMPT + [30 + i], [40 + i, 41, 42 + i, 43, 2]) for i in range(4)]


def student(dtype: str = "fp32", **lora: Any) -> Any:
    m = models.load_base("tiny", device="cpu", dtype=dtype)
    torch.manual_seed(0)
    conf = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False, **lora}
    return get_peft_model(m.model, LoraConfig(**conf))


def pass_and_grads(pm: Any, autocast: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The student's packed states for BATCH, and every LoRA weight's gradient of a loss on them."""
    decoder = pm.get_base_model().get_decoder()
    params = [p for p in pm.parameters() if p.requires_grad]
    pm.zero_grad(set_to_none=True)
    with torch.enable_grad():
        ctx = bake.student_precision(pm) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            hidden = bake.packed_hidden(decoder, BATCH, "cpu")
        assert hidden is not None
        (hidden.float() * torch.linspace(-1, 1, hidden.shape[1])).pow(2).sum().backward()
    return hidden.detach().float(), [p.grad.detach().clone().float() for p in params]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert b.abs().max() > 0
    return ((a - b).norm() / b.norm()).item()


def test_siblings_are_grouped_and_the_rest_run_alone() -> None:
    pm = student()
    found = grouped.groups(pm)
    names = {id(m): n.rpartition(".")[2] for n, m in pm.named_modules()}
    shapes = sorted({tuple(names[id(m)] for m in g.members) for g in found})
    assert shapes == [("down_proj",), ("gate_proj", "up_proj"), ("o_proj",), ("q_proj", "k_proj", "v_proj")]
    layers = len(pm.get_base_model().get_decoder().layers)
    assert len(found) == 4 * layers
    attn = pm.get_base_model().get_decoder().layers[0].self_attn
    ptrs = {getattr(attn, n).base_layer.weight.untyped_storage().data_ptr() for n in ("q_proj", "k_proj", "v_proj")}
    assert len(ptrs) == 3  # finding the groups leaves the weights alone: only the context joins them


def test_grouped_layers_give_peft_s_states_and_gradients() -> None:
    pm = student()
    h_peft, g_peft = pass_and_grads(pm)
    with grouped.grouped(pm, "cpu") as n:
        assert n == 7 * len(pm.get_base_model().get_decoder().layers)
        h_ours, g_ours = pass_and_grads(pm)
    assert rel(h_ours, h_peft) < 1e-5
    for a, b in zip(g_ours, g_peft):
        assert rel(a, b) < 1e-5


def test_in_bf16_under_autocast_the_error_is_peft_s() -> None:
    """Against an fp32 reference, bf16 with grouping is as far off as PEFT's own bf16 forward."""
    h_ref, g_ref = pass_and_grads(student())
    pm = student("bf16")
    h_peft, g_peft = pass_and_grads(pm, autocast=True)
    with grouped.grouped(pm, "cpu"):
        h_ours, g_ours = pass_and_grads(pm, autocast=True)
        x = torch.randn(3, pm.get_base_model().config.hidden_size, dtype=torch.bfloat16)
        with bake.student_precision(pm):
            out = pm.get_base_model().get_decoder().layers[0].self_attn.q_proj(x)
    assert out.dtype == torch.bfloat16  # products in bf16, while the adapter and its gradients stay fp32
    assert {p.dtype for p in pm.parameters() if p.requires_grad} == {torch.float32}
    assert {p.grad.dtype for p in pm.parameters() if p.requires_grad} == {torch.float32}
    assert rel(h_ours, h_ref) < 2 * rel(h_peft, h_ref) + 1e-3
    ours = sum(rel(a, b) for a, b in zip(g_ours, g_ref)) / len(g_ref)
    peft = sum(rel(a, b) for a, b in zip(g_peft, g_ref)) / len(g_ref)
    assert ours < 1.5 * peft + 1e-3


def test_with_the_adapter_disabled_only_the_frozen_product_runs() -> None:
    pm = student()
    decoder = pm.get_base_model().get_decoder()
    with torch.no_grad():
        with pm.disable_adapter():
            parent = bake.packed_hidden(decoder, BATCH, "cpu")
        with grouped.grouped(pm, "cpu"):
            with pm.disable_adapter():
                ours = bake.packed_hidden(decoder, BATCH, "cpu")
            adapted = bake.packed_hidden(decoder, BATCH, "cpu")
    assert parent is not None and ours is not None and adapted is not None
    assert torch.equal(ours, parent)
    assert rel(adapted, parent) > 1e-3  # and the adapter's products again once it is enabled


def test_the_frozen_weights_get_their_own_storage_back() -> None:
    pm = student()
    attn = pm.get_base_model().get_decoder().layers[0].self_attn
    before = {n: getattr(attn, n).base_layer.weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj")}
    with grouped.grouped(pm, "cpu"):
        ptrs = {getattr(attn, n).base_layer.weight.untyped_storage().data_ptr() for n in before}
        assert len(ptrs) == 1  # one storage while grouped
        assert "forward" in vars(attn.q_proj)
    ptrs = {getattr(attn, n).base_layer.weight.untyped_storage().data_ptr() for n in before}
    assert len(ptrs) == 3
    assert "forward" not in vars(attn.q_proj)  # PEFT's forward again
    for n, w in before.items():
        assert torch.equal(getattr(attn, n).base_layer.weight, w)


def test_a_member_called_with_another_input_computes_its_own() -> None:
    pm = student()
    attn = pm.get_base_model().get_decoder().layers[0].self_attn
    x, y = torch.randn(1, 5, attn.q_proj.in_features), torch.randn(1, 5, attn.q_proj.in_features)
    with torch.no_grad():
        expected = (attn.q_proj(x), attn.k_proj(y), attn.v_proj(x), attn.k_proj(x))
        with grouped.grouped(pm, "cpu"):
            got = (attn.q_proj(x), attn.k_proj(y), attn.v_proj(x), attn.k_proj(x))
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "lora, why",
    [({"lora_dropout": 0.1}, "dropout"), ({"use_dora": True}, "DoRA"), ({"lora_bias": True}, "a bias on B")],
)
def test_what_peft_s_forward_handles_alone_is_left_to_it(lora: dict[str, Any], why: str) -> None:
    pm = student(**lora)
    with grouped.grouped(pm, "cpu") as n:
        assert n == 0, why
        assert not any("forward" in vars(m) for m in pm.modules())


def test_other_devices_and_the_switch_keep_peft_s_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = student()
    with grouped.grouped(pm, "meta") as n:
        assert n == 0
    monkeypatch.setattr(grouped, "ENABLED", False)
    with grouped.grouped(pm, "cpu") as n:
        assert n == 0


def test_a_bake_trains_with_grouped_layers_and_fused_adam(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same adapter either way (to the float rounding of another order of sums), and the bake's steps ran
    through the groups."""
    calls: list[tuple[int, bool]] = []  # each group's computation: its size, whether with grad (training)
    real = grouped.Group.compute

    def counting(self: grouped.Group, x: torch.Tensor) -> list[torch.Tensor]:
        calls.append((len(self.members), torch.is_grad_enabled()))
        return real(self, x)

    monkeypatch.setattr(grouped.Group, "compute", counting)
    cfg = Bake.model_validate({"name": "b", "datasets": [{"target": "t"}], "epochs": 2})
    adapters = []
    for on in (False, True):
        monkeypatch.setattr(grouped, "ENABLED", on)
        monkeypatch.setattr(bake, "FUSED_ADAM", on)
        m = models.load_base("tiny", device="cpu", dtype="fp32")
        baker = bake.Baker(m.model, m.tokenizer, cfg, "tiny")
        if on:
            assert baker._optimizer([torch.nn.Parameter(torch.zeros(2))]).defaults["fused"] is True
        baker.train(BATCH * 2, tmp_path / str(on))
        from safetensors.torch import load_file

        adapters.append(load_file(tmp_path / str(on) / "adapter_model.safetensors"))
        if not on:
            assert not calls
    assert {(3, True), (2, True), (1, True), (3, False)} <= set(calls)  # training passes and the teacher's
    off, on_ = adapters
    assert off.keys() == on_.keys()
    for k in off:
        assert rel(on_[k], off[k]) < 1e-3, k  # Adam moves near-zero gradients by a whole step either way


def test_siblings_of_another_scale_run_alone() -> None:
    """One scale is folded into the stacked A: a sibling whose LoRA scale differs is not grouped."""
    pm = student()
    attn = pm.get_base_model().get_decoder().layers[0].self_attn
    attn.k_proj.scaling["default"] = 3.0
    x = torch.randn(1, 5, attn.q_proj.in_features)
    with torch.no_grad():
        expected = [getattr(attn, n)(x) for n in ("q_proj", "k_proj", "v_proj")]
        with grouped.grouped(pm, "cpu"):
            first = [g for g in grouped.groups(pm) if attn.q_proj in g.members]
            got = [getattr(attn, n)(x) for n in ("q_proj", "k_proj", "v_proj")]
    assert len(first) == 1 and attn.k_proj not in first[0].members
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_layer_whose_bias_trains_is_left_to_peft() -> None:
    """BAKE's `bias: all` trains the frozen layers' biases: the group's joined bias would not pass their
    gradients on, so such a layer keeps PEFT's forward and its siblings group without it."""
    pm = student()
    attn = pm.get_base_model().get_decoder().layers[0].self_attn
    base = attn.k_proj.base_layer
    base.bias = torch.nn.Parameter(torch.zeros(base.out_features))
    found = grouped.groups(pm)
    assert not any(attn.k_proj in g.members for g in found)
    assert any(g.members == [attn.q_proj, attn.v_proj] for g in found)
    x = torch.randn(1, 5, attn.q_proj.in_features)
    with grouped.grouped(pm, "cpu"), torch.enable_grad():
        attn.k_proj(x).sum().backward()
    assert base.bias.grad is not None and base.bias.grad.abs().sum() > 0
