#!/usr/bin/env python3
"""`git bake serve` throughput: eight concurrent clients next to the same requests sent one at a time.

The server is gitbake's (`gitbake.serve.Server` with its batching engine, over real HTTP on 127.0.0.1,
driven by the official `openai` client with streaming), serving the shared benchmark model
(`_models.py`: Llama-shaped, ~29 M parameters, 32k vocabulary). Prints requests/s and the median time to
the first token for both, and the ratio. Goal: concurrent throughput >= 2x sequential, no request failing.

    .venv/bin/python scripts/bench/serve.py [--requests 32] [--clients 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import BENCH_CONFIG, bench_model  # noqa: E402


class Tokenizer:
    """Enough of a tokenizer for the benchmark model: characters to ids and back (no chat template)."""

    pad_token_id = BENCH_CONFIG["pad_token_id"]
    eos_token_id = BENCH_CONFIG["eos_token_id"]
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1] + [3 + (ord(c) * 7919) % (BENCH_CONFIG["vocab_size"] - 3) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" {i}" for i in ids if i > 2)


def run(c: Any, name: str, question: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, total seconds) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    stream = c.chat.completions.create(model=name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
                                       temperature=0, stream=True)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def serve_only(portfile: Path, clients: int) -> None:
    """The server process: gitbake's Server and Batcher on the benchmark model, until terminated."""
    import json as _json

    from gitbake.engine.infer import Batcher
    from gitbake.serve import Served, Server

    model = bench_model()
    tok = Tokenizer()
    name = "bench_bake_000000000000"
    batcher = Batcher(model, tok, max_batch=clients)
    version = SimpleNamespace(commit="0" * 40, adapters=())
    server = Server({name: Served(name, version, SimpleNamespace(model=model, tokenizer=tok), batcher)}, "127.0.0.1", 0, None)
    tmp = portfile.with_suffix(".tmp")
    tmp.write_text(_json.dumps({"url": server.url, "name": name}))
    tmp.rename(portfile)

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        sizes = batcher.batches
        print(f"  server: {len(sizes)} batches, sizes {sizes}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--serve-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_only:
        serve_only(args.serve_only, args.clients)
        return

    from openai import OpenAI

    # the server runs in its own process, as `git bake serve` does: clients in the same process would
    # compete with it for the interpreter lock and the measure would be of that
    import json as _json
    import subprocess
    import tempfile

    portfile = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-only", str(portfile), "--clients", str(args.clients)])
    while not portfile.exists():
        if proc.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.1)
    info = _json.loads(portfile.read_text())
    name = info["name"]
    client = OpenAI(base_url=info["url"], api_key="none", max_retries=0, timeout=600)
    questions = [f"Question number {i}: tell me about item {i * 37 % 101} in some detail." for i in range(args.requests)]
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
    print(f"  one at a time        {seq_rps:7.2f} req/s   median first token {med_first(seq):8.1f} ms   failed {failures['sequential']}")
    print(f"  {args.clients} concurrent clients {conc_rps:7.2f} req/s   median first token {med_first(conc):8.1f} ms   failed {failures['concurrent']}")
    print(f"  concurrent / sequential = {ratio:.2f}x   goal >= 2x with no failures: {'met' if ok else 'MISSED'}")
    proc.terminate()  # the server prints the batches it formed as it stops
    proc.wait(30)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
