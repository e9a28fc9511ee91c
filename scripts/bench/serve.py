#!/usr/bin/env python3
"""`git bake serve` throughput: eight concurrent clients next to the same requests sent one at a time, on
today's server (Starlette + uvicorn) and, in the same run, on the server it replaced (http.server threads).

The server is the real `git bake serve`, in its own process, over HTTP on 127.0.0.1, for a model
repository whose base model is the shared benchmark model (`_models.py`: Llama-shaped, ~29 M parameters,
32k vocabulary) saved as a local directory; the clients use the official `openai` client with streaming.
The baseline is gitbake's code at --baseline (default: the last commit before the ASGI server), exported
from this repository's history and run by the same interpreter (PYTHONPATH), on the same model repository.
The two servers take turns (--rounds), so drift in the machine's speed hits both.

Prints, for each server, requests/s and the median time to the first token one at a time and with
--clients concurrent clients, and the ratios. Goals: concurrent >= 2x sequential with no request failing;
the ASGI server's concurrent throughput >= the baseline's.

    .venv/bin/python scripts/bench/serve.py [--requests 32] [--clients 8] [--max-tokens 32] [--rounds 2]
        [--baseline REV]
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
from dataclasses import dataclass
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


BASELINE = "759ce50"  # the last commit whose `git bake serve` is http.server's ThreadingHTTPServer


@dataclass
class Measured:
    seq_rps: float
    conc_rps: float
    seq_first_ms: float
    conc_first_ms: float
    failed: int


def export_baseline(rev: str, dest: Path) -> Path:
    """gitbake's package at `rev`, as files under `dest` (for PYTHONPATH)."""
    repo = Path(__file__).resolve().parents[2]
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "gitbake"], cwd=repo, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure(root: Path, env: dict[str, str], args: argparse.Namespace) -> Measured:
    """Start `git bake serve` with `env`, send the requests one at a time then concurrently, stop it."""
    from openai import OpenAI

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
    failures = [0]

    def one(q: str) -> tuple[float, float] | None:
        try:
            return run(client, name, q, args.max_tokens)
        except Exception as exc:  # counted, and printed: the goal includes "no request fails"
            failures[0] += 1
            print(f"  request failed: {exc}")
            return None

    try:
        one("warm up")  # first-call costs (allocations, lazy imports) belong to neither side
        t0 = time.perf_counter()
        seq = [one(q) for q in questions]
        seq_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            conc = list(pool.map(one, questions))
        conc_wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)

    def med_first(rows: list[tuple[float, float] | None]) -> float:
        vals = [r[0] for r in rows if r is not None]
        return statistics.median(vals) * 1000 if vals else float("nan")

    n = len(questions)
    return Measured(n / seq_wall, n / conc_wall, med_first(seq), med_first(conc), failures[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="turns each server takes; the best of each is kept")
    ap.add_argument("--baseline", default=BASELINE, help="the commit whose server is the baseline")
    args = ap.parse_args()
    import os

    base = Path(tempfile.mkdtemp(prefix="gitbake-bench-serve-"))
    root = model_repo(base)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    env.pop("PYTHONPATH", None)
    old = export_baseline(args.baseline, base / "baseline")
    servers = {"asgi (today)": env, f"http.server ({args.baseline})": {**env, "PYTHONPATH": str(old)}}
    runs: dict[str, list[Measured]] = {k: [] for k in servers}
    try:
        for _ in range(args.rounds):
            for label, e in servers.items():
                runs[label].append(measure(root, e, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{args.requests} requests of {args.max_tokens} tokens, streamed, to git bake serve (benchmark model); "
        f"best of {args.rounds} turns each:"
    )
    best = {}
    ok = True
    for label, rows in runs.items():
        b = max(rows, key=lambda r: r.conc_rps)
        s = max(rows, key=lambda r: r.seq_rps)
        failed = sum(r.failed for r in rows)
        best[label] = b
        ratio = b.conc_rps / s.seq_rps
        ok = ok and ratio >= 2 and not failed
        print(f"  {label}")
        print(f"    one at a time        {s.seq_rps:7.2f} req/s   median first token {s.seq_first_ms:8.1f} ms")
        print(
            f"    {args.clients} concurrent clients {b.conc_rps:7.2f} req/s   median first token "
            f"{b.conc_first_ms:8.1f} ms   failed {failed}"
        )
        verdict = "met" if ratio >= 2 and not failed else "MISSED"
        print(f"    concurrent / sequential = {ratio:.2f}x (goal >= 2x, no failures: {verdict})")
    new, old_best = list(best.values())
    vs = new.conc_rps / old_best.conc_rps
    ok = ok and vs >= 1.0
    print(
        f"  asgi / http.server, concurrent throughput = {vs:.2f}x   goal >= 1.00x: {'met' if vs >= 1.0 else 'MISSED'}"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
