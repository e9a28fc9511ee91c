"""bake: train a LoRA adapter so the student (parent + LoRA, student context) matches the teacher
(the parent, teacher context, adapter disabled, no grad) token by token (docs/engine.md).

Alignment: for a trajectory with teacher prompt length Lt, student prompt length Ls and response y, the
teacher's hidden state at Lt-1+j and the student's at Ls-1+j both predict y_j — the standard shift, so the
first response token is supervised and the end-of-turn token is a target; padding never is.
The loss is the divergence (forward KL by default) summed over a step's response tokens and divided by
the tokens a step holds on average, so every response token weighs the same; in fp32, in chunks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gitbake.contract.config import Bake
from gitbake.engine import attention, grouped, kl, knobs, parallel, trainstate
from gitbake.engine.ds import zero_stage
from gitbake.engine.infer import cache_arg
from gitbake.errors import GitbakeError, UsageError
from gitbake.reporter import Reporter

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterError(GitbakeError):
    """A trained adapter failed its checks and was not stored."""


@dataclass
class Trajectory:
    teacher_ids: list[int]
    student_ids: list[int]
    response_ids: list[int]
    dataset: int = 0

    def truncated(self, max_length: int) -> Trajectory | None:
        room = min(max_length - len(self.teacher_ids), max_length - len(self.student_ids))
        if room <= 0 or not self.response_ids:
            return None
        return Trajectory(self.teacher_ids, self.student_ids, self.response_ids[:room], self.dataset)

    @property
    def length(self) -> int:
        return max(len(self.teacher_ids), len(self.student_ids)) + len(self.response_ids)


@dataclass
class BakeResult:
    adapter_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    trajectories: int = 0
    tokens: int = 0
    seconds: float = 0.0  # the training loop's
    teacher_seconds: float = 0.0  # the teacher's pass before it (its states or top-k, once per bake)
    packed: bool = False  # the student's micro-batches ran as packed rows (Packed)
    notes: list[str] = field(default_factory=list)
    resumed_from: int | None = None


# ------------------------------------------------------------------------------------------ data


def select(
    datasets: Sequence[tuple[Sequence[Trajectory], float]], total: int | None, seed: int, reporter: Reporter
) -> list[Trajectory]:
    """Weighted sampling across targets. Each dataset gets its share `total * weight / sum(weights)` of
    the trajectories (largest remainders, so the shares add up to `total`), drawn without replacement
    while they last, then with replacement: weights are sampling weights, as in bgit. With no `total`:
    one dataset is used whole; several are mixed by weight at their combined size."""
    rng = random.Random(seed)
    available = sum(len(d) for d, _ in datasets)
    if total is not None and total > available:
        reporter.note(f"total_trajectories is {total} but only {available} exist: drawing {available}")
        total = available
    if total is None and len(datasets) == 1:
        return list(datasets[0][0])
    total = total if total is not None else available
    weight_sum = sum(w for _, w in datasets) or 1.0
    exact = [total * w / weight_sum for _, w in datasets]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    out: list[Trajectory] = []
    for (items, _w), want in zip(datasets, shares):
        pool = list(items)
        rng.shuffle(pool)
        if want <= len(pool):
            out += pool[:want]
        elif pool:
            out += pool + [rng.choice(pool) for _ in range(want - len(pool))]
            reporter.note(f"a dataset of {len(pool)} trajectories was drawn {want} times by its weight (with repeats)")
    return out


def batches(items: Sequence[Trajectory], size: int, seed: int) -> list[list[Trajectory]]:
    """Shuffled, then bucketed by length within windows, so a batch pads little but order still varies."""
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    window = size * 16
    out: list[list[Trajectory]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda t: t.length)
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(out)
    return out


def tokens_per_micro_batch(data: Sequence[Trajectory], size: int) -> float:
    """The response tokens a micro-batch of `data` holds on average: what a micro-batch's summed loss is
    divided by (times the step's micro-batches).

    So every response token of the training data weighs the same in the bake, as every held-out token
    does in the eval's mean KL. Each micro-batch's own mean would weigh a token by one over its batch's
    tokens, and batches are bucketed by length: a token of four 5-token answers would count 50 times one
    of four 250-token answers, the long answers' later positions (most of the tokens) hardly at all. On
    SmolLM2 the french bake closed 0.869 of the held-out gap this way against 0.850 (docs/engine.md)."""
    return max(sum(len(t.response_ids) for t in data) / math.ceil(len(data) / size), 1.0)


def response_hidden(
    decoder: Any,
    batch: Sequence[Trajectory],
    side: str,
    pad_id: int,
    device: Any,
    prefix: Prefix | None = None,
    checkpointed: bool = False,
) -> torch.Tensor:
    """Hidden states at the positions that predict each response token, row-aligned across sides: [N, H].

    `prefix`: the first `prefix.length` tokens of every sequence, already run (their keys and values):
    only the rest is computed. The states are the same, as attention is causal. `checkpointed`: as for
    `packed_hidden`."""
    skip = prefix.length if prefix is not None else 0
    prompts = [t.teacher_ids if side == "teacher" else t.student_ids for t in batch]
    seqs = [(p + t.response_ids[:-1])[skip:] for p, t in zip(prompts, batch)]
    width = max(len(s) for s in seqs)
    if kl.low_precision(next(decoder.parameters())):
        # oneDNN compiles a kernel for every product shape it meets (and caches a few dozen): widths rounded
        # up to a multiple of 16 keep a bake to a handful of shapes, for a few padded positions
        limit = getattr(getattr(decoder, "config", None), "max_position_embeddings", None)
        rounded = -(-width // 16) * 16
        width = rounded if not isinstance(limit, int) or skip + rounded <= limit else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), skip + width), dtype=torch.long)
    for row, s in enumerate(seqs):  # right padding: positions of the real tokens stay 0..len-1
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : skip + len(s)] = 1
    extra: dict[str, Any] = {"use_cache": False}
    if prefix is not None:
        extra = {"use_cache": True, prefix.arg: prefix.for_batch(len(seqs))}
    with attention.for_pass(decoder, skip + width, device, checkpointed):
        out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), **extra)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    rows = []
    for row, (p, t) in enumerate(zip(prompts, batch)):
        start = len(p) - 1 - skip
        rows.append(hidden[row, start : start + len(t.response_ids)])
    return torch.cat(rows)


FUSED_ADAM = knobs.switch("GITBAKE_FUSED_ADAM")  # 0: PyTorch's default Adam(W) implementation
PACK_MAX = knobs.number("GITBAKE_PACK_MAX", 1024)  # the longest packed row (its mask is dense)
PACKING = knobs.switch("GITBAKE_PACKING")
PACK_TOLERANCE = 0.02  # packing_is_exact's bound on pack_error


def shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many first tokens every prompt shares, short of the last prompt token (the position before the
    first response token is a row each sequence needs of its own)."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return max(n, 0)


@dataclass(frozen=True)
class Packed:
    """A micro-batch as one row: the prompts' shared prefix once, then each sequence's rest. Each rest
    attends to the prefix and causally to itself (a block mask), at the positions it has in its own
    sequence, so every state is the one the sequence has alone. Nothing is padded, and the shared prefix
    (a chat template's default system prompt: 24 of a SmolLM2 student prompt's 37 tokens) runs once."""

    ids: list[int]
    positions: list[int]
    segments: list[int]  # -1: the shared prefix; i: the i-th sequence's rest
    rows: list[int]  # the packed positions whose states predict the response tokens, in batch order

    @classmethod
    def of(cls, batch: Sequence[Trajectory], pad_id: int = 0, multiple: int = 1) -> Packed:
        """The student's sequences of `batch`. `multiple`: the row's length is rounded up to it with `pad_id`
        tokens in a segment of their own (-2), which no real position sees."""
        prompts = [t.student_ids for t in batch]
        n = shared_length(prompts)
        ids, positions, segments = list(prompts[0][:n]), list(range(n)), [-1] * n
        rows: list[int] = []
        for i, (p, t) in enumerate(zip(prompts, batch)):
            rest = (p + t.response_ids[:-1])[n:]
            start = len(ids)
            rows += range(start + len(p) - 1 - n, start + len(p) - 1 - n + len(t.response_ids))
            ids += rest
            positions += range(n, n + len(rest))
            segments += [i] * len(rest)
        pad = -len(ids) % multiple
        return cls(ids + [pad_id] * pad, positions + [0] * pad, segments + [-2] * pad, rows)

    def mask(self, dtype: Any, boolean: bool, device: Any) -> torch.Tensor:
        """[1, 1, L, L]: a query sees a key in the shared prefix or earlier in its own segment. Boolean for
        SDPA (True: attend); additive (0 or the dtype's minimum) for attention that adds its mask."""
        seg = torch.tensor(self.segments, device=device)
        idx = torch.arange(len(self.segments), device=device)
        allowed = (idx[None, :] <= idx[:, None]) & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None]))
        if boolean:
            return allowed[None, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)[
            None, None
        ]


