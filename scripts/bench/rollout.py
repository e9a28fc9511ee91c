#!/usr/bin/env python3
"""Rollout throughput: our batched rollout next to a one-at-a-time `generate` loop, same run.

Same benchmark model (scripts/bench/_models.py: Llama-shaped, ~29 M parameters, 32k vocabulary), same
prompts, same sampling settings. Prints trajectories per second of each and the ratio (goal >= 3x on a
2-core CPU).

    .venv/bin/python scripts/bench/rollout.py [--questions 16] [--traj 2] [--max-tokens 32] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import BenchTokenizer, bench_model, bench_prompts  # noqa: E402

from gitbake.engine.rollout import SamplingSettings, generate_batches  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--traj", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = bench_model()
    tok = BenchTokenizer()
    params = sum(p.numel() for p in model.parameters())
    prompts = [p for p in bench_prompts(args.questions) for _ in range(args.traj)]
    settings = SamplingSettings(temperature=1.0, max_tokens=args.max_tokens, seed=7, batch_size=args.batch)
    n = len(prompts)

    # warm-up both paths (allocator, kernels)
    generate_batches(model, tok, prompts[:2], SamplingSettings(max_tokens=4, batch_size=2))

    t0 = time.perf_counter()
    ours = generate_batches(model, tok, prompts, settings)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    single = []
    with torch.no_grad():
        for i, p in enumerate(prompts):
            torch.manual_seed(i)
            out = model.generate(
                input_ids=torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=args.max_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            single.append(out[0, len(p) :].tolist())
    t_single = time.perf_counter() - t0

    tok_ours = sum(len(r.ids) for r in ours)
    tok_single = sum(len(r) for r in single)
    print(
        f"rollout bench: {params / 1e6:.1f} M-parameter Llama, 32k vocab, {args.questions} questions x {args.traj} "
        "trajectories, "
        f"max {args.max_tokens} new tokens, {torch.get_num_threads()} threads"
    )
    print(f"  batched (ours, batch {args.batch}):  {n / t_ours:8.2f} traj/s  ({t_ours:.2f} s, {tok_ours} tokens)")
    print(f"  one at a time (generate loop): {n / t_single:8.2f} traj/s  ({t_single:.2f} s, {tok_single} tokens)")
    ratio = (n / t_ours) / (n / t_single)
    print(f"  speed-up: {ratio:.2f}x  (goal >= 3x: {'met' if ratio >= 3 else 'MISSED'})")


if __name__ == "__main__":
    main()
