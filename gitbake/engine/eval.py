"""eval: how much of the prompt's effect the bake captured (baking-method.md §8).

On held-out questions, teacher samples at temperature 1 (no top-p), then token-weighted means of
KL(teacher ‖ model) over the response positions, for the parent (D_before) and the baked model (D_after);
gap_closed = 1 − D_after / D_before. Also the first-token KL and the per-position curve. The samples are
the held-out rollouts where those are such samples (`given`: the rollout sampled the parent under the
teacher prompt at temperature 1 with nothing reshaping the distribution), else sampled here, seeded. The
method asks for fixed, cached samples (baking-method.md §8), and the rollout's already are: sampling them
again took most of a real bake's eval time.

The three forward passes run the way the bake's training runs them: the teacher's once per sequence with its
shared system prompt run once (bake.teacher_states), the parent's and the baked model's as packed rows
(bake.Packed) where the decoder gives those the padded batch's states. Padded and prefix-less, they took
about 40 s of a 5-minute bake of SmolLM2-135M on two cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gitbake.engine import kl
from gitbake.engine.bake import Trajectory, packed_hidden, packing_is_exact, response_hidden, teacher_states
from gitbake.engine.rollout import SamplingSettings, generate_batches
from gitbake.reporter import Reporter

CURVE_POSITIONS = 64
BATCH = 8  # trajectories per forward pass


@dataclass(frozen=True)
class KLEval:
    """The eval of a bake: KL(teacher ‖ parent) = d_before and KL(teacher ‖ baked) = d_after, token-weighted
    over the response positions of fresh teacher samples; the first-token and per-trajectory means; the
    mean at each of the first CURVE_POSITIONS positions. Stored as a bake's eval.json (`as_json`)."""

    questions: int
    trajectories: int
    tokens: int
    d_before: float
    d_after: float
    gap_closed: float | None  # 1 - d_after / d_before; None when there was no gap to close
    first_token_kl_before: float | None
    first_token_kl_after: float | None
    per_trajectory_kl_before: float | None
    per_trajectory_kl_after: float | None
    curve_before: list[float]
    curve_after: list[float]
    seed: int
    samples_per_question: int
    note: str | None = None  # e.g. no held-out questions: evaluated on the training questions
    rollout_samples: int = 0  # of the trajectories, those taken from the held-out rollouts (the rest: sampled here)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["note"] is None:
            del out["note"]
        return out


def evaluate(
    pm: Any,
    tokenizer: Any,
    contexts: Sequence[tuple[list[int], list[int]]],
    samples: int,
    max_tokens: int,
    seed: int,
    note: str | None = None,
    given: Mapping[int, Sequence[Sequence[int]]] | None = None,
    packed: bool | None = None,
    reporter: Reporter | None = None,
) -> KLEval:
    """`pm` is the PEFT model: adapter enabled = baked, disabled = parent. Contexts: (teacher ids, student ids).
    `given`: by context index, teacher samples already made (the held-out rollouts); a context with at
    least `samples` of them takes the first `samples`, cut at `max_tokens`, and the others are sampled here.
    `packed`: whether the student passes may run as packed rows (the bake checked it: BakeResult.packed);
    None: checked here, on one batch."""
    pm.eval()
    inner = pm.get_base_model()
    decoder, lm_head = inner.get_decoder(), inner.get_output_embeddings()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(pm.parameters()).device
    given = given or {}
    enough = [len(given.get(k, ())) >= samples for k in range(len(contexts))]
    taken = [(c, list(ids)[:max_tokens]) for k, c in enumerate(contexts) if enough[k] for ids in given[k][:samples]]
    fresh = [c for k, c in enumerate(contexts) if not enough[k] for _ in range(samples)]
    responses: list[Any] = []
    if fresh:
        with torch.no_grad(), pm.disable_adapter():
            responses = generate_batches(
                pm,
                tokenizer,
                [t for t, _ in fresh],
                SamplingSettings(temperature=1.0, max_tokens=max_tokens, seed=seed, batch_size=16),
            )
    pairs = taken + [(c, r.ids) for c, r in zip(fresh, responses)]
    trajs = [Trajectory(t, s, ids) for (t, s), ids in pairs if ids]
    reporter = reporter or Reporter()
    with torch.no_grad():
        with pm.disable_adapter():
            teacher = teacher_states(decoder, trajs, pad, device, BATCH, label="eval", reporter=reporter)
            if packed is None:
                packed = packing_is_exact(decoder, trajs[:BATCH], pad, device)

        def student(batch: list[Trajectory]) -> torch.Tensor:
            hidden = packed_hidden(decoder, batch, device, pad) if packed else None
            return hidden if hidden is not None else response_hidden(decoder, batch, "student", pad, device)

        before: list[torch.Tensor] = []
        after: list[torch.Tensor] = []
        progress = reporter.progress("eval: parent and baked model", -(-len(trajs) // BATCH), unit="batch")
        for i in range(0, len(trajs), BATCH):
            batch = trajs[i : i + BATCH]
            with pm.disable_adapter():
                if teacher is not None:
                    t_h = torch.cat([teacher[id(t)] for t in batch]).to(device)
                else:  # more states than the host budget: batch by batch
                    t_h = response_hidden(decoder, batch, "teacher", pad, device)
                p_h = student(batch)
            b_h = student(batch)
            kb, ka = kl.per_position_kl(lm_head, t_h, p_h, b_h)
            offset = 0
            for t in batch:
                n = len(t.response_ids)
                before.append(kb[offset : offset + n])
                after.append(ka[offset : offset + n])
                offset += n
            progress.update()
    d_before = float(torch.cat(before).mean()) if before else 0.0
    d_after = float(torch.cat(after).mean()) if after else 0.0

    def curve(rows: list[torch.Tensor]) -> list[float]:
        out = []
        for j in range(CURVE_POSITIONS):
            vals = [r[j] for r in rows if len(r) > j]
            if not vals:
                break
            out.append(round(float(torch.stack(vals).mean()), 6))
        return out

    return KLEval(
        questions=len(contexts),
        trajectories=len(trajs),
        tokens=int(sum(len(r) for r in before)),
        d_before=d_before,
        d_after=d_after,
        gap_closed=(1 - d_after / d_before) if d_before > 0 else None,
        first_token_kl_before=float(torch.stack([r[0] for r in before]).mean()) if before else None,
        first_token_kl_after=float(torch.stack([r[0] for r in after]).mean()) if after else None,
        per_trajectory_kl_before=float(torch.stack([r.sum() for r in before]).mean()) if before else None,
        per_trajectory_kl_after=float(torch.stack([r.sum() for r in after]).mean()) if after else None,
        curve_before=curve(before),
        curve_after=curve(after),
        seed=seed,
        samples_per_question=samples,
        note=note or None,
        rollout_samples=sum(1 for _, ids in taken if ids),
    )
