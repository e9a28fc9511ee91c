#!/usr/bin/env python3
"""Checking out model versions, next to what it would cost without gitbake, in one run.

  switch       `git checkout` between two model versions (100 MB adapters each) with the hooks
               installed (post-checkout re-materialises .bake/model)  vs  the same switch with hooks
               disabled                                                    goal: the hook adds < 150 ms
  idle hooks   each hook answering with nothing to do (`git bake hook NAME` as the shims run it)
               next to `python -c pass`                                    goal: < 150 ms each
  materialise  .bake/model for 1 GiB of adapters (links from the store)  vs  copying the same files
               out of an object directory, as git-lfs's smudge does        goal >= 50x faster

The repositories are real (`git bake init`, two commits whose .bread name adapters put in the store);
the adapters are random bytes in PEFT's file names (no training is needed to move files).

    .venv/bin/python scripts/bench/checkout.py [--runs 7] [--adapter-mb 100] [--total-mb 1024] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import timed  # noqa: E402

from gitbake.contract import bread as bread_mod  # noqa: E402
from gitbake.repo import modeldir  # noqa: E402
from gitbake.repo.repo import open_repo  # noqa: E402
from gitbake.store.objects import Store  # noqa: E402
from gitbake.workflow.init import init  # noqa: E402

MiB = 1 << 20


def fake_adapter(dir_: Path, size: int) -> Path:
    dir_.mkdir(parents=True)
    (dir_ / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "seed": os.urandom(8).hex()}))
    with open(dir_ / "adapter_model.safetensors", "wb") as fh:
        left = size
        while left:
            n = min(left, 16 * MiB)
            fh.write(os.urandom(n))
            left -= n
    return dir_


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def commit_model(root: Path, chain: list[str], msg: str) -> str:
    b = bread_mod.read(root)
    assert b is not None
    b.sections["PARENT_MODEL"] = {"model_name": f"local/bench/{msg}/1", "adapters": json.dumps(chain)}
    bread_mod.write(root, b)
    git(root, "add", ".bread")
    git(root, "commit", "-q", "--no-verify", "-m", msg)
    return git(root, "rev-parse", "HEAD").strip()


def bench_idle_hooks(root: Path, runs: int) -> dict[str, float]:
    """Each hook with nothing to do: the model is current, nothing is staged, the last commit is not input.yml's."""
    (root / "notes.txt").write_text("notes\n")
    git(root, "add", "notes.txt")
    git(root, "commit", "-q", "-m", "notes")
    head = git(root, "rev-parse", "HEAD").strip()
    calls = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "post-checkout": ["git", "bake", "hook", "post-checkout", head, head, "1"],
        "post-commit": ["git", "bake", "hook", "post-commit"],
        "pre-commit": ["git", "bake", "hook", "pre-commit"],
        "post-merge": ["git", "bake", "hook", "post-merge", "0"],
    }
    return {
        name: timed(lambda c=cmd: subprocess.run(c, cwd=root, check=True, capture_output=True), None, runs)
        for name, cmd in calls.items()
    }


def bench_switch(base: Path, adapter_mb: int, runs: int) -> tuple[float, float, Path]:
    root = base / "switch"
    init(root, base_model="tiny")  # installs the hooks
    store = open_repo(root).store
    digests = [
        store.put_dir(fake_adapter(base / f"a{i}", adapter_mb * MiB), {"kind": "adapter"}, take=True) for i in range(2)
    ]
    a = commit_model(root, [digests[0]], "version_a")
    b = commit_model(root, [digests[1]], "version_b")
    env = {**os.environ}
    targets = [a, b]

    def switch(hooks: bool) -> Callable[[], object]:
        state = {"i": 0}

        def go() -> None:
            state["i"] += 1
            args = (
                ["git"]
                + ([] if hooks else ["-c", "core.hooksPath=/dev/null"])
                + ["checkout", "-q", targets[state["i"] % 2]]
            )
            subprocess.run(args, cwd=root, check=True, env=env, capture_output=True)

        return go

    switch(True)()  # warm: .bake/model exists, the page cache holds git and python
    with_hooks = timed(switch(True), None, runs)
    current = json.loads((root / ".bake/model/model.json").read_text())["adapters"][0]["digest"]
    assert current in digests, "the hook did not materialise the model"
    without = timed(switch(False), None, runs)
    return with_hooks, without, root


def bench_materialise(base: Path, total_mb: int, runs: int) -> tuple[float, float]:
    store = Store(base / "store")
    per = total_mb // 4
    chain = [store.put_dir(fake_adapter(base / f"big{i}", per * MiB), {"kind": "adapter"}, take=True) for i in range(4)]
    spec = modeldir.ModelSpec("tiny", tuple(chain))
    dest = base / "model"
    copy_dest = base / "copied"
    # git-lfs's smudge: each file copied out of the object directory into the working tree
    sources = [
        (store.object_path(e.digest), f"{i}/{rel}")
        for i, d in enumerate(chain)
        for rel, e in store.read_manifest(d).files.items()
    ]

    def lfs_copy() -> None:
        for src, rel in sources:
            out = copy_dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)

    ours = timed(lambda: modeldir.materialise(store, spec, dest), lambda: shutil.rmtree(dest, ignore_errors=True), runs)
    theirs = timed(lfs_copy, lambda: shutil.rmtree(copy_dest, ignore_errors=True), runs)
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--adapter-mb", type=int, default=100)
    ap.add_argument("--total-mb", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=None, help="where to work (default: a temp dir)")
    args = ap.parse_args()
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    base = Path(tempfile.mkdtemp(prefix="gitbake-bench-checkout-", dir=args.dir))
    try:
        with_hooks, without, root = bench_switch(base, args.adapter_mb, args.runs)
        added = (with_hooks - without) * 1000
        print(f"switch between two models ({args.adapter_mb} MB adapters), median of {args.runs}:")
        print(f"  git checkout with gitbake's hooks   {with_hooks * 1000:8.1f} ms")
        print(f"  git checkout without hooks          {without * 1000:8.1f} ms")
        print(
            f"  the hook adds                       {added:8.1f} ms   goal < 150 ms: "
            f"{'met' if added < 150 else 'MISSED'}"
        )
        idle = bench_idle_hooks(root, args.runs)
        print(f"hooks with nothing to do, median of {args.runs}:")
        for name, t in idle.items():
            goal = "" if name.startswith("python") else f"   goal < 150 ms: {'met' if t < 0.150 else 'MISSED'}"
            print(f"  {name:<34}  {t * 1000:8.1f} ms{goal}")
        ours, theirs = bench_materialise(base, args.total_mb, args.runs)
        ratio = theirs / ours
        print(f"materialise {args.total_mb} MiB of adapters (4 adapters), median of {args.runs}:")
        print(f"  .bake/model (links from the store)  {ours * 1000:8.2f} ms")
        print(f"  copy out, as git-lfs smudges        {theirs * 1000:8.2f} ms")
        print(f"  materialise is {ratio:.1f}x faster        goal >= 50x: {'met' if ratio >= 50 else 'MISSED'}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
