"""Frozen bf16 weights reordered once into oneDNN's blocked layout, for a CPU bake's products.

A bf16 product on the CPU runs through oneDNN's brgemm kernels, which want the weight in a blocked layout
of their own (pairs of rows interleaved, tiles of 16 or 32 columns). A plain `F.linear` hands oneDNN the
weight as PyTorch stores it, so every call first copies the whole weight into that layout: on a bake's
rows (a few hundred positions) that copy, streamed from memory for each of the model's 120 frozen
products a pass, costs about a tenth of the product. A LoRA bake never changes its frozen weights, so the
copy can be made once: `Prepacked` keeps the weight in oneDNN's layout for the forward product (x W^T) and
its transpose for the backward one (dy W), and multiplies through `torch.ops.mkldnn._linear_pointwise`,
the op PyTorch's own compiler emits for a frozen linear layer on the CPU. The products are the same,
bit for bit (checked once per process, `works`). The price is two more copies of the weights in memory
for as long as the bake runs, so `affordable` allows it only when they take a small share of the free
memory. Measured on SmolLM2's shapes with the weights streamed from memory as in a pass (30 layers):
151.6 ms against 135.4 for the forward products of 256 rows, 150.1 against 138.1 for the backward ones.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gitbake.engine import activations, knobs

ENABLED = knobs.switch("GITBAKE_PREPACKED")  # 0: every frozen product hands oneDNN PyTorch's layout
SHARE = 0.125  # prepack when both copies take at most this share of the free memory
_HINT = 256  # the rows oneDNN lays the weight out for; any number of rows multiplies by it


def _op(name: str) -> object | None:
    return getattr(getattr(torch.ops, "mkldnn", None), name, None)


@functools.cache
def works() -> bool:
    """Whether this PyTorch has the ops and their products are `F.linear`'s, bit for bit, both ways."""
    if not ENABLED or not torch.backends.mkldnn.is_available():
        return False
    if _op("_reorder_linear_weight") is None or _op("_linear_pointwise") is None:
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(48, 32, generator=gen).to(torch.bfloat16)
        x = torch.randn(5, 32, generator=gen).to(torch.bfloat16)
        dy = torch.randn(5, 48, generator=gen).to(torch.bfloat16)
        p = Prepacked.of(w, None)
        return torch.equal(p.forward(x), F.linear(x, w)) and torch.equal(p.backward(dy), dy @ w)
    except (RuntimeError, TypeError, NotImplementedError):  # a build without oneDNN's bf16 kernels
        return False


def eligible(weight: torch.Tensor) -> bool:
    """A frozen bf16 weight on the CPU, where this PyTorch prepacks exactly."""
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not weight.requires_grad and works()


def wanted(weights: list[torch.Tensor]) -> bool:
    """Whether to prepack these weights: every one `eligible`, and all of them `affordable` together."""
    return all(eligible(w) for w in weights) and affordable(sum(w.numel() * w.element_size() for w in weights))


def affordable(nbytes: int) -> bool:
    """Whether two more copies of `nbytes` of weights fit in this host's free memory (`fits`)."""
    return fits(nbytes, activations.available_bytes())


def fits(nbytes: int, free: int | None) -> bool:
    """Whether two more copies of `nbytes` take at most SHARE of `free` bytes (unknown: no)."""
    return free is not None and 2 * nbytes <= SHARE * free


@dataclass(frozen=True)
class Prepacked:
    """A frozen weight [out, in] (and bias) in oneDNN's layout for `x W^T + b` and for `dy W`."""

    forward_weight: torch.Tensor
    backward_weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Prepacked:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        with torch.no_grad():
            w = weight.detach()
            return cls(reorder(w, _HINT), reorder(w.t().contiguous(), _HINT), None if bias is None else bias.detach())

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, in] -> rows W^T + b [M, out]."""
        return _product(rows, self.forward_weight, self.bias)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """grad [M, out] -> grad W [M, in]."""
        return _product(grad, self.backward_weight, None)


def _product(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows by a weight `_reorder_linear_weight` laid out (and bias), through oneDNN with no post-op."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), packed, bias, "none", [], "")
    return out