def packed_hidden(
    decoder: Any, batch: Sequence[Trajectory], device: Any, pad_id: int = 0, checkpointed: bool = False
) -> torch.Tensor | None:
    """The student's `response_hidden` states ([N, H], the same rows in the same order), from one packed
    row; None when that row would be longer than PACK_MAX (its dense mask, and the attention it wastes
    across segments, would cost more than padding saves): the caller runs the padded batch.
    `checkpointed`: activation checkpointing recomputes this pass in backward (attention.for_pass)."""
    weight = next(decoder.parameters())
    # bf16 on the CPU: lengths rounded up to a multiple of 16 keep oneDNN to a few kernels (response_hidden)
    pack = Packed.of(batch, pad_id, 16 if kl.low_precision(weight) else 1)
    if len(pack.ids) > PACK_MAX:
        return None
    kind = torch.device(device).type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype  # attention's
    with attention.for_pass(decoder, len(pack.ids), device, checkpointed):
        sdpa = getattr(getattr(decoder, "config", None), "_attn_implementation", None) == "sdpa"
        out = decoder(
            input_ids=torch.tensor([pack.ids], dtype=torch.long, device=device),
            attention_mask=pack.mask(dtype, sdpa, device),
            position_ids=torch.tensor([pack.positions], dtype=torch.long, device=device),
            use_cache=False,
        )
    hidden: torch.Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[0, torch.tensor(pack.rows, device=hidden.device)]


