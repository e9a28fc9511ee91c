"""Token-by-token generation for chat and serve: streamed, and batched across concurrent requests.

`stream()` decodes one conversation with the KV cache and yields text as it is produced. `Batcher` runs a
worker thread that takes every request waiting when a batch starts (up to `max_batch`), left-pads them
into one batch and decodes them together, one forward pass per step for all of them, sending each
request its text deltas as they come. On two CPU cores this — not threads — is what makes concurrent
requests faster than one at a time: a forward pass over 8 rows costs little more than over one.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch


def stop_tokens(model: Any, tokenizer: Any) -> set[int]:
    eos = tokenizer.eos_token_id
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return stops | ({eos} if eos is not None else set())


class TextDecoder:
    """Incremental detokenisation: a byte-level token may end in the middle of a UTF-8 character, so the
    text is decoded cumulatively and only the stable new suffix is emitted."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        delta, self.sent = text[len(self.sent):], text
        return delta

    def flush(self) -> str:
        """What is left at the end (an incomplete character is shown as U+FFFD rather than lost)."""
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        delta, self.sent = text[len(self.sent):], text
        return delta


@dataclass
class Request:
    prompt: list[int]
    temperature: float
    max_tokens: int
    seed: int | None = None  # None: a fresh random seed, so unseeded sampled answers differ
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    events: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)  # ("text", str) | ("done", info) | ("error", str)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client went away: stop decoding it
    submitted: float = field(default_factory=time.monotonic)


class _Row:
    """One request inside a running batch."""

    def __init__(self, req: Request, tokenizer: Any) -> None:
        import os

        self.req = req
        self.ids = list(req.prompt)  # prompt + generated: what a re-prefill feeds
        self.produced = 0
        self.decoder = TextDecoder(tokenizer)
        self.text = ""  # generated text
        self.sent = 0  # how much of it the client has
        self.finish: str | None = None
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.gen = torch.Generator(device="cpu").manual_seed(seed)  # its own: a seed means the same answer in any batch

    def next_token(self, logits: torch.Tensor) -> int:
        r = self.req
        if r.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / r.temperature, dim=-1)
        if r.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < r.top_p  # the smallest set whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.gen))

    def visible(self, final: bool) -> str:
        """Text that can be sent: a tail that might begin a stop string is held back until it cannot."""
        end = len(self.text)
        if not final:
            for s in self.req.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


def cache_arg(model: Any) -> str:
    """The name of the KV cache in a forward's arguments and outputs (`cache` since transformers 5.24)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward_kwargs(model: Any) -> tuple[str, dict[str, Any]]:
    """The cache argument's name, and how to ask for the last position's logits only (a 150k vocabulary
    times every prompt position would be gigabytes)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {"num_logits_to_keep": 1} if "num_logits_to_keep" in params else {}
    return cache_arg(model), keep


