#!/usr/bin/env python3
"""How much of a bake survives merging its adapter into bf16 weights, as `chat`, `serve` and `export` load a
version on a GPU (bf16 there): held-out KL(teacher ‖ model) of one baked real-model repository, its newest
adapter run four ways on the same held-out rollouts:

  parent          the base model (and any older adapters) without the newest one: the gap before the bake
  fp32 merged     every adapter merged into fp32 weights (how chat runs on a CPU)
  bf16 beside     bf16 weights with the newest fp32 adapter beside them, unmerged (how eval's KL runs it)
  bf16 merged     the same adapter merged into the bf16 weights (how chat, serve and export run on a GPU)

The teacher is the parent with the teacher prompt, in fp32. Not a timing: a precision check, on the CPU.
Its figures are in docs/engine.md (Models).

    .venv/bin/python scripts/bench/merge_precision.py REPO   # a repository baked on a real model
    (scripts/bench/fidelity.py --keep DIR leaves DIR/french, baked on SmolLM2-135M-Instruct)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path, help="a model repository whose HEAD is baked, with .bake/rollout.jsonl")
    args = ap.parse_args()
    import torch
    from peft import PeftModel

    from gitbake.engine import models
    from gitbake.repo.ggufbase import converted_dirs
    from gitbake.repo.repo import open_repo
    from gitbake.use.versions import materialised, resolve

    root: Path = args.repo
    repo = open_repo(root)
    version = resolve(repo, "HEAD")
    recs = [json.loads(line) for line in (root / ".bake" / "rollout.jsonl").read_text().splitlines()]
    held = [r for r in recs if r.get("split") == "heldout"]
    if not held or not version.adapters:
        sys.exit(f"{root}: needs a baked HEAD and held-out rollouts in .bake/rollout.jsonl")
    gguf = converted_dirs(repo.store)

    def logprobs(model: Any, side: str) -> list[Any]:
        out = []
        with torch.no_grad():
            for r in held:
                prompt, resp = r[side], r["response_ids"]
                ids = torch.tensor([prompt + resp])
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(resp)]
                out.append(torch.log_softmax(logits.float(), -1))
        return out

    def kl(teacher: list[Any], student: list[Any]) -> float:
        total = sum(float((t.exp() * (t - s)).sum()) for t, s in zip(teacher, student))
        return total / sum(t.shape[0] for t in teacher)

    t0 = time.perf_counter()
    with materialised(repo, version) as dirs:
        fp32 = models.load_base(version.base_model, root, "cpu", "fp32", gguf=gguf).model
        parent = fp32
        for d in dirs[:-1]:
            parent = PeftModel.from_pretrained(parent, str(d)).merge_and_unload()
        teacher = logprobs(parent, "teacher_ids")
        rows = {"parent": kl(teacher, logprobs(parent, "student_ids"))}
        merged32 = PeftModel.from_pretrained(copy.deepcopy(parent), str(dirs[-1])).merge_and_unload().eval()
        rows["fp32 merged"] = kl(teacher, logprobs(merged32, "student_ids"))
        del merged32
        bf16 = models.load_base(version.base_model, root, "cpu", "bf16", gguf=gguf).model
        for d in dirs[:-1]:
            bf16 = PeftModel.from_pretrained(bf16, str(d)).merge_and_unload()
        beside = PeftModel.from_pretrained(bf16, str(dirs[-1])).eval()
        rows["bf16 beside"] = kl(teacher, logprobs(beside, "student_ids"))
        rows["bf16 merged"] = kl(teacher, logprobs(beside.merge_and_unload().eval(), "student_ids"))
    tokens = sum(len(r["response_ids"]) for r in held)
    print(f"merge precision: {root} ({version.base_model}), {len(held)} held-out answers, {tokens} tokens")
    for name, value in rows.items():
        print(f"  {name:12s} KL {value:.4f}   gap_closed {1 - value / rows['parent']:.3f}")
    ratio = rows["bf16 merged"] / rows["bf16 beside"]
    print(f"  bf16 merged / bf16 beside = {ratio:.3f} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
