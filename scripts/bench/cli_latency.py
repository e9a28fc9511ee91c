#!/usr/bin/env python3
"""Median wall time of `git bake status` on a repository with 50 commits, next to baselines.

Times, in the same run on the same machine: a bare `python -c pass` (interpreter start-up, the floor for
any Python CLI), `git status` (what users compare us with) and `git bake status` (our goal: under 250 ms
median). Prints each median and the ratios, as the project's benchmarks do (absolute times are noisy).

    python scripts/bench/cli_latency.py [--runs 30] [--commits 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

YODA = """\
PROMPT:
  teacher:
    messages:
      - role: system
        content: You are Yoda. Speak like Yoda. Revision {i}.
TARGET:
  name: yoda_target
  generators:
    - type: hardcoded
      questions: ["What is the capital of France?", "How do I make tea?", "Why is the sky blue?"]
  num_traj_per_stimulus: 2
BAKE:
  name: yoda_bake
  datasets:
    - target: yoda_target
  epochs: {epochs}
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def build_repo(base: Path, commits: int, env: dict[str, str]) -> Path:
    subprocess.run(["git", "bake", "init", "bench", "--base-model", "tiny"], cwd=base, check=True, capture_output=True, env=env)
    root = base / "bench"
    git(root, "config", "bake.hookMode", "off")  # the history is what is measured, not 49 background bakes
    for i in range(commits - 1):
        (root / "input.yml").write_text(YODA.format(i=i, epochs=1 + i % 5))
        git(root, "commit", "-qam", f"revision {i}")
    return root


def median_ms(cmd: list[str], cwd: Path, runs: int, env: dict[str, str]) -> float:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)  # warm the page cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--commits", type=int, default=50)
    args = ap.parse_args()
    # the git-bake installed next to this interpreter (run this script with .venv/bin/python)
    bindir = str(Path(sys.executable).parent)
    if shutil.which("git-bake", path=bindir) is None:
        sys.exit(f"no git-bake in {bindir}: run scripts/test once (it installs gitbake into .venv), then .venv/bin/python {sys.argv[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        home = base / "home"
        home.mkdir()
        (home / ".gitconfig").write_text("[user]\n\tname = bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n")
        env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}
        root = build_repo(base, args.commits, env)
        count = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=root, capture_output=True, text=True, env=env).stdout.strip()
        results = {
            "python -c pass": median_ms([sys.executable, "-c", "pass"], root, args.runs, env),
            "git status": median_ms(["git", "status"], root, args.runs, env),
            "git bake status": median_ms(["git", "bake", "status"], root, args.runs, env),
        }
    print(f"cli_latency: {count} commits, {args.runs} runs each, median wall time")
    for name, ms in results.items():
        print(f"  {name:<16} {ms:8.1f} ms")
    ours = results["git bake status"]
    print(f"  git bake status / python -c pass = {ours / results['python -c pass']:.2f}x")
    print(f"  git bake status / git status     = {ours / results['git status']:.2f}x")
    verdict = "meets" if ours < 250 else "MISSES"
    print(f"  goal < 250 ms median: {verdict} ({ours:.1f} ms)")


if __name__ == "__main__":
    main()
