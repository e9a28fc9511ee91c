"""A CPU bake's frozen bf16 weights multiplied in oneDNN's own layout (engine/prepacked.py): the same
products bit for bit, both ways, and plain products wherever the weights are not bf16, memory is short or
the switch is off."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch
import torch.nn.functional as F

from gitbake.engine import grouped, prepacked
from tests.func.test_grouped import pass_and_grads, student


def test_this_pytorch_prepacks_exactly() -> None:
    assert prepacked.works()


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_prepacked_products_are_plain_products_bit_for_bit(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 64, generator=gen).to(torch.bfloat16)
    bias = torch.randn(96, generator=gen).to(torch.bfloat16)
    x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
    dy = torch.randn(rows, 96, generator=gen).to(torch.bfloat16)
    p = prepacked.Prepacked.of(w, bias)
    assert torch.equal(p.forward(x), F.linear(x, w, bias))
    assert torch.equal(p.backward(dy), dy @ w)
    assert torch.equal(p.forward(x.t().contiguous().t()), F.linear(x, w, bias))  # any strides: made contiguous


def test_only_frozen_bf16_weights_on_the_cpu_are_eligible() -> None:
    w = torch.zeros(4, 4, dtype=torch.bfloat16)
    assert prepacked.eligible(w)
    assert not prepacked.eligible(w.float())
    assert not prepacked.eligible(torch.nn.Parameter(w))  # trained weights change every step
    assert not prepacked.eligible(w.to("meta"))


def test_two_copies_must_fit_in_a_small_share_of_the_free_memory() -> None:
    assert prepacked.fits(100, int(2 * 100 / prepacked.SHARE))
    assert not prepacked.fits(101, int(2 * 100 / prepacked.SHARE))
    assert not prepacked.fits(1, None)  # free memory unknown


def counting(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    real = prepacked.Prepacked.of

    def of(weight: torch.Tensor, bias: torch.Tensor | None) -> prepacked.Prepacked:
        made.append(weight.shape)
        return real(weight, bias)

    monkeypatch.setattr(prepacked.Prepacked, "of", of)
    return made


def test_a_bf16_bake_s_groups_run_prepacked_with_the_same_states_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = counting(monkeypatch)
    pm = student("bf16")
    layers = len(pm.get_base_model().get_decoder().layers)
    with grouped.grouped(pm, "cpu"):
        h_packed, g_packed = pass_and_grads(pm, autocast=True)
    assert len(made) == 4 * layers  # every group: q/k/v, o, gate/up, down
    monkeypatch.setattr(prepacked.activations, "available_bytes", lambda device=None: 1024)  # memory is short
    with grouped.grouped(pm, "cpu"):
        h_plain, g_plain = pass_and_grads(pm, autocast=True)
    assert len(made) == 4 * layers  # none more
    assert torch.equal(h_packed, h_plain)
    for a, b in zip(g_packed, g_plain):
        assert torch.equal(a, b)


def test_fp32_weights_and_the_switch_keep_plain_products(monkeypatch: pytest.MonkeyPatch) -> None:
    made = counting(monkeypatch)
    with grouped.grouped(student(), "cpu") as n:
        assert n
    assert not made  # fp32: PyTorch's own products
    monkeypatch.setattr(prepacked, "ENABLED", False)
    prepacked.works.cache_clear()
    try:
        with grouped.grouped(student("bf16"), "cpu") as n:
            assert n
        assert not made
    finally:
        monkeypatch.undo()
        prepacked.works.cache_clear()