def packing_is_exact(decoder: Any, batch: Sequence[Trajectory], pad_id: int, device: Any) -> bool:
    """Whether this decoder gives a packed row the states of the padded batch: it honours a custom 4D mask
    and position ids (transformers' Llama, Qwen, Gemma, ... do; a model that builds its own mask would
    not). Checked once per bake on a micro-batch, no grad; otherwise the bake runs padded batches."""
    if not PACKING or not batch:
        return False
    with torch.no_grad():
        try:
            packed = packed_hidden(decoder, batch, device, pad_id)
        except (TypeError, ValueError, RuntimeError):  # a decoder that refuses the mask or the positions
            return False
        if packed is None:  # too long to tell: such batches run padded anyway
            return False
        padded = response_hidden(decoder, batch, "student", pad_id, device)
    return packed.shape == padded.shape and pack_error(packed.float(), padded.float()) < PACK_TOLERANCE


def pack_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference over mean magnitude: a few thousandths from bf16's rounding, and of order 1
    when a model ignores the mask or the positions (the rows then see other sequences, or other places)."""
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


PREFIX_MIN = 16  # a shared prefix shorter than this is not worth a cache
PREFIX_CACHE = knobs.switch("GITBAKE_PREFIX_CACHE")


@dataclass
class Prefix:
    """A run of tokens that begins every teacher sequence of a group (the teacher's system prompt, the
    same for every question of a target), run through the teacher once; its keys and values are reused."""

    length: int
    cache: Any
    arg: str  # the cache's name in the decoder's forward

    @classmethod
    def of(cls, decoder: Any, group: Sequence[Trajectory], device: Any) -> Prefix | None:
        n = shared_length([t.teacher_ids for t in group])
        if n < PREFIX_MIN:
            return None
        ids = torch.tensor([group[0].teacher_ids[:n]], dtype=torch.long, device=device)
        out = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        arg = cache_arg(decoder)
        cache = getattr(out, arg, None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None  # a decoder without a reusable cache: every sequence is run whole
        return cls(n, cache, arg)

    def for_batch(self, rows: int) -> Any:
        # a fresh copy each time: the forward appends the batch's own keys and values to it
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


TEACHER_CACHE_MB: float = knobs.number("GITBAKE_TEACHER_CACHE_MB", 2048)


def teacher_states(
    decoder: Any,
    data: Sequence[Trajectory],
    pad_id: int,
    device: Any,
    batch_size: int,
    budget_mb: float = TEACHER_CACHE_MB,
    label: str = "bake",
    reporter: Reporter | None = None,
) -> dict[int, torch.Tensor] | None:
    """The teacher's hidden states at every response position, computed once for the whole bake.

    The teacher is frozen, so its states are the same in every epoch: recomputing them each epoch (as a
    frozen teacher copy does) spends a forward pass per trajectory per epoch for nothing. The states of
    the final layer (after its norm) are kept, not log-probs: H numbers per position instead of V, kept in
    host memory and exact. Trajectories are run sorted by teacher length, so the batches pad little.
    None when they would take more than `budget_mb` (the bake then runs the teacher batch by batch)."""
    if not states_fit(decoder, data, budget_mb):
        return None
    # one group per target: its trajectories share the teacher's prompt, run once as a cached prefix
    groups: dict[int, list[Trajectory]] = {}
    for t in data:
        groups.setdefault(t.dataset, []).append(t)
    progress = (reporter or Reporter()).progress(
        f"{label}: teacher", sum(math.ceil(len(g) / batch_size) for g in groups.values()), unit="batch"
    )
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for group in groups.values():
            order = sorted(group, key=lambda t: len(t.teacher_ids) + len(t.response_ids))
            prefix = Prefix.of(decoder, order, device) if PREFIX_CACHE else None
            for i in range(0, len(order), batch_size):
                chunk = order[i : i + batch_size]
                hidden = response_hidden(decoder, chunk, "teacher", pad_id, device, prefix).cpu()
                offset = 0
                for t in chunk:
                    n = len(t.response_ids)
                    out[id(t)] = hidden[offset : offset + n].clone()  # its own storage: the batch's is freed
                    offset += n
                progress.update()
    return out


def states_fit(decoder: Any, data: Sequence[Trajectory], budget_mb: float = TEACHER_CACHE_MB) -> bool:
    """Whether the teacher's states at every response position of `data` fit in `budget_mb` of host memory."""
    width = _hidden_size(decoder)
    if width is None:
        return False
    itemsize = torch.empty((), dtype=next(decoder.parameters()).dtype).element_size()
    return sum(len(t.response_ids) for t in data) * width * itemsize <= budget_mb * 2**20