class Decoder:
    """Rows decoded together, synchronously: left-padded prefill (positions count real tokens only, as
    generate() does), then one forward pass per step for every row, with the KV cache."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_tokens(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.cache_arg, self.keep_kwargs = _forward_kwargs(model)
        self.device = next(model.parameters()).device
        self.batches: list[int] = []  # rows of each prefill: sizes of the batches formed (tests, the benchmark)
        self.cancelled = 0  # requests stopped because their client left

    def prefill(self, rows: list[_Row]) -> torch.Tensor:
        self.batches.append(len(rows))
        n, width = len(rows), max(len(r.ids) for r in rows)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.ids):] = torch.tensor(r.ids, dtype=torch.long)
            mask[i, width - len(r.ids):] = 1
        self._mask = mask.to(self.device)
        self._pos = (self._mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), attention_mask=self._mask, position_ids=self._pos, use_cache=True,
                             **self.keep_kwargs)
        self._cache = getattr(out, self.cache_arg, None)
        self._pos = self._pos[:, -1:]
        logits: torch.Tensor = out.logits[:, -1, :].float().cpu()
        return logits

    def step(self, rows: list[_Row]) -> torch.Tensor:
        last = torch.tensor([[r.ids[-1]] for r in rows], dtype=torch.long, device=self.device)
        self._pos = self._pos + 1
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)], dim=1)
        with torch.no_grad():
            out = self.model(input_ids=last, attention_mask=self._mask, position_ids=self._pos, use_cache=True,
                             **{self.cache_arg: self._cache})
        self._cache = getattr(out, self.cache_arg, None)
        logits: torch.Tensor = out.logits[:, -1, :].float().cpu()
        return logits

    def advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            if row.finish is not None:
                row.ids.append(self.pad)  # finished rows ride along until the batch is rebuilt
                continue
            if row.req.cancelled.is_set():
                row.finish = "cancelled"
                self.cancelled += 1
                row.ids.append(self.pad)
                continue
            tok = row.next_token(logits[i])
            row.ids.append(tok)
            if tok in self.stops:
                self._finish(row, "stop", flush=True)
                continue
            row.produced += 1
            row.text += row.decoder.push(tok)
            hit = min((row.text.find(s) for s in row.req.stop if s and s in row.text), default=-1)
            if hit >= 0:
                row.text = row.text[:hit]
                self._finish(row, "stop", flush=False)  # nothing of the stop string or after it is sent
                continue
            if row.produced >= row.req.max_tokens:
                self._finish(row, "length", flush=True)
                continue
            delta = row.visible(final=False)
            if delta:
                row.req.events.put(("text", delta))

    def _finish(self, row: _Row, reason: str, flush: bool) -> None:
        if flush:
            row.text += row.decoder.flush()
        rest = row.visible(final=True)
        if rest:
            row.req.events.put(("text", rest))
        row.finish = reason
        row.req.events.put(("done", {"finish_reason": reason, "completion_tokens": row.produced, "prompt_tokens": len(row.req.prompt)}))


class Batcher(Decoder):
    """One model, one worker thread, requests decoded together. A request that arrives while a batch is
    running joins it at the next step (the batch is re-prefilled with every live row's tokens so far);
    a cancelled request (its client left) stops at once."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, gather_s: float = 0.01) -> None:
        super().__init__(model, tokenizer)
        self.max_batch, self.gather_s = max_batch, gather_s
        self.pending: "queue.Queue[Request]" = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="gitbake-batcher")
        self.thread.start()

    def submit(self, req: Request) -> Request:
        self.pending.put(req)
        return req

    def close(self) -> None:
        self._stop.set()

    def _take(self, n: int, wait: float) -> list[Request]:
        out: list[Request] = []
        deadline = time.monotonic() + wait
        while len(out) < n:
            try:
                out.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())) if wait else self.pending.get_nowait())
            except queue.Empty:
                break
        return out

    def _loop(self) -> None:
        rows: list[_Row] = []
        while not self._stop.is_set():
            try:
                if not rows:
                    try:
                        first = self.pending.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    rows = [_Row(r, self.tokenizer) for r in [first] + self._take(self.max_batch - 1, self.gather_s)]
                    logits = self.prefill(rows)
                else:
                    live = [r for r in rows if r.finish is None]
                    joining = self._take(self.max_batch - len(live), 0.0)
                    if joining or len(live) * 2 <= len(rows):
                        # new requests join, or finished rows outnumber live ones: rebuild the batch from live rows
                        rows = live + [_Row(r, self.tokenizer) for r in joining]
                        logits = self.prefill(rows)
                    else:
                        logits = self.step(rows)
                self.advance(rows, logits)
                if all(r.finish is not None for r in rows):
                    rows = []
            except Exception as exc:  # a failed batch fails its requests, not the server
                for r in rows:
                    if r.finish is None:
                        r.req.events.put(("error", f"{type(exc).__name__}: {exc}"))
                rows = []


def stream(model: Any, tokenizer: Any, prompt: Sequence[int], temperature: float = 0.7, max_tokens: int = 256,
           seed: int | None = 0) -> Iterator[str]:
    """Text deltas of one answer, as they are generated (the batch machinery, with one row, in this thread)."""
    dec = Decoder(model, tokenizer)
    req = Request(list(prompt), temperature, max_tokens, seed)
    rows = [_Row(req, tokenizer)]
    logits = dec.prefill(rows)
    while True:
        dec.advance(rows, logits)
        while not req.events.empty():
            kind, value = req.events.get_nowait()
            if kind == "text":
                yield value
        if rows[0].finish is not None:
            return
        logits = dec.step(rows)
