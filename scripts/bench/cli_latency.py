#!/usr/bin/env python3
"""Median wall time of `git bake status` on a repository with 50 commits, next to baselines.

Times, in the same run on the same machine: a bare `python -c pass` (interpreter start-up, the floor for
any Python CLI), `git status` (what users compare us with) and `git bake status` (our goals: under 250 ms
median, and at most 8x `python -c pass`). Prints each median and the ratios, as the project's benchmarks
do (absolute times are noisy). The commands run in interleaved rounds, so a slow spell of a shared machine
hits all three alike.

`git bake status` reuses the plan it validated last while input.yml and what it reads are unchanged
(gitbake.repo.plancache), as a user who runs status again and again sees it. The first status after an
edit validates in full: the "cache cleared" row times that case (the removal of the cache file included).

Python's bytecode is cached (in a temporary PYTHONPYCACHEPREFIX), as it is for an installed gitbake, even
where the environment sets PYTHONDONTWRITEBYTECODE (this sandbox does): otherwise every run recompiles
each gitbake module it imports, a cost no user pays. `--no-pyc` keeps the environment as it is.

    python scripts/bench/cli_latency.py [--runs 30] [--commits 50] [--no-pyc]
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
    init = ["git", "bake", "init", "bench", "--base-model", "tiny"]
    subprocess.run(init, cwd=base, check=True, capture_output=True, env=env)
    root = base / "bench"
    git(root, "config", "bake.hookMode", "off")  # the history is what is measured, not 49 background bakes
    for i in range(commits - 1):
        (root / "input.yml").write_text(YODA.format(i=i, epochs=1 + i % 5))
        git(root, "commit", "-qam", f"revision {i}")
    return root


def median_ms(cmds: dict[str, list[str]], cwd: Path, runs: int, env: dict[str, str]) -> dict[str, float]:
    """Median ms of each command, over `runs` rounds that run each once, in turn (interleaved)."""
    for cmd in cmds.values():
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)  # warm the page (and bytecode) cache
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_env(base: Path, pyc: bool = True) -> dict[str, str]:
    """The environment of a benchmark's commands: the git-bake installed next to this interpreter (run the
    script with .venv/bin/python) first on PATH, a HOME and git config of its own under `base`, and
    (`pyc`) bytecode cached under `base`, as it is for an installed gitbake."""
    bindir = str(Path(sys.executable).parent)
    if shutil.which("git-bake", path=bindir) is None:
        sys.exit(
            f"no git-bake in {bindir}: run scripts/test once (it installs gitbake into .venv), "
            f"then .venv/bin/python {sys.argv[0]}"
        )
    home = base / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[user]\n\tname = bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
    }
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--commits", type=int, default=50)
    ap.add_argument("--no-pyc", action="store_true", help="leave bytecode caching as the environment has it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = bench_env(base, pyc=not args.no_pyc)
        root = build_repo(base, args.commits, env)
        count = subprocess.run(
            ["git", "rev-list", "--count", "HEAD"], cwd=root, capture_output=True, text=True, env=env
        ).stdout.strip()
        results = median_ms(
            {
                "python -c pass": [sys.executable, "-c", "pass"],
                "git status": ["git", "status"],
                "git bake status": ["git", "bake", "status"],
                # the first status after input.yml changed validates it in full (pydantic), then caches it
                "  cache cleared": ["sh", "-c", "rm -f .git/gitbake-plan.json && exec git bake status"],
            },
            root,
            args.runs,
            env,
        )
    pyc = "as the environment has it" if args.no_pyc else "cached"
    print(f"cli_latency: {count} commits, {args.runs} interleaved runs each, bytecode {pyc}, median wall time")
    for name, ms in results.items():
        print(f"  {name:<16} {ms:8.1f} ms")
    ours = results["git bake status"]
    print(f"  git bake status / python -c pass = {ours / results['python -c pass']:.2f}x")
    print(f"  git bake status / git status     = {ours / results['git status']:.2f}x")
    verdict = "meets" if ours < 250 else "MISSES"
    print(f"  goal < 250 ms median: {verdict} ({ours:.1f} ms)")
    ratio = ours / results["python -c pass"]
    print(f"  goal <= 8x python -c pass: {'meets' if ratio <= 8 else 'MISSES'} ({ratio:.2f}x)")
    cold = results["  cache cleared"] / results["python -c pass"]
    print(f"  (after input.yml changed, before its plan is cached: {cold:.2f}x python -c pass)")


if __name__ == "__main__":
    main()
