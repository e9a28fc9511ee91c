"""The distillation losses, over row-aligned hidden states of teacher and student response positions.

Logits are never materialised for a whole batch: positions are processed in chunks through the output
layer, and each student chunk is recomputed in backward (activation checkpointing), so only one chunk's
[tokens, vocab] logits exist at a time. Everything is computed in fp32 (baking-method.md §9).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gitbake.engine import knobs, prepacked

LogitsPiece = Callable[[torch.Tensor], torch.Tensor]  # a chunk's loss, given the student's logits
CHUNK_TOKENS = knobs.number("GITBAKE_KL_CHUNK", 64, minimum=1)


def divergence(t_logp: torch.Tensor, s_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position divergence between teacher and student log-probs ([N, V] each) -> [N].

    beta 0: forward KL(teacher || student); beta 1: reverse KL(student || teacher); in between: the
    generalized Jensen-Shannon divergence of TRL's GKD (mixture m = beta*p_T + (1-beta)*p_S)."""
    if beta == 0:
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if beta == 1:
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    m = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0)
    kl_t = (t_logp.exp() * (t_logp - m)).sum(-1)
    kl_s = (s_logp.exp() * (s_logp - m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def topk_divergence(t_ids: torch.Tensor, t_logp: torch.Tensor, s_logp_full: torch.Tensor) -> torch.Tensor:
    """Forward KL of the (K+1)-way coarsening: the teacher's top-K tokens plus one tail bucket.

    It lies in [0, full KL] (data processing), so it is a valid loss and metric (baking-method.md §2)."""
    s_top = s_logp_full.gather(-1, t_ids.long())
    p_t = t_logp.exp()
    head = (p_t * (t_logp - s_top)).sum(-1)
    tail_t = (1 - p_t.sum(-1)).clamp_min(1e-12)
    tail_s = (1 - s_top.exp().sum(-1)).clamp_min(1e-12)
    return head + tail_t * (tail_t.log() - tail_s.log())


VOCAB_TILE = knobs.number("GITBAKE_VOCAB_TILE", 1024, minimum=1)
DX_ROWS = knobs.number("GITBAKE_DX_ROWS", 256, minimum=1)  # rows of a bf16 output layer's gradient product


def head_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    tile: int = VOCAB_TILE,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`hidden @ weight.T (+ bias)`, [N, V], computed a slice of the vocabulary at a time.

    A large vocabulary's output layer does not fit in the CPU's caches: one [N, H] x [H, V] product
    streams the whole weight for a few rows and writes a [N, V] block that evicts it again. Slices of
    `tile` rows of the weight stay cached while every position uses them (measured on the 32k-vocabulary
    benchmark model: about 1.5x the throughput of one product). The values are the same products."""
    v = weight.shape[0]
    # fp32 rows through a bf16 layer: fp32 products of its values (exact, for the paths that need it);
    # bf16 rows into an fp32 buffer: bf16 products, widened (pair_logits)
    mixed = weight.dtype != hidden.dtype
    if v <= 2 * tile or hidden.device.type != "cpu":
        if out is None:
            if mixed:
                return F.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype))
            return F.linear(hidden, weight, bias)
        tile = v  # one product, into the caller's buffer
    if out is None:
        out = torch.empty((hidden.shape[0], v), dtype=hidden.dtype, device=hidden.device)
    for start in range(0, v, tile):
        end = min(v, start + tile)
        w = weight[start:end] if not mixed else weight[start:end].to(hidden.dtype)
        if out.dtype != hidden.dtype:
            out[:, start:end] = torch.mm(hidden, w.t())
        else:
            torch.mm(hidden, w.t(), out=out[:, start:end])
    if bias is not None:
        out += bias
    return out


def low_precision(weight: torch.Tensor) -> bool:
    """A bf16 tensor on the CPU (an output layer's weight, a model's parameters): bf16 products there
    run through oneDNN, into fp32 logits for a loss (`pair_logits`)."""
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu"


def pair_logits(
    teacher: torch.Tensor,
    student: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor | None = None,
    packed: prepacked.Prepacked | None = None,
) -> torch.Tensor:
    """fp32 logits of teacher rows then student rows ([2N, V]) through a bf16 output layer (`packed`: that
    layer's weight in oneDNN's layout, multiplied in one product rather than slice by slice).

    The teacher's rows and the student's *difference* from them go through the layer, and the student's
    logits are the teacher's plus that product: rounding both sides' logits to bf16 would quantise their
    gap, which is all a KL sees (steps of 0.03 at logits near 5), while the difference's own product keeps
    bf16's relative precision."""
    n = teacher.shape[0]
    if out is None:
        out = torch.empty((2 * n, weight.shape[0]), dtype=torch.float32, device=weight.device)
    rows = torch.cat([teacher.to(weight.dtype), (student.float() - teacher.float()).to(weight.dtype)])
    if packed is not None:
        both = out.copy_(packed.forward(rows))
    else:
        both = head_logits(rows, weight, None, out=out)
    if bias is not None:
        both[:n] += bias.float()
    both[n:] += both[:n]
    return both


def _logp(lm_head: Any, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    weight, bias = _head_params(lm_head)
    if weight is None:  # not a plain linear layer (or partitioned away): the module itself
        logits = lm_head(hidden).float()
    else:
        # the layer's own precision, as lm_head(h); a bf16 layer on the CPU in fp32 (bf16 logits would round
        # away the small differences a divergence measures)
        h = hidden.float() if low_precision(weight) else hidden.to(weight.dtype)
        logits = head_logits(h, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def _head_params(lm_head: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if isinstance(lm_head, torch.nn.Linear) and lm_head.weight.numel() > 0:
        bias = lm_head.bias.detach() if lm_head.bias is not None else None
        return lm_head.weight.detach(), bias
    return None, None


def forward_kl_and_grad_(
    t_logits: torch.Tensor, s_logits: torch.Tensor, p_buf: torch.Tensor, q_buf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL(teacher || student) summed over rows, and its gradient w.r.t. the student's logits in
    closed form (softmax(s) - p_t), without autograd. In place: the logits become log-probs (the teacher's
    then the log-ratio); `p_buf` receives the teacher's probabilities and `q_buf` the gradient.

    Every pass writes into one of these [rows, vocab] blocks, which the caller reuses for every chunk.
    `torch.logsumexp` allocates a fresh block per call for its shifted copy, and on the CPU a block that
    size is mapped and faulted in anew each time: on a chunk of 64 rows of SmolLM2's 49,152-token
    vocabulary this function took 12-15 ms that way and takes 8-9 ms now (2 threads)."""
    p_t = _log_softmax_(t_logits, p_buf)
    q = _log_softmax_(s_logits, q_buf)
    # one dot over the log-ratio, not the difference of two large dots (the cross-entropy and the
    # entropy, which cancel to a small KL and would leave their rounding in it)
    loss = torch.dot(p_t.view(-1), t_logits.sub_(s_logits).view(-1))
    return loss, q.sub_(p_t)


def _log_softmax_(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """`logits` becomes its log-softmax in place; `probs` receives the softmax. Returns `probs`."""
    logits.sub_(logits.amax(dim=-1, keepdim=True))
    torch.exp(logits, out=probs)
    total = probs.sum(dim=-1, keepdim=True)
    probs.div_(total)
    logits.sub_(total.log_())
    return probs


class _Teacher:
    """The teacher's side of the loss, chunk by chunk: its log-probs are made only when a chunk needs them
    (a batch's worth of [positions, vocab] log-probs is never alive at once)."""

    def __init__(
        self,
        lm_head: Any,
        hidden: torch.Tensor | None,
        beta: float,
        temperature: float,
        topk: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        self.lm_head, self.hidden, self.beta, self.temperature, self.topk = lm_head, hidden, beta, temperature, topk

    @property
    def plain_kl(self) -> bool:
        """Forward KL at temperature 1 from hidden states: the common case, with a closed-form gradient."""
        return self.topk is None and self.beta == 0 and self.temperature == 1.0

    def piece(self, start: int, end: int) -> LogitsPiece:
        if self.topk is not None:
            return partial(_logits_piece_topk, self.topk[0][start:end], self.topk[1][start:end], self.temperature)
        assert self.hidden is not None
        with torch.no_grad():
            t_lp = _logp(self.lm_head, self.hidden[start:end], self.temperature)
        return partial(_logits_piece_full, t_lp, self.beta, self.temperature)


class _FusedHeadLoss(torch.autograd.Function):
    """Output layer + loss, chunk by chunk, with the gradient w.r.t. the hidden states computed on the
    way (d loss / d logits in closed form for forward KL, through autograd on the chunk alone otherwise,
    then @ W). Each chunk's logits exist once, are never kept for backward and never recomputed: the
    fused linear+KL idea, in plain torch. Valid when the output layer itself is frozen (it is: LoRA does
    not adapt it). For forward KL the teacher's and the student's rows of a chunk go through the output
    layer as one product (one pass over its weight for both)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        teacher: _Teacher,
        chunk: int,
        packed: prepacked.Prepacked | None = None,
    ) -> torch.Tensor:
        # a bf16 output layer on the CPU: forward KL multiplies in bf16 (fp32 accumulation, pair_logits);
        # the other divergences in fp32 products of its values. The softmax, the loss and its gradient are
        # fp32 always
        low = low_precision(weight) and teacher.plain_kl
        packed = packed if low else None  # the bf16 products of forward KL; the others multiply in fp32
        rows_in, t_hidden = hidden.shape[0], teacher.hidden
        if low and t_hidden is not None and rows_in % 16:
            # oneDNN compiles a kernel per product shape: rows padded to a multiple of 16 keep the last chunk
            # to a few shapes. A zero row on both sides gives identical logits: exactly zero loss and gradient
            pad = 16 - rows_in % 16
            hidden = torch.cat([hidden.detach(), hidden.new_zeros((pad, hidden.shape[1]))])
            t_hidden = torch.cat([t_hidden, t_hidden.new_zeros((pad, t_hidden.shape[1]))])
        grad_h = torch.zeros_like(hidden, dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        w = weight if low_precision(weight) else weight.float()  # bf16 stays bf16: head_logits widens by tile
        b = None if bias is None else bias.float()
        work: tuple[torch.Tensor, torch.Tensor] | None = None  # logits; probabilities
        pending: torch.Tensor | None = None  # bf16 gradients w.r.t. the logits, rows pending_from onwards
        pending_from = 0
        by_w: Callable[[torch.Tensor], torch.Tensor] = (
            (lambda rows: rows @ w) if packed is None else packed.backward
        )  # rows -> rows @ W
        for start in range(0, hidden.shape[0], chunk):
            end = min(hidden.shape[0], start + chunk)
            h = hidden[start:end] if low else hidden[start:end].float()
            if teacher.plain_kl:
                assert t_hidden is not None
                n = end - start
                if work is None:  # [rows, vocab] buffers made once and reused by every chunk: the
                    # allocator is not asked for (and does not keep around) fresh blocks each time
                    rows = min(chunk, hidden.shape[0])
                    work = (
                        w.new_empty((2 * rows, w.shape[0]), dtype=torch.float32),
                        w.new_empty((2 * rows, w.shape[0]), dtype=torch.float32),
                    )
                if low:
                    both = pair_logits(t_hidden[start:end], h, w, b, out=work[0][: 2 * n], packed=packed)
                else:
                    both = head_logits(torch.cat([t_hidden[start:end].float(), h]), w, b, out=work[0][: 2 * n])
                loss, g = forward_kl_and_grad_(both[:n], both[n:], work[1][:n], work[1][n : 2 * n])
            else:
                piece = teacher.piece(start, end)
                logits = head_logits(h, w, b).float()
                with torch.enable_grad():
                    logits.requires_grad_(True)
                    loss = piece(logits)
                    (g,) = torch.autograd.grad(loss, logits)
            if low:
                # bf16 products: the chunks' gradients gathered in bf16 and multiplied by the layer a group of
                # DX_ROWS rows at a time (fp32 accumulation inside the product, one rounding of the sum, which
                # backward rounds to the states' bf16 anyway): a 64-row product over the whole vocabulary runs
                # at about 210 GFLOP/s here, a 256-row one at 340-360
                n = end - start
                if pending is None:
                    pending = w.new_empty((max(min(DX_ROWS, hidden.shape[0]), n), w.shape[0]))
                if start + n - pending_from > pending.shape[0]:  # full: multiply what is gathered first
                    grad_h[pending_from:start] = by_w(pending[: start - pending_from])
                    pending_from = start
                pending[start - pending_from : end - pending_from] = g
                if end == hidden.shape[0]:
                    grad_h[pending_from:end] = by_w(pending[: end - pending_from])
            elif w.dtype != g.dtype:  # fp32 products of a bf16 layer, a vocabulary slice at a time
                acc = grad_h[start:end]
                for v0 in range(0, w.shape[0], VOCAB_TILE):
                    v1 = min(w.shape[0], v0 + VOCAB_TILE)
                    acc += g[:, v0:v1] @ w[v0:v1].float()
            else:
                grad_h[start:end] = g @ w
            total = total + loss.detach()
        ctx.save_for_backward(grad_h[:rows_in])
        ctx.hidden_dtype = hidden.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_h,) = ctx.saved_tensors
        return (grad_out * grad_h).to(ctx.hidden_dtype), None, None, None, None, None


def _on_hidden(lm_head: Any, piece: LogitsPiece, h: torch.Tensor) -> torch.Tensor:
    weight = getattr(lm_head, "weight", None)
    if isinstance(lm_head, torch.nn.Linear) and weight is not None and weight.numel() and low_precision(weight):
        # fp32 products of the bf16 layer's values (through autograd, for a trained head too): bf16 logits
        # would round away the small differences a divergence measures
        bias = None if lm_head.bias is None else lm_head.bias.float()
        return piece(F.linear(h.float(), weight.float(), bias))
    return piece(lm_head(h).float())


def _logits_piece_full(t_lp: torch.Tensor, beta: float, temperature: float, logits: torch.Tensor) -> torch.Tensor:
    if temperature != 1.0:
        logits = logits / temperature
    return divergence(t_lp, F.log_softmax(logits, dim=-1), beta).sum()


def _logits_piece_topk(ids: torch.Tensor, lp: torch.Tensor, temperature: float, logits: torch.Tensor) -> torch.Tensor:
    if temperature != 1.0:
        logits = logits / temperature
    return topk_divergence(ids, lp, F.log_softmax(logits, dim=-1)).sum()


def fused_loss(
    lm_head: Any,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = CHUNK_TOKENS,
    packed: prepacked.Prepacked | None = None,
) -> torch.Tensor:
    """Same value and gradient as `chunked_loss`, without recomputation (needs a frozen output layer).
    `packed`: the output layer's weight in oneDNN's layout (`head_prepacked`), for a bf16 layer's products."""
    teacher = _Teacher(lm_head, teacher_hidden, beta, temperature, teacher_topk)
    bias = getattr(lm_head, "bias", None)
    result: torch.Tensor = _FusedHeadLoss.apply(
        student_hidden,
        lm_head.weight.detach(),
        None if bias is None else bias.detach(),
        teacher,
        chunk,
        packed,
    )
    return result


def head_prepacked(lm_head: Any) -> prepacked.Prepacked | None:
    """A frozen bf16 output layer's weight in oneDNN's layout, for a bake's `fused_loss`: its products by
    the whole vocabulary in one call, not slice by slice (SmolLM2's, 128 rows by 49,152 x 576: 404 GFLOP/s
    against 313 in slices of 1024, the gradient's 256 rows 423 against 374). None where it is not bf16 on
    the CPU, or two more copies of it would not fit (engine/prepacked.py)."""
    if not head_is_frozen(lm_head) or not prepacked.wanted([lm_head.weight]):
        return None
    return prepacked.Prepacked.of(lm_head.weight, None)


def head_is_frozen(lm_head: Any) -> bool:
    return (
        isinstance(lm_head, torch.nn.Linear)
        and not any(p.requires_grad for p in lm_head.parameters())
        and lm_head.weight.numel() > 0
    )


def chunked_loss(
    lm_head: Any,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = CHUNK_TOKENS,
    recompute: bool = True,
) -> torch.Tensor:
    """Sum over positions of the divergence. Either `teacher_hidden` ([N, H], no grad) or a cached
    `teacher_topk` (ids [N, K], log-probs [N, K])."""
    teacher = _Teacher(lm_head, teacher_hidden, beta, temperature, teacher_topk)
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, student_hidden.shape[0], chunk):
        end = min(student_hidden.shape[0], start + chunk)
        on_hidden = partial(_on_hidden, lm_head, teacher.piece(start, end))
        s_h = student_hidden[start:end]
        if s_h.requires_grad and recompute:
            # recomputed in backward: only this chunk's logits are ever alive (not under ZeRO-3, whose
            # partitioned output layer is released between forward and recomputation)
            total = total + checkpoint(on_hidden, s_h, use_reentrant=False)
        else:
            total = total + on_hidden(s_h)
    return total


def per_position_kl(
    lm_head: Any, teacher_hidden: torch.Tensor, *students: torch.Tensor, chunk: int = CHUNK_TOKENS
) -> list[torch.Tensor]:
    """Forward KL at each position ([N]) of each student's states against the teacher's, no grad: for eval.
    In full precision the teacher's log-probs are computed once per chunk for all the students."""
    out: list[list[torch.Tensor]] = [[] for _ in students]
    weight, bias = _head_params(lm_head)
    with torch.no_grad():
        for start in range(0, teacher_hidden.shape[0], chunk):
            end = min(teacher_hidden.shape[0], start + chunk)
            n = end - start
            if weight is not None and low_precision(weight):  # the gap, not two rounded logits (pair_logits)
                for rows, student in zip(out, students):
                    both = pair_logits(teacher_hidden[start:end], student[start:end], weight, bias)
                    rows.append(divergence(F.log_softmax(both[:n], -1), F.log_softmax(both[n:], -1), 0.0))
                continue
            t_lp = _logp(lm_head, teacher_hidden[start:end], 1.0)
            for rows, student in zip(out, students):
                rows.append(divergence(t_lp, _logp(lm_head, student[start:end], 1.0), 0.0))
    return [torch.cat(rows) if rows else teacher_hidden.new_zeros((0,)) for rows in out]


def topk_of(
    lm_head: Any, teacher_hidden: torch.Tensor, k: int, temperature: float = 1.0, chunk: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lps = [], []
    with torch.no_grad():
        for start in range(0, teacher_hidden.shape[0], chunk):
            lp = _logp(lm_head, teacher_hidden[start : start + chunk], temperature)
            top = lp.topk(min(k, lp.shape[-1]), dim=-1)
            ids.append(top.indices.to(torch.int32))
            lps.append(top.values)
    return torch.cat(ids), torch.cat(lps)