def _hidden_size(decoder: Any) -> int | None:
    conf = getattr(decoder, "config", None)
    value = getattr(conf, "hidden_size", None)
    return int(value) if isinstance(value, int) else None


# -------------------------------------------------------------------------------------- training


def student_precision(pm: Any, casting: bool = True) -> contextlib.AbstractContextManager[Any]:
    """Where the student's forward runs: in a bf16 or fp16 base model's own precision. PEFT keeps the LoRA
    weights in fp32 and casts each LoRA layer's input up to them, so every adapted layer added fp32 copies
    and fp32 products of full activations, forward and back. Under autocast, with that cast turned off, the
    LoRA products run in the base's precision, while the weights, their gradients and the optimizer stay
    fp32 (mixed precision as usual). On SmolLM2 in bf16 that made training steps about a fifth faster
    (docs/engine.md). An fp32 model is left as it is. `casting=False`: the caller has turned PEFT's cast
    off already (`input_casting_off`, once for a whole bake: turning it off walks every module)."""
    dtype = pm.get_base_model().dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(next(pm.parameters()).device.type, dtype=dtype))
    if casting:
        stack.enter_context(input_casting_off(pm))
    return stack


def input_casting_off(pm: Any) -> contextlib.AbstractContextManager[Any]:
    """PEFT's cast of each LoRA layer's input to the adapter's dtype turned off, for a bf16 or fp16 base
    (`student_precision`)."""
    if pm.get_base_model().dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(pm)  # type: ignore[no-any-return]


