"""A LoRA layer's training pass as one autograd function (docs/engine.md, *bake*).

PEFT's LoRA layer computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`. Under the bake's autocast
that is, forward, the frozen product, a cast of each fp32 adapter weight, two rank-r products, a scale of
the full [rows, out] output and an add; backward about twice as many ops, each dispatched on its own. A
bf16 step of SmolLM2-135M on a 2-core CPU runs about 12,000 such ops, and the small ones cost their
dispatch, not their arithmetic. Here the scale goes on the rank-r side (`x A^T s`, [rows, r]), the
adapter's product is added into the base product's output in place, and the backward is in closed form:

    dx = g W + (g B s) A,    dA = (g B s)^T x,    dB = g^T (x A^T s)

The same products in the same precision (the weights' gradients come back in fp32, as autocast's casts
give them), for about half the ops. On the french bake's rows it trained about 6% faster (docs/engine.md).

Used for the training pass only: where the layer is a plain `nn.Linear` under one vanilla adapter without
dropout, with grad enabled and the input in the base weight's dtype. Anything else (the teacher with the
adapter disabled, eval under no_grad, DoRA, dropout, several adapters) takes PEFT's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear


class _LoraProduct(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)  # fp32 adapter weights in the activations' precision
        xa = torch.mm(x2, a.t()).mul_(scale)  # [rows, r]: the scale where it is cheapest
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias.to(x.dtype), x2, weight.t())
        y.addmm_(xa, b.t())
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scale, ctx.shape = scale, shape
        ctx.dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, a, b, xa = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
        gb = torch.mm(g, b).mul_(ctx.scale)  # [rows, r]
        gx = torch.mm(g, weight).addmm_(gb, a).view(ctx.shape) if ctx.needs_input_grad[0] else None
        ga = torch.mm(gb.t(), x2).to(ctx.dtypes[0]) if ctx.needs_input_grad[3] else None
        gbw = torch.mm(g.t(), xa).to(ctx.dtypes[1]) if ctx.needs_input_grad[4] else None
        return gx, None, None, ga, gbw, None


class FusedLoraLinear(LoraLinear):  # type: ignore[misc]
    """PEFT's LoRA `Linear` whose training pass is `_LoraProduct`; every other pass is PEFT's."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._fusable(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)  # type: ignore[no-any-return]
        base = self.get_base_layer()
        result: torch.Tensor = _LoraProduct.apply(
            x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name])
        )
        return result

    def _fusable(self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The one active adapter's name when this pass can be fused, else None."""
        if args or kwargs or not torch.is_grad_enabled() or self.disable_adapters or self.merged:
            return None
        active = self.active_adapters
        if len(active) != 1 or active[0] not in self.lora_A or active[0] in self.lora_variant:
            return None
        name = active[0]
        base = self.get_base_layer()
        if not isinstance(base, torch.nn.Linear) or self.fan_in_fan_out:
            return None
        if not isinstance(self.lora_dropout[name], torch.nn.Identity) or x.dtype != base.weight.dtype:
            return None
        return str(name)


def install(model: Any) -> int:
    """Give every plain LoRA `Linear` of a PEFT `model` the fused training pass; returns how many. The
    modules stay PEFT's (a subclass: saving, merging and disabling the adapter are unchanged)."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
