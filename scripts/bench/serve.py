#!/usr/bin/env python3
"""`git bake serve` throughput: eight concurrent clients next to the same requests sent one at a time.

The server is the real `git bake serve`, in its own process, over HTTP on 127.0.0.1, for a model
repository whose base model is the shared benchmark model (`_models.py`: Llama-shaped, ~29 M parameters,
32k vocabulary) saved as a local directory; the clients use the official `openai` client with streaming.
Prints requests/s and the median time to
the first token for both, and the ratio. Goal: concurrent throughput >= 2x sequential, no request failing.

    .venv/bin/python scripts/bench/serve.py [--requests 32] [--clients 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import bench_model  # noqa: E402


def run(c: Any, name: str, question: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, total seconds) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    stream = c.chat.completions.create(
        model=name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def model_repo(base: Path) -> Path:
    """A model repository whose base model is the benchmark model, saved as a local directory (with the
    built-in tiny model's byte-level tokenizer: the text is noise, the compute is the benchmark's)."""
    import os

    from gitbake.engine.tiny import build_tokenizer

    model_dir = base / "bench-model"
    bench_model().save_pretrained(str(model_dir))
    build_tokenizer().save_pretrained(str(model_dir))
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@x",
    }
    subprocess.run(
        ["git", "bake", "init", str(base / "repo"), "--base-model", str(model_dir)],
        check=True,
        capture_output=True,
        env=env,
    )
    return base / "repo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    from openai import OpenAI

    # the real `git bake serve`, in its own process, on a repository whose model is the benchmark model
    base = Path(tempfile.mkdtemp(prefix="gitbake-bench-serve-"))
    root = model_repo(base)
    import os

    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen(
        ["git", "bake", "serve", "--port", "0", "--max-batch", str(args.clients)],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line, m = "", None
    while proc.stderr is not None and m is None:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.match(r"serving (.+) at (http://\S+) ", line)
    if not m:
        proc.kill()
        raise SystemExit(f"git bake serve did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    name, url = m.group(1), m.group(2)
    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    questions = [
        f"Question number {i}: tell me about item {i * 37 % 101} in some detail." for i in range(args.requests)
    ]
    failures = {"sequential": 0, "concurrent": 0}

    def one(kind: str, q: str) -> tuple[float, float] | None:
        try:
            return run(client, name, q, args.max_tokens)
        except Exception as exc:  # counted, and printed: the goal includes "no request fails"
            failures[kind] += 1
            print(f"  {kind} request failed: {exc}")
            return None

    try:
        one("sequential", "warm up")  # first-call costs (allocations, lazy imports) belong to neither side
        t0 = time.perf_counter()
        seq = [one("sequential", q) for q in questions]
        seq_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            conc = list(pool.map(lambda q: one("concurrent", q), questions))
        conc_wall = time.perf_counter() - t0
    except BaseException:
        proc.terminate()
        raise

    def med_first(rows: list[tuple[float, float] | None]) -> float:
        vals = [r[0] for r in rows if r is not None]
        return statistics.median(vals) * 1000 if vals else float("nan")

    seq_rps, conc_rps = len(questions) / seq_wall, len(questions) / conc_wall
    ratio = conc_rps / seq_rps
    ok = ratio >= 2 and not any(failures.values())
    print(f"{len(questions)} requests of {args.max_tokens} tokens, streamed, to git bake serve (benchmark model):")
    print(
        f"  one at a time        {seq_rps:7.2f} req/s   median first token {med_first(seq):8.1f} ms   failed "
        f"{failures['sequential']}"
    )
    print(
        f"  {args.clients} concurrent clients {conc_rps:7.2f} req/s   median first token {med_first(conc):8.1f} ms   "
        f"failed {failures['concurrent']}"
    )
    print(f"  concurrent / sequential = {ratio:.2f}x   goal >= 2x with no failures: {'met' if ok else 'MISSED'}")
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(base, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
