"""LoRA layers that read the same input, run as one set of products in a bake's passes on the CPU.

A decoder layer's attention projects its input three times (`q_proj`, `k_proj`, `v_proj`) and its MLP
twice (`gate_proj`, `up_proj`). Under PEFT each projection is a LoRA layer of its own: the frozen product,
the rank-8 products by A and then B, a pass that scales their result and one that adds it, and as many
again backward. On the CPU a bake's rows are a few hundred positions, where the frozen products run
below the machine's peak (the narrower the weight, the further: `k_proj` and `v_proj` are 192 wide on
SmolLM2) and the rank-8 ones are overhead-bound (33-88 µs a call, docs/engine.md §§§).

Within `grouped(model)` a group of siblings runs as one product of the input by the group's frozen weights
side by side (their storage made one, the members' weights views of it, for as long as the context
lasts), one by the members' A matrices stacked, with LoRA's scale folded in (a [3r, in] matrix), one
`addmm` of that by their B matrices as a block diagonal onto the frozen product, and a split. The other
LoRA layers (`o_proj`, `down_proj`: groups of one) run the same way, without PEFT's separate scale and
add. It is LoRA's arithmetic (the block diagonal's zeros add nothing), in fewer, larger products; the
frozen weights' storage is put back as it was at the end.

A group's products run as one autograd function (`_Product`) whose backward is LoRA's in closed form: the
frozen weight's product by the gradient plus the rank-8 ones, with no cast, scale, block diagonal or
split of its own for autograd to record and undo (each was an operation forward and another back, for
every group of every layer). Where the frozen weights are bf16 on the CPU and memory allows, they are
multiplied in oneDNN's own layout, reordered once for the bake (engine/prepacked.py).

The first member of a group that is called computes every member's output for that input and keeps the
others' until they are asked for with the same tensor, as a decoder layer does right after; a member
called with another input computes the group again. With the adapter disabled (the teacher's pass) only
the frozen product runs. Anything PEFT's own forward handles that this does not (dropout, DoRA and other
variants, a bias on B, several active adapters, merged weights, extra arguments) leaves the layer to
PEFT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gitbake.engine import knobs, prepacked

ENABLED = knobs.switch("GITBAKE_GROUPED_LORA")  # 0: PEFT's own forward for every LoRA layer
# sibling projections of one module that read the same input, in the order a decoder layer calls them
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(eq=False)
class Group:
    """LoRA layers (PEFT's `lora.Linear`) of one module that read the same input, run as one."""

    members: list[Any]
    adapter: str
    widths: list[int] = field(init=False)
    weight: torch.Tensor = field(init=False)  # [sum of widths, in] (join): the members' frozen weights' rows
    bias: torch.Tensor | None = field(init=False, default=None)
    packed: prepacked.Prepacked | None = field(init=False, default=None)  # `weight` in oneDNN's layout
    # the input last computed for, its version, and the outputs no member has taken yet
    pending: tuple[torch.Tensor, int, list[torch.Tensor | None]] | None = None

    def __post_init__(self) -> None:
        self.widths = [m.base_layer.out_features for m in self.members]

    def join(self, prepack: bool = False) -> None:
        """Make the members' frozen weights (and biases) rows of one storage, for as long as `release` is
        not called: one product reads them all, without a second copy of the weights. `prepack`: also
        keep them in oneDNN's layout (engine/prepacked.py) until then."""
        bases = [m.base_layer for m in self.members]
        if len(bases) == 1:
            self.weight, self.bias = bases[0].weight, bases[0].bias
        else:
            with torch.no_grad():
                self.weight = torch.cat([b.weight for b in bases])
                zeros = [b.bias if b.bias is not None else self.weight.new_zeros(w) for b, w in zip(bases, self.widths)]
                self.bias = torch.cat(zeros) if any(b.bias is not None for b in bases) else None
            start = 0
            for b, width in zip(bases, self.widths):  # one storage, not two copies of the weights
                b.weight.data = self.weight[start : start + width]
                if b.bias is not None and self.bias is not None:
                    b.bias.data = self.bias[start : start + width]
                start += width
        if prepack:
            self.packed = prepacked.Prepacked.of(self.weight, self.bias)

    def release(self) -> None:
        """Give each member's frozen weight a storage of its own again."""
        self.pending, self.packed = None, None
        if len(self.members) > 1:
            for m in self.members:
                b = m.base_layer
                b.weight.data = b.weight.data.clone()
                if b.bias is not None:
                    b.bias.data = b.bias.data.clone()

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member `index`'s output for `x`: kept from the group's last computation on this very input, or
        computed now with the rest of the group's."""
        p = self.pending
        if p is not None and p[0] is x and p[1] == x._version and p[2][index] is not None:
            out, p[2][index] = p[2][index], None
            if all(o is None for o in p[2]):
                self.pending = None
            return out  # type: ignore[return-value]
        outs: list[torch.Tensor | None] = list(self.compute(x))
        out, outs[index] = outs[index], None
        self.pending = (x, x._version, outs) if len(outs) > 1 else None
        return out  # type: ignore[return-value]

    def compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every member's output for `x` (views of one [.., sum of widths] result)."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        lora: list[torch.Tensor] = []
        scale = 0.0
        if not any(m.disable_adapters for m in self.members):
            ad = self.adapter
            lora = [m.lora_A[ad].weight for m in self.members] + [m.lora_B[ad].weight for m in self.members]
            scale = float(self.members[0].scaling[ad])
        y = _Product.apply(rows, self, scale, *lora)
        if len(self.widths) == 1:
            return [y.view(*lead, self.widths[0])]
        return [piece.view(*lead, w) for piece, w in zip(y.split(self.widths, dim=-1), self.widths)]

    def frozen(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, in] by the frozen weights (and biases): [M, sum of widths]."""
        if self.packed is not None:
            return self.packed.forward(rows)
        return F.linear(rows, self.weight, self.bias)

    def frozen_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The frozen product's gradient with respect to its rows: grad [M, sum of widths] -> [M, in]."""
        if self.packed is not None:
            return self.packed.backward(grad)
        return grad @ self.weight


class _Product(torch.autograd.Function):
    """A group's output: its frozen product plus, given the members' A then B matrices, LoRA's
    (rows A^T s) B^T, the members' A stacked and their B as a block diagonal; the backward in closed form.

    The adapter's products run in the rows' precision (a bf16 base's, as autocast ran them) from the fp32
    weights, and their gradients come back in the weights' own precision, as autocast's casts gave them."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, group: Group, scale: float, *lora: torch.Tensor) -> torch.Tensor:
        n = len(lora) // 2
        y = group.frozen(rows)
        ctx.group, ctx.scale, ctx.dtypes = group, scale, [t.dtype for t in lora]
        if not n:
            return y
        a = (torch.cat(lora[:n]) if n > 1 else lora[0]).mul(scale).to(rows.dtype)  # [n r, in]
        b = (torch.block_diag(*lora[n:]) if n > 1 else lora[n]).to(rows.dtype)  # [sum of widths, n r]
        xa = F.linear(rows, a)
        y.addmm_(xa, b.t())
        ctx.save_for_backward(rows, xa, a, b)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        group, scale, dtypes = ctx.group, ctx.scale, ctx.dtypes
        n = len(dtypes) // 2
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        dx = group.frozen_grad(grad) if need[0] else None
        if not n:
            return (dx, None, None)
        rows, xa, a, b = ctx.saved_tensors
        d_a: list[torch.Tensor | None] = [None] * n
        d_b: list[torch.Tensor | None] = [None] * n
        if need[0] or any(need[3 : 3 + n]):
            t = grad @ b  # the gradient at the rank-r products: [M, n r]
            if dx is not None:
                dx.addmm_(t, a)
            if any(need[3 : 3 + n]):
                stacked = (t.t() @ rows).to(dtypes[0]).mul_(scale)  # the stacked A's, the scale applied
                r = stacked.shape[0] // n
                d_a = [stacked[i * r : (i + 1) * r].to(dtypes[i]) if need[3 + i] else None for i in range(n)]
        start = 0
        r = xa.shape[1] // n
        for i, width in enumerate(group.widths):
            if need[3 + n + i]:
                d_b[i] = (grad[:, start : start + width].t() @ xa[:, i * r : (i + 1) * r]).to(dtypes[n + i])
            start += width
        return (dx, None, None, *d_a, *d_b)


def _plain(module: Any) -> str | None:
    """The adapter of a LoRA layer this module can run, or None where PEFT's own forward must."""
    from peft.tuners.lora import Linear

    if not isinstance(module, Linear) or not isinstance(module.base_layer, torch.nn.Linear) or module.merged:
        return None
    if len(module.active_adapters) != 1:
        return None
    ad = module.active_adapters[0]
    if (
        ad not in module.lora_A
        or ad in getattr(module, "lora_variant", {})
        or not isinstance(module.lora_dropout[ad], torch.nn.Identity)
        or module.lora_B[ad].bias is not None
        or module.base_layer.weight.requires_grad
        or (module.base_layer.bias is not None and module.base_layer.bias.requires_grad)  # BAKE's `bias: all`
        or getattr(module, "fan_in_fan_out", False)
    ):
        return None
    return str(ad)


def groups(model: Any) -> list[Group]:
    """The model's LoRA layers that `grouped` runs, siblings together."""
    found: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, module in model.named_modules():
        ad = _plain(module)
        if ad is not None:
            parent, _, leaf = name.rpartition(".")
            found.setdefault(parent, {})[leaf] = (module, ad)
    out: list[Group] = []
    for layers in found.values():
        for names in SIBLINGS:
            members = [layers[n] for n in names if n in layers]
            base = members[0][0].base_layer.weight if members else None
            if len(members) > 1 and all(
                a == members[0][1]
                and m.base_layer.in_features == members[0][0].base_layer.in_features
                and m.scaling[a] == members[0][0].scaling[a]  # one scale, folded into the stacked A
                and m.base_layer.weight.dtype == base.dtype  # type: ignore[union-attr]
                and m.base_layer.weight.device == base.device  # type: ignore[union-attr]
                for m, a in members
            ):
                out.append(Group([m for m, _ in members], members[0][1]))
                for n in names:
                    layers.pop(n, None)
        out += [Group([m], a) for m, a in layers.values()]
    return out


@contextlib.contextmanager
def grouped(model: Any, device: Any) -> Iterator[int]:
    """Within: the model's LoRA layers run as groups (the module docstring), on the CPU and where
    GITBAKE_GROUPED_LORA is not 0; yields how many layers do. Each member's forward is its group's; PEFT's
    is back after, and so is each frozen weight's own storage."""
    if not ENABLED or torch.device(device).type != "cpu":
        yield 0
        return
    found = groups(model)
    weights = [m.base_layer.weight for g in found for m in g.members]
    prepack = prepacked.wanted(weights)
    patched: list[Any] = []
    try:
        for g in found:
            g.join(prepack)
            for i, m in enumerate(g.members):
                m.forward = _forward(m, g, i)
                patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)  # PEFT's class forward again (should anything have reset it first)
        for g in found:
            g.release()


def _forward(module: Any, group: Group, index: int) -> Any:
    peft_forward = type(module).forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or module.merged or x.dtype != group.weight.dtype or _needs_cast(module, group.adapter, x):
            return peft_forward(module, x, *args, **kwargs)  # type: ignore[no-any-return]
        return group.output(index, x)

    return forward


def _needs_cast(module: Any, adapter: str, x: torch.Tensor) -> bool:
    """Whether PEFT would cast the input to the adapter's dtype (no autocast to run both in one)."""
    return (
        not module.disable_adapters
        and x.dtype != module.lora_A[adapter].weight.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )
