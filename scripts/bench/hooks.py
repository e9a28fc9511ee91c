#!/usr/bin/env python3
"""What gitbake's hooks add to a commit that does not touch input.yml, in one run.

  commit      `git commit` of a one-line change to notes.txt in a model repository (`git bake init`, so
              pre-commit and post-commit are gitbake's shims)  vs  the same commit with
              `git -c core.hooksPath=/dev/null commit` (no hook runs)       goal: the hooks add < 150 ms
  python path `git bake hook pre-commit` and `git bake hook post-commit` run directly, i.e. what each
              hook would cost if its shim could not answer in shell, next to `python -c pass`

Rounds are interleaved (baseline, hooks, hooks, baseline: _timing.paired), and every figure is a median;
the working tree change is staged before each timed commit, untimed.

    .venv/bin/python scripts/bench/hooks.py [--runs 15]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import paired, timed  # noqa: E402
from cli_latency import bench_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="rounds (each times two commits of each kind)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = bench_env(base)  # bytecode cached, as for an installed gitbake (cli_latency.py says why)

        def run(*cmd: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True, env=env)

        init = ["git", "bake", "init", "bench", "--base-model", "tiny"]
        subprocess.run(init, cwd=base, check=True, capture_output=True, env=env)
        root = base / "bench"
        states = run("git", "bake", "hooks", "ls").stdout
        assert "pre-commit" in states and "post-commit" in states, states
        counter = itertools.count()

        def stage() -> None:
            (root / "notes.txt").write_text(f"note {next(counter)}\n")
            run("git", "add", "notes.txt")

        def with_hooks() -> None:
            out = run("git", "commit", "-q", "-m", "notes")
            assert not out.stderr, out.stderr  # a hook with nothing to do says nothing

        def without_hooks() -> None:
            run("git", "-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", "notes")

        for _ in range(2):  # warm the page cache; the first post-commit leaves .bake/model.verified
            stage()
            with_hooks()
        hooked, bare, _ratio = paired(with_hooks, stage, without_hooks, stage, args.runs)
        py = timed(lambda: run(sys.executable, "-c", "pass"), None, args.runs)
        pre = timed(lambda: run("git", "bake", "hook", "pre-commit"), stage, args.runs)
        post = timed(lambda: run("git", "bake", "hook", "post-commit"), None, args.runs)
        commits = run("git", "rev-list", "--count", "HEAD").stdout.strip()

    ms = 1000.0
    added = (hooked - bare) * ms
    print(
        f"hooks: a commit not touching input.yml, {args.runs} rounds (2 commits of each kind a round), "
        f"{commits} commits made, median wall time"
    )
    print(f"  git commit (gitbake's hooks)          {hooked * ms:8.1f} ms")
    print(f"  git commit (core.hooksPath=/dev/null) {bare * ms:8.1f} ms")
    verdict = "meets" if added < 150 else "MISSES"
    print(f"  hooks add                             {added:8.1f} ms   goal < 150 ms: {verdict}")
    print("  if the shims went to Python (the hook run directly):")
    print(f"    git bake hook pre-commit            {pre * ms:8.1f} ms")
    print(f"    git bake hook post-commit           {post * ms:8.1f} ms")
    print(f"    python -c pass                      {py * ms:8.1f} ms")


if __name__ == "__main__":
    main()
