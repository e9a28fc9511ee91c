#!/usr/bin/env python3
"""Bake throughput, memory and quality: ours next to a straightforward implementation, same run.

On the benchmark model (scripts/bench/_models.py: ~29 M parameters, 32k vocabulary, so logits matter)
and one fixed set of trajectories:

  ours           gitbake.engine.bake.Baker: one model (teacher = adapter disabled); the teacher's states at
                 the response positions computed once for the whole bake (its shared system prompt run
                 once, as a cached prefix); response-only hidden states; the output layer a vocabulary
                 slice at a time, teacher and student rows in one product, the KL's gradient in closed
                 form; length-bucketed micro-batches, each run as one packed row (no padding); activation
                 checkpointing; the model in the dtype `git bake` loads a bake's model in on this
                 machine (`auto`: bf16 on a CPU with native bf16 products, LoRA weights, optimizer and
                 loss in fp32; else fp32)
  straightforward  what a typical user writes: a frozen teacher copy plus a PEFT student, full logits for
                 the whole sequence, one sample per forward/backward, gradients accumulated to the same
                 batch size, with the same optimizer, learning rate and schedule, in fp32
  ours, fp32     ours with BAKE.model.dtype: fp32
  straightforward, bf16  the straightforward loop on the model in bf16
The last two give the same-precision comparisons, printed below the headline, so the share of the lead
that comes from the precision is visible. Below them, the ratio of the work (multiply-adds, counted from the
trajectories and the model's shapes) of the straightforward loop to a lean exact bake (nothing recomputed,
the teacher once, response rows only through the output layer) and to ours as configured.

The final KL of our side is measured as a user gets the model: the stored adapter on the fp32 parent,
against the fp32 parent.

Each runs in its own process, one after the other, --repeat times (interleaved; medians printed).
Printed: response tokens/s of training, peak memory
(peak RSS above the process's RSS right after its imports), and the final mean per-token
KL(teacher || student) on the trajectories. Goals: >= 2x tokens/s, <= 0.7x peak memory, final KL within 10%.
Then the example input.yml that `git bake init` writes, uncommented and baked on `tiny` through `git bake
run`, and its gap_closed on held-out questions (goal >= 0.95).

Then the data-parallel line: ours under `torchrun --nproc_per_node 2` (two CPU processes, gloo, a
micro-batch of 4 each, no accumulation) next to ours in one process with the same global batch (4 x 2
accumulated): response tokens/s of each, peak RSS per process (the largest rank's), final KL. On 2 cores
it is not expected to be faster; it shows what the collectives cost, so GPU figures can be read against it.
`--parallel-only` runs just this line.

    .venv/bin/python scripts/bench/bake.py [--trajectories 64] [--epochs 2] [--repeat 3] [--skip-demo]
        [--parallel-only]

Our side uses gitbake's defaults (micro-batch 4, lr 1e-3, linear decay, activation checkpointing);
BENCH_MBS, BENCH_LR, BENCH_SCHED and BENCH_NOCKPT=1 override them to explore the trade-offs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


def rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def trajectories(n: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """(teacher prompt, student prompt, response): the teacher prompt carries a 48-token 'system prompt'."""
    import random

    from _models import BENCH_CONFIG

    rng = random.Random(seed)
    v = BENCH_CONFIG["vocab_size"]
    system = [rng.randrange(3, v) for _ in range(48)]
    out = []
    for _ in range(n):
        q = [rng.randrange(3, v) for _ in range(rng.randint(12, 40))]
        resp = [rng.randrange(3, v) for _ in range(rng.randint(24, 64))]
        out.append(([1] + system + q, [1] + q, resp))
    return out


def final_kl(model_t, model_s, trajs) -> float:  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    total, n = 0.0, 0
    with torch.no_grad():
        for t, s, r in trajs:
            lt = F.log_softmax(model_t(torch.tensor([t + r[:-1]])).logits[0, len(t) - 1 :].float(), -1)
            ls = F.log_softmax(model_s(torch.tensor([s + r[:-1]])).logits[0, len(s) - 1 :].float(), -1)
            total += float((lt.exp() * (lt - ls)).sum())
            n += len(r)
    return total / n


def adapter_kl(trained, trajs) -> float:  # type: ignore[no-untyped-def]
    """Quality as a user gets it: the trained adapter on the fp32 parent, against the fp32 parent."""
    import tempfile

    from _models import bench_model
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as tmp:
        trained.save_pretrained(tmp)
        pm = PeftModel.from_pretrained(bench_model(), tmp).float().eval()

    class Teacher:
        def __call__(self, ids):  # type: ignore[no-untyped-def]
            with pm.disable_adapter():
                return pm(ids)

    return final_kl(Teacher(), pm, trajs)


def work_ratios(n: int, epochs: int) -> tuple[float, float]:
    """How many more multiply-adds the straightforward loop does than (a lean exact bake, our bake as
    configured), counted from the trajectories and the model's shapes: a decoder layer's linear layers
    cost 2 x their weights per token in a forward, as much again for the input gradients in a backward
    (the frozen weights get none; LoRA's and attention's share is small here); the output layer 2 x H x V
    per row and pass. The straightforward loop: the teacher's whole sequence forward, the student's forward
    and backward, every position through the output layer. The lean bake: the teacher once per bake (its
    shared prefix once), the student forward and backward with nothing recomputed (every layer at every
    position: a model's own forward; skipping the last layer's unused prompt rows would save a little), and
    per response row and epoch the student's logits and their gradient, plus the teacher's in the first
    epoch only (cached after, at V floats a row). Ours as configured (fp32, gitbake's defaults: the
    bench's BENCH_* overrides are not counted) adds one recomputed forward (activation checkpointing), the
    teacher's logits every epoch, and the padding of its batches."""
    from _models import BENCH_CONFIG as C

    h, i_, v, layers = C["hidden_size"], C["intermediate_size"], C["vocab_size"], C["num_hidden_layers"]
    body = 2 * layers * (4 * h * h + 3 * h * i_)  # per token, one forward
    head = 2 * h * v  # per row, one product
    from gitbake.engine.bake import Trajectory, batches

    trajs = trajectories(n)
    shared = 49  # the BOS and the 48-token system prompt every teacher sequence starts with
    naive = lean = 0.0
    for t, s_, r in trajs:
        lt, ls, lr = len(t) + len(r), len(s_) + len(r), len(r)
        naive += epochs * (body * (lt + 2 * ls) + head * (lt + 2 * ls))
        lean += body * (lt - shared) + epochs * (body * 2 * ls + head * 2 * lr) + head * lr
    # ours, fp32, with the padding of its batches: the teacher sorted by length in batches of 8, the student
    # in length-bucketed micro-batches of 4 (bf16 also rounds widths and rows up to 16: a little more)
    data = [Trajectory(t, s_, r) for t, s_, r in trajs]
    by_teacher = sorted(data, key=lambda x: len(x.teacher_ids) + len(x.response_ids))
    ours = sum(
        body * len(b) * max(len(x.teacher_ids) + len(x.response_ids) - 1 - shared for x in b)
        for b in (by_teacher[i : i + 8] for i in range(0, len(data), 8))
    )
    for epoch in range(epochs):
        for b in batches(data, 4, epoch):
            ours += body * 3 * len(b) * max(len(x.student_ids) + len(x.response_ids) - 1 for x in b)
            ours += head * 3 * sum(len(x.response_ids) for x in b)
    return naive / lean, naive / ours


def child(impl: str, n: int, epochs: int) -> None:
    import copy  # noqa: F401 - every import happens before the memory baseline is taken

    import peft  # noqa: F401
    import torch
    import torch.nn.functional as F  # noqa: F401
    import transformers  # noqa: F401
    from _models import BENCH_CONFIG, BenchTokenizer, bench_model
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401

    import gitbake.contract.config  # noqa: F401
    import gitbake.engine.bake  # noqa: F401

    base_rss = rss_kb()
    trajs = trajectories(n)
    tokens = sum(len(r) for _, _, r in trajs) * epochs
    lr, r_ = 1e-3, 8
    if impl in ("ours", "ours-fp32"):
        from gitbake.contract.config import Bake
        from gitbake.engine.bake import Baker, Trajectory
        from gitbake.engine.models import bake_dtype, pick_device

        model = bench_model()
        # the dtype `git bake` loads a bake's model in here (`auto`: bf16 on a CPU with native bf16)
        dtype = pick_device("cpu", "fp32" if impl == "ours-fp32" else bake_dtype(None, "cpu"))[1]
        model = model.to(dtype)
        mbs = int(os.environ.get("BENCH_MBS", "4"))
        cfg = Bake.model_validate(
            {
                "name": "b",
                "datasets": [{"target": "t"}],
                "epochs": epochs,
                "micro_batch_size": mbs,
                "gradient_accumulation_steps": int(os.environ.get("BENCH_GA", "1")),
                "optimizer": {"learning_rate": float(os.environ.get("BENCH_LR", str(lr)))},
                "scheduler": {"name": os.environ.get("BENCH_SCHED", "linear")},
                "model": {
                    "baked_adapter_config": {"r": r_, "lora_alpha": 16},
                    "disable_activation_checkpoint": os.environ.get("BENCH_NOCKPT") == "1",
                },
                "seed": 0,
            }
        )
        baker = Baker(model, BenchTokenizer(), cfg, "bench")
        t0, cpu0 = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            baker.train([Trajectory(t, s, r) for t, s, r in trajs], Path(tmp) / "a")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss
        kl = adapter_kl(baker.model, trajs) if os.environ.get("RANK", "0") == "0" else float("nan")
    else:
        import copy
        import math
        import random

        import torch.nn.functional as F
        from peft import LoraConfig, get_peft_model
        from transformers import get_scheduler

        teacher = bench_model()
        if impl == "naive-bf16":  # the same loop on a bf16 model (LoRA weights fp32, as PEFT makes them)
            teacher = teacher.to(torch.bfloat16)
        dtype = teacher.dtype
        student = get_peft_model(
            copy.deepcopy(teacher), LoraConfig(r=r_, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        for p in teacher.parameters():
            p.requires_grad_(False)
        mbs = int(os.environ.get("BENCH_MBS", "4"))
        steps = math.ceil(len(trajs) / mbs) * epochs
        opt = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=float(os.environ.get("BENCH_LR", str(lr)))
        )
        sched = get_scheduler(
            os.environ.get("BENCH_SCHED", "linear"), optimizer=opt, num_warmup_steps=0, num_training_steps=steps
        )
        student.train()
        rng = random.Random(0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            order = list(trajs)
            rng.shuffle(order)
            for i in range(0, len(order), mbs):  # one sample per forward/backward, full logits
                group = order[i : i + mbs]
                for t, s, r in group:
                    with torch.no_grad():
                        lt = F.log_softmax(teacher(torch.tensor([t + r])).logits[0].float(), -1)[len(t) - 1 : -1]
                    ls = F.log_softmax(student(torch.tensor([s + r])).logits[0].float(), -1)[len(s) - 1 : -1]
                    loss = F.kl_div(ls, lt, log_target=True, reduction="sum") / len(r) / len(group)
                    loss.backward()
                # the same batch, optimizer and schedule as ours; the loss is each sample's mean, as such
                # loops are usually written (ours weighs every response token the same: docs/engine.md)
                opt.step()
                sched.step()
                opt.zero_grad()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss
        student.eval()
        kl = final_kl(teacher, student, trajs) if impl == "naive" else adapter_kl(student, trajs)
    print(
        "RESULT "
        + json.dumps(
            {
                "impl": impl,
                "dtype": str(dtype).replace("torch.", ""),
                "tokens_per_s": tokens / elapsed,
                "tokens_per_cpu_s": tokens / cpu,
                "peak_mb": peak / 1024,
                "final_kl": kl,
                "seconds": elapsed,
                "vocab": BENCH_CONFIG["vocab_size"],
                "rank": int(os.environ.get("RANK", "0")),
            }
        ),
        flush=True,
    )


def demo_gap_closed() -> tuple[float | None, str]:
    from gitbake.workflow.init import template_input

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "b@x",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "b@x",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        }
        subprocess.run(["git", "bake", "init", "demo"], cwd=tmp, check=True, capture_output=True, env=env)
        root = Path(tmp) / "demo"
        subprocess.run(["git", "config", "bake.hookMode", "off"], cwd=root, check=True)  # `run` bakes, in this process
        (root / "input.yml").write_text(re.sub(r"(?m)^# ", "", template_input()))
        subprocess.run(["git", "commit", "-qam", "bake"], cwd=root, check=True, env=env)
        out = subprocess.run(["git", "bake", "run", "--json"], cwd=root, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            return None, out.stderr[-500:]
        bake = [r for r in json.loads(out.stdout)["stages"] if r["stage"] == "bake"][0]["extra"]
        return bake.get("gap_closed"), bake.get("note", "held-out questions")


def parallel_line(n: int, epochs: int, repeat: int) -> None:
    """2 ranks under torchrun against 1 process at the same global batch (see the docstring)."""
    import statistics

    torchrun = str(Path(sys.executable).parent / "torchrun")
    base = [__file__, "--child", "ours", "--trajectories", str(n), "--epochs", str(epochs)]
    setups = {
        "1 process, 4 x 2 accumulated": ([sys.executable, *base], {"BENCH_GA": "2"}),
        "2 processes (torchrun, gloo), 4 each": ([torchrun, "--nproc_per_node", "2", *base], {"BENCH_GA": "1"}),
    }
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in setups}
    for _ in range(repeat):
        for label, (cmd, extra) in setups.items():
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **extra})
            rows = [json.loads(x[x.index("RESULT ") + 7 :]) for x in proc.stdout.splitlines() if "RESULT " in x]
            if not rows:
                sys.exit(f"{label} failed:\n{proc.stderr[-2000:]}")
            rank0 = next(r for r in rows if r["rank"] == 0)
            got[label].append({**rank0, "peak_mb": max(r["peak_mb"] for r in rows)})
    print(f"data-parallel: the same global batch (8 trajectories a step), median of {repeat}:")
    med = {}
    for label, rows in got.items():
        med[label] = {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "peak_mb", "final_kl")}
        m = med[label]
        print(
            f"  {label:<40} {m['tokens_per_s']:8.0f} tokens/s   peak RSS {m['peak_mb']:6.0f} MB per process   "
            f"final KL {m['final_kl']:.4f}"
        )
    one, two = med.values()
    print(
        f"  2 processes / 1: tokens/s {two['tokens_per_s'] / one['tokens_per_s']:.2f}x, final KL "
        f"{100 * abs(two['final_kl'] - one['final_kl']) / max(one['final_kl'], 1e-9):.1f}% apart"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "ours-fp32", "naive", "naive-bf16"])
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, interleaved; medians are printed")
    ap.add_argument("--parallel-only", action="store_true", help="only the data-parallel line")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.trajectories, args.epochs)
        return
    if args.parallel_only:
        parallel_line(args.trajectories, args.epochs, args.repeat)
        return
    import statistics

    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": [], "ours-fp32": [], "naive-bf16": []}
    for _ in range(args.repeat):  # interleaved, so a slow spell of a noisy machine hits both sides
        for impl in runs:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    impl,
                    "--trajectories",
                    str(args.trajectories),
                    "--epochs",
                    str(args.epochs),
                ],
                capture_output=True,
                text=True,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{impl} failed:\n{proc.stderr[-2000:]}")
            runs[impl].append(json.loads(line[0][len("RESULT ") :]))
    med = {
        impl: {
            k: statistics.median(r[k] for r in rs)
            for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_mb", "final_kl", "seconds")
        }
        for impl, rs in runs.items()
    }
    ours, naive = med["ours"], med["naive"]
    print(
        f"bake bench: ~29 M-parameter Llama, 32k vocabulary, {args.trajectories} trajectories x {args.epochs} epochs, "
        f"median of {args.repeat} interleaved runs"
    )
    for name, impl in (
        ("ours", "ours"),
        ("straightforward", "naive"),
        ("ours, fp32", "ours-fp32"),
        ("straightforward, bf16", "naive-bf16"),
    ):
        r = med[impl]
        print(
            f"  {name:<22} {r['tokens_per_s']:9.1f} tokens/s   peak {r['peak_mb']:8.1f} MB   final KL "
            f"{r['final_kl']:.5f}   "
            f"({r['seconds']:.1f} s, {runs[impl][0]['dtype']})"
        )
    pairs = [o["tokens_per_s"] / n["tokens_per_s"] for o, n in zip(runs["ours"], runs["naive"])]
    print("  tokens/s ratio of each run: " + ", ".join(f"{x:.2f}x" for x in pairs))
    print(f"  tokens per CPU-second: {ours['tokens_per_cpu_s'] / naive['tokens_per_cpu_s']:.2f}x")
    speed = statistics.median(pairs)  # each run against the run beside it: a slow spell of the machine cancels
    mem = ours["peak_mb"] / naive["peak_mb"]
    kl_diff = abs(ours["final_kl"] - naive["final_kl"]) / naive["final_kl"]
    print(f"  tokens/s: {speed:.2f}x, median of those ratios (goal >= 2x: {'met' if speed >= 2 else 'MISSED'})")
    print(f"  peak memory: {mem:.2f}x (goal <= 0.7x: {'met' if mem <= 0.7 else 'MISSED'})")
    print(f"  final KL: {100 * kl_diff:.1f}% apart (goal within 10%: {'met' if kl_diff <= 0.1 else 'MISSED'})")
    print("  the same precision on both sides (the part of the lead that is not the precision):")
    for name, a, b in (("fp32", "ours-fp32", "naive"), ("bf16", "ours", "naive-bf16")):
        r = statistics.median(o["tokens_per_s"] / n["tokens_per_s"] for o, n in zip(runs[a], runs[b]))
        m = med[a]["peak_mb"] / med[b]["peak_mb"]
        k = abs(med[a]["final_kl"] - med[b]["final_kl"]) / med[b]["final_kl"]
        print(
            f"    {name}: {r:.2f}x tokens/s ({'met' if r >= 2 else 'MISSED'}), {m:.2f}x peak memory "
            f"({'met' if m <= 0.7 else 'MISSED'}), final KL {100 * k:.1f}% apart"
        )
    bound, configured = work_ratios(args.trajectories, args.epochs)
    print(
        f"  the work: the straightforward loop does {bound:.2f}x the multiply-adds of a bake that recomputes nothing, "
        "runs the"
    )
    print(
        f"    teacher once and only response rows through the output layer (any memory), {configured:.2f}x those of "
        "ours as"
    )
    print("    configured, in fp32 with its padding (work_ratios): what doing less work can give at the same precision")
    if not args.skip_demo:
        gap, note = demo_gap_closed()
        if gap is None:
            print(f"  init example bake failed: {note}")
        else:
            print(
                f"  init example baked on tiny: gap_closed {gap:.3f} on {note} (goal >= 0.95: "
                f"{'met' if gap >= 0.95 else 'MISSED'})"
            )
    parallel_line(args.trajectories, args.epochs, args.repeat)


if __name__ == "__main__":
    main()