class Baker:
    model: Any  # the PEFT model after training: adapter enabled = baked, disabled = parent

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: Bake,
        base_name: str,
        reporter: Reporter | None = None,
    ) -> None:
        self.parent = model
        self.tokenizer = tokenizer
        self.cfg = config
        self.base_name = base_name
        self.reporter = reporter or Reporter()
        self.device = next(model.parameters()).device
        self.checkpointed = False  # whether the student's activations are checkpointed (set by _peft)
        if kl.low_precision(next(model.parameters())):
            from gitbake.engine.models import limit_onednn_caches

            limit_onednn_caches()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    # the PEFT student wraps the parent; the teacher is the same model with the adapter disabled
    def _peft(self, data: Sequence[Trajectory] = ()) -> Any:
        from peft import LoraConfig, get_peft_model

        m = self.cfg.model
        if m.student_model_path:
            raise UsageError(
                "BAKE.model.student_model_path (distilling into a different model) is not supported yet",
                "remove it: the baked model is the parent model plus the adapter",
            )
        conf = getattr(self.parent, "config", None)
        for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            value = getattr(conf, attr, None)
            if value not in (None, 1, 1.0):
                raise UsageError(
                    f"this model post-processes its logits ({attr}={value}), which the bake does not reproduce yet",
                    "use a model without logit soft-capping or scaling",
                )
        lc = m.baked_adapter_config
        torch.manual_seed(self.cfg.seed)
        lora = LoraConfig(
            r=lc.r,
            lora_alpha=lc.lora_alpha,  # a float alpha is fine: scaling is alpha / r
            lora_dropout=lc.lora_dropout,
            bias=lc.bias,
            target_modules=lc.target_modules,
            task_type="CAUSAL_LM",
        )
        torch.set_grad_enabled(True)
        pm = get_peft_model(self.parent, lora)
        self.checkpointed = self._checkpointing(data)
        if self.checkpointed:
            inner: Any = pm.get_base_model()
            if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
                inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            pm.enable_input_require_grads()
        return pm

    def _checkpointing(self, data: Sequence[Trajectory]) -> bool:
        """Whether to checkpoint activations: as BAKE.model.disable_activation_checkpoint says, else when a
        micro-batch of the longest trajectories would take more than a quarter of the free memory."""
        from gitbake.engine import activations

        setting = self.cfg.model.disable_activation_checkpoint
        if setting is not None:
            return not setting
        longest = max((t.length for t in data), default=0)
        needed = activations.activation_bytes(getattr(self.parent, "config", None), self.cfg.micro_batch_size, longest)
        free = activations.available_bytes(self.device)
        on = activations.should_checkpoint(needed, free)
        if needed is not None and free is not None:
            self.reporter.say(
                f"activation checkpointing {'on' if on else 'off'}: a micro-batch's activations take about "
                f"{needed / 2**30:.1f} GiB of {free / 2**30:.1f} GiB free"
            )
        return on

    def _optimizer(self, params: list[Any]) -> Any:
        o = self.cfg.optimizer
        if o.type == "sgd":
            return torch.optim.SGD(params, lr=o.learning_rate, weight_decay=o.weight_decay)
        cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        kwargs: dict[str, Any] = {"lr": o.learning_rate, "betas": o.betas, "weight_decay": o.weight_decay}
        if FUSED_ADAM and {p.device.type for p in params} <= {"cpu", "cuda"}:
            # one kernel over every tensor: a bake's LoRA has hundreds of small ones (420 on SmolLM2), which
            # the per-tensor loop, PyTorch's default on the CPU, updated in 16 ms a step against 4 fused
            try:
                return cls(params, fused=True, **kwargs)
            except (RuntimeError, ValueError, TypeError):  # a build or dtype without the fused kernel
                pass
        return cls(params, **kwargs)

    def _scheduler(self, optimizer: Any, total_steps: int) -> Any:
        from transformers import get_scheduler

        s = self.cfg.scheduler
        warmup = s.warmup_steps or int(math.ceil(s.warmup_ratio * total_steps))
        return get_scheduler(
            s.name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1)
        )

    def train(
        self,
        trajectories: Sequence[Trajectory],
        out_dir: Path,
        scratch: Path | None = None,
        progress_label: str = "bake",
        keep: Path | None = None,
    ) -> BakeResult:
        """Train and save the adapter to `out_dir`. `scratch`: where BAKE.checkpoint saves (and resumes);
        `keep`: where each of those checkpoints' adapters is also kept, as `<step>/` (chat --checkpoint).
        The result's notes are those the reporter was given during this bake."""
        with self.reporter.collecting() as notes, contextlib.ExitStack() as lora:
            result = self._train(trajectories, out_dir, scratch, progress_label, keep, lora)
        result.notes = notes
        return result

    def _train(
        self,
        trajectories: Sequence[Trajectory],
        out_dir: Path,
        scratch: Path | None,
        progress_label: str,
        keep: Path | None,
        lora: contextlib.ExitStack,
    ) -> BakeResult:
        """`lora`: where the student's LoRA layers run as groups (engine/grouped.py) until the bake ends."""
        cfg = self.cfg
        parallel.init(self.device)  # under a launcher: join its process group (DeepSpeed's finds it)
        if not parallel.is_rank0():  # only rank 0 publishes progress for `git bake status`
            self.reporter = Reporter(self.reporter.stream)
        max_len = cfg.data.max_length
        data = [t2 for t in trajectories if (t2 := t.truncated(max_len)) is not None]
        if len(data) < len(trajectories):
            self.reporter.note(
                f"{len(trajectories) - len(data)} trajectory(ies) did not fit data.max_length={max_len} and were "
                "skipped"
            )
        if not data:
            prompt = min(
                (max(len(t.teacher_ids), len(t.student_ids)) for t in trajectories), default=0
            )  # too long, or no answers
            raise UsageError(
                f"no trajectory fits data.max_length={max_len}: the shortest prompt with its question is {prompt:,} "
                "tokens"
                if prompt >= max_len
                else "no trajectory to train on: every answer in the rollouts is empty",
                f"shorten the prompt, or raise BAKE.data.max_length above {prompt:,}"
                if prompt >= max_len
                else "raise TARGET.max_tokens",
            )
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        pm = self._peft(data)
        inner = pm.get_base_model()
        decoder, lm_head = inner.get_decoder(), inner.get_output_embeddings()
        params = [p for p in pm.parameters() if p.requires_grad]
        mbs, ga, epochs = cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.epochs
        data_seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
        # a step takes ga micro-batches on every rank (engine/parallel.py): the global batch is
        # micro_batch_size x gradient_accumulation_steps x world size, and steps count global steps
        size, rank = parallel.world()
        span = ga * size
        per_epoch = math.ceil(math.ceil(len(data) / mbs) / span)
        total_steps = per_epoch * epochs
        engine = None
        zero3 = zero_stage(cfg) == 3
        if cfg.deepspeed is not None:
            from gitbake.engine import ds

            ds.require_deepspeed()
            engine, optimizer, scheduler = ds.initialize(pm, params, cfg, lambda opt: self._scheduler(opt, total_steps))
        else:
            optimizer = self._optimizer(params)
            scheduler = self._scheduler(optimizer, total_steps)
            lora.enter_context(grouped.grouped(pm, self.device))  # DeepSpeed's engine owns the weights
        # every pass of the student runs under autocast (student_precision), the teacher's with the adapter
        # off: PEFT's input cast is not needed by either, and turning it off once spares a walk over every
        # module each micro-batch
        lora.enter_context(input_casting_off(pm))
        beta, temperature, topk = float(cfg.data.beta), float(cfg.data.temperature), cfg.data.topk
        per_batch = tokens_per_micro_batch(data, mbs)

        teacher_started = time.monotonic()
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if topk:
            # the teacher runs once: its top-k per position, reused every epoch (each rank its share)
            mine = parallel.shard(len(data))
            local_ids: dict[int, torch.Tensor] = {}
            local_lps: dict[int, torch.Tensor] = {}
            with torch.no_grad(), pm.disable_adapter():
                pm.eval()
                for i in range(0, len(mine), mbs):
                    chunk = [data[j] for j in mine[i : i + mbs]]
                    ids, lps = kl.topk_of(
                        lm_head, response_hidden(decoder, chunk, "teacher", self.pad_id, self.device), topk, temperature
                    )
                    offset = 0
                    for j, t in zip(mine[i : i + mbs], chunk):
                        n = len(t.response_ids)
                        local_ids[j], local_lps[j] = ids[offset : offset + n].cpu(), lps[offset : offset + n].cpu()
                        offset += n
            rows = [len(t.response_ids) for t in data]
            all_ids = parallel.share(local_ids, rows, topk, torch.long)
            all_lps = parallel.share(local_lps, rows, topk, torch.float32)
            cache = {id(t): (all_ids[j].to(self.device), all_lps[j].to(self.device)) for j, t in enumerate(data)}

        states: dict[int, torch.Tensor] | None = None
        if not topk:
            pm.eval()  # the teacher never sees dropout: it is the frozen parent
            with pm.disable_adapter():
                states = self._teacher_states(decoder, data, max(2 * mbs, 8), progress_label)

        # the student's micro-batches as packed rows, where this decoder gives them the padded batch's states
        pm.eval()  # no dropout in the check
        with student_precision(pm, casting=False):
            packing = packing_is_exact(decoder, data[:mbs], self.pad_id, self.device)
        fused = kl.head_is_frozen(lm_head) and not zero3 and knobs.switch("GITBAKE_FUSED_LOSS")
        head_packed = kl.head_prepacked(lm_head) if fused and engine is None else None
        wandb_run = self._wandb()
        result = BakeResult(out_dir, trajectories=len(data), teacher_seconds=time.monotonic() - teacher_started)
        result.packed = packing
        self._metrics = result.metrics
        state = {"step": 0, "epoch": 0, "batch": 0}
        if scratch is not None and zero3 and trainstate.exists(scratch):
            self.reporter.note("a scratch checkpoint exists, but resuming under ZeRO-3 is not supported: starting over")
            shutil.rmtree(scratch, ignore_errors=True)
        if keep is not None and zero3 and any(c.enabled for c in cfg.checkpoint):
            self.reporter.note(
                "checkpoints are not kept under ZeRO-3 (its partitioned weights are only gathered for the final "
                "adapter)"
            )
        if scratch is not None and not zero3 and any(c.auto_resume for c in cfg.checkpoint if c.enabled):
            resumed = self._resume(pm, optimizer, scheduler, scratch)
            if resumed:
                state = resumed
                result.resumed_from = state["step"]
                self.reporter.note(f"resumed from the scratch checkpoint at step {state['step']}")
        if keep is not None and not state["step"]:
            shutil.rmtree(
                keep, ignore_errors=True
            )  # a fresh start: checkpoints of an abandoned attempt are not this bake's
        progress = self.reporter.progress(progress_label, total_steps, unit="step")
        if state["step"]:
            progress.done = state["step"]
        started = time.monotonic()
        tokens_window, window_start = 0, time.monotonic()
        try:
            for epoch in range(state["epoch"], epochs):
                epoch_batches = batches(data, mbs, data_seed + epoch)  # the same list on every rank
                first = state["batch"] if epoch == state["epoch"] else 0
                pm.train()
                for g_start in range(first, len(epoch_batches), span):
                    group = epoch_batches[g_start : g_start + span]
                    local, weight = parallel.mine(group, ga), 1.0
                    if not local:  # a short last group leaves this rank nothing: it runs one at weight 0, so
                        local, weight = group[:1], 0.0  # every rank takes part in the step's collectives
                    accum_loss, accum_tokens = 0.0, 0
                    pending: Any = None
                    for batch in local:
                        n_tokens = sum(len(t.response_ids) for t in batch)
                        with student_precision(pm, casting=False):
                            s_hidden = (
                                packed_hidden(decoder, batch, self.device, self.pad_id, self.checkpointed)
                                if packing
                                else None
                            )
                            if s_hidden is None:
                                s_hidden = response_hidden(
                                    decoder, batch, "student", self.pad_id, self.device, None, self.checkpointed
                                )
                        # a frozen output layer (LoRA leaves it alone) allows the fused loss: one pass over the
                        # logits, no recomputation; ZeRO-3 partitions that layer, so it takes the generic path
                        loss_fn = (
                            partial(kl.fused_loss, packed=head_packed)
                            if fused
                            else partial(kl.chunked_loss, recompute=not zero3)
                        )
                        if topk:
                            ids = torch.cat([cache[id(t)][0] for t in batch])
                            lps = torch.cat([cache[id(t)][1] for t in batch])
                            loss_sum = loss_fn(lm_head, s_hidden, None, beta, temperature, teacher_topk=(ids, lps))
                        else:
                            if states is not None:
                                t_hidden = torch.cat([states[id(t)] for t in batch]).to(self.device)
                            else:
                                pm.eval()  # the teacher never sees dropout: it is the frozen parent
                                with torch.no_grad(), pm.disable_adapter():
                                    t_hidden = response_hidden(decoder, batch, "teacher", self.pad_id, self.device)
                                pm.train()
                            loss_sum = loss_fn(lm_head, s_hidden, t_hidden, beta, temperature)
                        # the step's loss is its tokens' summed divergence over the tokens a step holds on
                        # average (tokens_per_micro_batch): summed across ranks below (DeepSpeed averages, so
                        # its share is scaled up by the world size)
                        scaled = loss_sum / per_batch / len(group) * weight * (size if engine else 1)
                        if engine is not None:
                            pending = scaled if pending is None else pending + scaled  # one backward per step
                        else:
                            scaled.backward()
                        if weight:
                            accum_loss += loss_sum.item()
                            accum_tokens += n_tokens
                    if engine is not None:
                        engine.backward(pending, scale_wrt_gas=False)
                        engine.step()  # the optimizer and the scheduler
                    else:
                        parallel.sum_grads(params)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    accum_loss, total = parallel.sum_floats(accum_loss, accum_tokens)
                    accum_tokens = int(total)
                    tokens_window += accum_tokens
                    last = g_start + span >= len(epoch_batches)
                    state = {
                        "step": state["step"] + 1,
                        "epoch": epoch if not last else epoch + 1,
                        "batch": 0 if last else g_start + span,
                    }
                    now = time.monotonic()
                    row = {
                        "step": state["step"],
                        "epoch": epoch + min(g_start + span, len(epoch_batches)) / len(epoch_batches),
                        "loss": accum_loss / max(accum_tokens, 1),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": tokens_window / max(now - window_start, 1e-9),
                    }
                    tokens_window, window_start = 0, now
                    result.metrics.append(row)
                    result.tokens += accum_tokens
                    if wandb_run is not None:
                        wandb_run.log(row)
                    progress.label = f"{progress_label} loss {row['loss']:.4f}"
                    progress.update()
                    if scratch is not None and self._due(state, last) and rank == 0:
                        self._save_scratch(pm, optimizer, scheduler, state, scratch)
                        if keep is not None and not zero3 and ds_rank0():
                            # the same normalised, checked format as the final adapter
                            self._save_adapter(pm, keep / str(state["step"]))
        except KeyboardInterrupt:
            if scratch is not None and not zero3 and rank == 0:
                self._save_scratch(pm, optimizer, scheduler, state, scratch)
            raise
        result.steps = state["step"]
        result.seconds = time.monotonic() - started
        stage = zero_stage(cfg)
        from gitbake.engine import ds as ds_mod

        with ds_mod.gathered(params, stage if engine is not None else 0):
            if rank == 0:  # only rank 0 writes
                self._save_adapter(pm, out_dir)
        parallel.barrier()  # the others leave once rank 0 has the adapter
        self.model = pm
        if wandb_run is not None:
            wandb_run.finish()
        return result

    def _teacher_states(
        self, decoder: Any, data: Sequence[Trajectory], batch_size: int, label: str
    ) -> dict[int, torch.Tensor] | None:
        """teacher_states for the whole bake; under a launcher each rank computes its share and they are
        exchanged. Whether they fit is decided on the whole bake, so every rank decides alike."""
        size, _ = parallel.world()
        if size == 1:
            return teacher_states(
                decoder, data, self.pad_id, self.device, batch_size, label=label, reporter=self.reporter
            )
        if not states_fit(decoder, data):  # decided on the whole bake, so every rank decides alike
            return None
        width, dtype = _hidden_size(decoder) or 0, next(decoder.parameters()).dtype
        mine = parallel.shard(len(data))
        local = teacher_states(
            decoder, [data[j] for j in mine], self.pad_id, self.device, batch_size, math.inf, label, self.reporter
        )
        assert local is not None
        by_index = {j: local[id(data[j])] for j in mine}
        shared = parallel.share(by_index, [len(t.response_ids) for t in data], width, dtype)
        return {id(t): shared[j] for j, t in enumerate(data)}

    # ---------------------------------------------------------------------------- checkpoints
    def _due(self, state: dict[str, int], epoch_end: bool) -> bool:
        for c in self.cfg.checkpoint:
            if not c.enabled:
                continue
            if c.save_every_n_steps and state["step"] % c.save_every_n_steps == 0:
                return True
            if epoch_end and c.save_every_n_epochs and state["epoch"] % c.save_every_n_epochs == 0:
                return True
        return False

    def _save_scratch(self, pm: Any, optimizer: Any, scheduler: Any, state: dict[str, int], scratch: Path) -> None:
        tmp = scratch.parent / f".{scratch.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pm.save_pretrained(str(tmp / "adapter"))
        # no pickle: a shared store's scratch checkpoint must not be able to run code in the next bake
        trainstate.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "state": state,
                "metrics": self._metrics,
            },
            tmp,
        )
        shutil.rmtree(scratch, ignore_errors=True)
        tmp.rename(scratch)

    def _resume(self, pm: Any, optimizer: Any, scheduler: Any, scratch: Path) -> dict[str, int] | None:
        """Continue from the scratch checkpoint; one that is damaged, foreign or planted (a shared store) is a
        fresh start with a note, and leaves the adapter, optimizer and scheduler exactly as they were."""
        if not trainstate.exists(scratch):
            return None
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        before = (
            {k: v.detach().clone() for k, v in get_peft_model_state_dict(pm).items()},
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()),
        )
        try:
            saved = trainstate.load(scratch)
            weights = load_file(str(scratch / "adapter" / "adapter_model.safetensors"))
            step, rng, metrics = _checked_resume_state(saved)
            set_peft_model_state_dict(pm, weights)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(rng)
        except Exception as exc:  # noqa: BLE001 - any failure here means the checkpoint is not this bake's
            set_peft_model_state_dict(pm, before[0])
            optimizer.load_state_dict(before[1])
            scheduler.load_state_dict(before[2])
            self.reporter.note(
                f"the scratch checkpoint could not be resumed ({type(exc).__name__}: {str(exc)[:120]}): starting over"
            )
            return None
        self._metrics[:] = metrics
        return step

    def _wandb(self) -> Any:
        w = self.cfg.wandb
        if not w.enable:
            return None
        try:
            import wandb
        except ImportError:
            self.reporter.note("wandb.enable is set but wandb is not installed: metrics go to metrics.jsonl only")
            return None
        return wandb.init(project=w.project, name=w.name, entity=w.entity, config=self.cfg.model_dump(mode="json"))

    # -------------------------------------------------------------------------------- saving
    def _save_adapter(self, pm: Any, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(str(out_dir))
        # identity must not depend on where the base model happens to live on this machine
        cfg_path = out_dir / "adapter_config.json"
        conf = json.loads(cfg_path.read_text())
        conf["base_model_name_or_path"] = self.base_name
        conf.pop("revision", None)
        for k, v in conf.items():  # PEFT keeps some of these as sets: their order changes per process
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                conf[k] = sorted(v)
        cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
        for extra in out_dir.iterdir():
            if extra.name not in ADAPTER_FILES:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        check_adapter(out_dir, self.cfg.model.baked_adapter_config.model_dump(mode="json"), pm)


def _checked_resume_state(saved: dict[str, Any]) -> tuple[dict[str, int], torch.Tensor, list[Any]]:
    """The parts of a saved training state, each checked for the shape this code writes."""
    if not isinstance(saved.get("optimizer"), dict) or not isinstance(saved.get("scheduler"), dict):
        raise trainstate.BadTrainState("no optimizer or scheduler state")
    rng = saved.get("rng")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise trainstate.BadTrainState("no RNG state")
    step = saved.get("state")
    if (
        not isinstance(step, dict)
        or set(step) != {"step", "epoch", "batch"}
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in step.values())
    ):
        raise trainstate.BadTrainState("no step counters")
    metrics = saved.get("metrics", [])
    if not isinstance(metrics, list):
        raise trainstate.BadTrainState("metrics are not a list")
    return dict(step), rng, list(metrics)


