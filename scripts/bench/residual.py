#!/usr/bin/env python3
"""Where a bake's held-out KL is left: by response position, by the teacher's entropy, by answer.

Not a timing: an analysis of one stored bake on SmolLM2-135M-Instruct (`fidelity.py --keep DIR` leaves its
repositories there). For the held-out rollouts of REPO (`.bake/rollout.jsonl`), in the dtype the bake ran
in, it computes each response position's forward KL from the teacher (the parent with the prompt) to the
parent without it (before) and to the baked model without it (after), as the bake's eval does, and prints
gap_closed over all positions, then per group of positions: its tokens, the mean KL before and after, the
share of the gap it closed, and its share of what is left; then how much of what is left the worst few
answers hold, and those answers.

    git bake export HEAD --adapter ADAPTER --single     # in REPO
    .venv/bin/python scripts/bench/residual.py REPO ADAPTER [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def kls(repo: Path, adapter: Path) -> tuple[list[dict[str, Any]], Any, Any, Any]:
    """(held-out records, KL before, KL after, the teacher's entropy), each per response position."""
    import torch
    from fidelity import smollm2_gguf

    from gitbake.engine import ggufin, kl, models
    from gitbake.engine.bake import Trajectory, response_hidden

    model_dir, _ = ggufin.convert_for_process(smollm2_gguf())
    loaded = models.load_base(str(model_dir), dtype=models.bake_dtype(None, "cpu"))
    pm = models.with_adapter(loaded, adapter)
    records = [json.loads(line) for line in (repo / ".bake" / "rollout.jsonl").read_text().splitlines()]
    held = [r for r in records if r["split"] == "heldout"]
    data = [Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in held]
    decoder, head = pm.get_base_model().get_decoder(), pm.get_base_model().get_output_embeddings()
    pad = int(loaded.tokenizer.pad_token_id)
    teacher, parent, baked = [], [], []
    with torch.no_grad():
        for i in range(0, len(data), 8):
            chunk = data[i : i + 8]
            with pm.disable_adapter():
                teacher.append(response_hidden(decoder, chunk, "teacher", pad, loaded.device))
                parent.append(response_hidden(decoder, chunk, "student", pad, loaded.device))
            baked.append(response_hidden(decoder, chunk, "student", pad, loaded.device))
        t = torch.cat(teacher)
        before, after = kl.per_position_kl(head, t, torch.cat(parent), torch.cat(baked))
        entropy = []  # the teacher's, a chunk of positions at a time (a [64, vocab] block of log-probs)
        for i in range(0, len(t), 64):
            lp = torch.log_softmax(kl.head_logits(t[i : i + 64].float(), head.weight.float()), -1)
            entropy.append(-(lp.exp() * lp).sum(-1))
    return held, before, after, torch.cat(entropy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path)
    ap.add_argument("adapter", type=Path)
    args = ap.parse_args()
    import torch

    held, before, after, entropy = kls(args.repo, args.adapter)
    position = torch.cat([torch.arange(len(r["response_ids"])) for r in held])
    answer = torch.cat([torch.full((len(r["response_ids"]),), j) for j, r in enumerate(held)])
    left = after.sum()
    print(
        f"residual: {args.repo.name}, {len(held)} held-out answers, {len(after)} positions: KL before "
        f"{before.mean():.4f}, after {after.mean():.4f}, gap_closed {1 - after.mean() / before.mean():.3f}"
    )

    def row(label: str, mask: Any) -> None:
        print(
            f"  {label:34s} {int(mask.sum()):5d} tokens, KL before {before[mask].mean():.3f} after "
            f"{after[mask].mean():.3f}, closed {1 - after[mask].sum() / before[mask].sum():.3f}, "
            f"{after[mask].sum() / left:.3f} of what is left"
        )

    for lo, hi in ((0, 1), (1, 2), (2, 5), (5, 17), (17, 65), (65, 10**6)):
        row(f"positions {lo}-{hi - 1}" if hi < 10**6 else f"positions {lo}-", (position >= lo) & (position < hi))
    edges = [0.0, *torch.quantile(entropy.float(), torch.tensor([0.25, 0.5, 0.75, 0.9])).tolist(), float("inf")]
    for lo, hi in zip(edges, edges[1:]):
        row(f"teacher entropy {lo:.2f}-{hi:.2f} nats", (entropy >= lo) & (entropy < hi))
    per = torch.zeros(len(held)).index_add_(0, answer, after)
    worst = per.argsort(descending=True)
    shares = ", ".join(f"{k}: {per[worst[:k]].sum() / left:.3f}" for k in (1, 5, 10))
    print(f"  the worst answers' share of what is left: {shares}")
    for j in worst[:5].tolist():
        r = held[j]
        print(
            f"    {per[j]:.2f} nats over {len(r['response_ids'])} tokens: {r['question']!r} -> {r['response'][:80]!r}"
        )


if __name__ == "__main__":
    main()