def check_adapter(path: Path, requested: dict[str, Any], pm: Any | None = None) -> None:
    """Refuse an adapter that is empty or does not match the request (the ZeRO-3 empty-adapter bug)."""
    from safetensors import safe_open

    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise AdapterError(f"the adapter at {path} lacks {', '.join(missing)}; it was not stored")
    conf = json.loads((path / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "bias"):
        if conf.get(key) != requested.get(key) and not (
            key == "lora_alpha" and float(conf.get(key, -1)) == float(requested[key])
        ):
            raise AdapterError(
                f"adapter_config.json has {key}={conf.get(key)!r}, but the bake asked for {requested.get(key)!r}; not "
                "stored"
            )
    r = requested["r"]
    names = []
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as fh:
        for name in fh.keys():
            t = fh.get_tensor(name)
            if t.numel() == 0:
                raise AdapterError(
                    f"tensor {name} of the adapter is empty (shape {list(t.shape)}); not stored",
                    "this is the DeepSpeed ZeRO-3 save bug: gather the parameters before saving",
                )
            if "lora_A" in name and t.shape[0] != r:
                raise AdapterError(f"{name} has shape {list(t.shape)}, expected rank {r}; not stored")
            if "lora_B" in name and t.shape[1] != r:
                raise AdapterError(f"{name} has shape {list(t.shape)}, expected rank {r}; not stored")
            names.append(name)
    if not any("lora_A" in n for n in names):
        raise AdapterError("the adapter holds no LoRA weights; not stored")
    if pm is not None:
        expected = sum(1 for n, _ in pm.named_parameters() if "lora_A" in n)
        if sum(1 for n in names if "lora_A" in n) != expected:
            raise AdapterError(
                f"the adapter has {sum('lora_A' in n for n in names)} LoRA modules, the model {expected}; not stored"
            )


def ds_rank0() -> bool:
    from gitbake.engine import ds

    return bool(ds.rank() == 0)
