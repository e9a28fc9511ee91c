"""Token-by-token generation for chat and serve: streamed, and batched across concurrent requests.

`stream()` decodes one conversation with the KV cache and yields text as it is produced. `Batcher` runs a
worker thread that decodes every request in flight together, one forward pass per step for all of them,
sending each request its text deltas as they come. On two CPU cores this — not threads — is what makes
concurrent requests faster than one at a time: a forward pass over 8 rows costs little more than over one.
A request that arrives mid-batch is prefilled on its own and its KV cache spliced into the batch's; a
long prompt is prefilled a chunk at a time between the batch's steps, so it delays the others by a
chunk, not by its whole prefill.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gitbake.engine.sampling import Sampling, TokenLogprob, choose, logprob_of
from gitbake.engine.templating import with_turn_stops

GREEDY = Sampling(temperature=0.0, seed=0)


def stop_tokens(model: Any, tokenizer: Any) -> set[int]:
    eos = tokenizer.eos_token_id
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return stops | ({eos} if eos is not None else set())


class TextDecoder:
    """Incremental detokenisation: a byte-level token may end in the middle of a UTF-8 character, so the
    text is decoded cumulatively and only the stable new suffix is emitted."""

    def __init__(self, tokenizer: Any, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.skip_special = skip_special  # False: special tokens the model writes stay in the text

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special))
        if text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def flush(self) -> str:
        """What is left at the end (an incomplete character is shown as U+FFFD rather than lost)."""
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special))
        delta, self.sent = text[len(self.sent) :], text
        return delta


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    events: queue.Queue[tuple[str, Any]] = field(
        default_factory=queue.Queue
    )  # ("text", str) | ("logprobs", [TokenLogprob]) before the text of those tokens | ("done", info) | ("error", str)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client went away: stop decoding it
    submitted: float = field(default_factory=time.monotonic)
    # False: special tokens the model writes (not the one that ends it) stay in the text, for a response
    # template whose delimiters are special tokens (Mistral's [TOOL_CALLS], Llama 3.1's <|python_tag|>)
    skip_special: bool = True

    def result(self, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        """The whole answer and its "done" info (with `logprobs`, when asked), once decoded; RuntimeError
        (the batch's message) if it failed."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "text":
                parts.append(value)
            elif kind == "logprobs":
                logprobs += value
            elif kind == "done":
                return "".join(parts), {**value, "logprobs": logprobs} if self.sampling.logprobs else value
            else:
                raise RuntimeError(value)


NO_IDS = torch.empty((1, 0), dtype=torch.long)  # what the processors get when none of them reads the ids


class _Row:
    """One request inside a running batch."""

    def __init__(self, req: Request, tokenizer: Any) -> None:
        import os

        self.req = req
        self.ids = list(req.prompt)  # prompt + generated: what a re-prefill feeds
        self.produced = 0
        self.decoder = TextDecoder(tokenizer, req.skip_special)
        self.text = ""  # generated text
        self.sent = 0  # how much of it the client has
        self.finish: str | None = None
        s = req.sampling
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.gen = torch.Generator(device="cpu").manual_seed(seed)  # its own: a seed means the same answer in any batch
        self.processors = s.processors(len(req.prompt))
        self.reads_ids = s.repetition_penalty != 1.0 or bool(s.presence_penalty or s.frequency_penalty)
        self.pending: list[TokenLogprob] = []  # log-probabilities of tokens whose text is not sent yet

    def next_token(self, logits: torch.Tensor) -> int:
        ids = torch.tensor([self.ids], dtype=torch.long) if self.reads_ids else NO_IDS
        tok = choose(self.req.sampling, self.processors, ids, logits, self.gen)
        if self.req.sampling.logprobs:
            self.pending.append(logprob_of(logits, tok, self.req.sampling.top_logprobs))
        return tok

    def send(self, text: str) -> None:
        """Send `text`, with the log-probabilities of the tokens it came from first."""
        if self.pending:
            self.req.events.put(("logprobs", self.pending))
            self.pending = []
        if text:
            self.req.events.put(("text", text))

    def visible(self, final: bool) -> str:
        """Text that can be sent: a tail that might begin a stop string is held back until it cannot."""
        end = len(self.text)
        if not final:
            for s in self.req.sampling.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
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
    keep = (
        {"logits_to_keep": 1}
        if "logits_to_keep" in params
        else {"num_logits_to_keep": 1}
        if "num_logits_to_keep" in params
        else {}
    )
    return cache_arg(model), keep


@dataclass
class _Batch:
    """Rows decoded together and their KV cache. Rows are left-padded to a common width: `mask` marks the
    cache slots that hold a real token, `pos` is each row's position of its last cached token. Each row's
    last id (`ids[-1]`) is not in the cache yet: the next step feeds it."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor


@dataclass
class _Prefill:
    """A prompt longer than a chunk, fed `chunk` tokens at a time into a cache of its own, between the
    decode steps of the batch; it joins the batch with its first token."""

    row: _Row
    cache: Any = None
    done: int = 0  # prompt tokens in `cache`


def _spliceable(cache: Any) -> bool:
    """Whether the cache is a plain per-layer key/value store (transformers' DynamicLayer) whose rows can be
    selected and concatenated. Other kinds (sliding windows, offloaded, quantized, older transformers)
    are rebuilt by a prefill instead."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not layers or getattr(cache, "offloading", False):
        return False
    return all(
        type(layer).__name__ == "DynamicLayer" and isinstance(getattr(layer, "keys", None), torch.Tensor)
        for layer in layers
    )


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


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
        # what the decoder did, in order: ("prefill" | "chunk" | "step" | "done", id of the request or rows)
        # — how tests see the interleaving without timing anything; bounded, as a server runs for days
        self.trace: deque[tuple[str, int]] = deque(maxlen=4096)
        self.batch: _Batch | None = None

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """The last position's logits of each row, and the cache holding `ids` after `cache`'s tokens."""
        kwargs = {self.cache_arg: cache} if cache is not None else {}
        with torch.no_grad():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **self.keep_kwargs, **kwargs
            )
        logits: torch.Tensor = out.logits[:, -1, :].float().cpu()
        return logits, getattr(out, self.cache_arg, None)

    def _fill(self, rows: list[_Row], feeds: list[list[int]]) -> tuple[_Batch, torch.Tensor]:
        """A fresh batch whose cache holds each row's `feeds`, left-padded to one width, in one forward."""
        n, width = len(rows), max(len(f) for f in feeds)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(feeds):
            ids[i, width - len(f) :] = torch.tensor(f, dtype=torch.long)
            mask[i, width - len(f) :] = 1
        mask = mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids.to(self.device), mask, pos, None)
        return _Batch(rows, cache, mask, pos[:, -1:]), logits

    def _start(self, rows: list[_Row]) -> tuple[_Batch, torch.Tensor]:
        """A batch of `rows` from their prompts, and the logits of each row's first token."""
        self.batches.append(len(rows))
        self.trace.append(("prefill", len(rows)))
        return self._fill(rows, [r.ids for r in rows])

    def prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Start decoding `rows` (the decoder's one batch); the logits of each row's first token."""
        self.batch, logits = self._start(rows)
        return logits

    def _step(self, batch: _Batch) -> torch.Tensor:
        n = len(batch.rows)
        last = torch.tensor([[r.ids[-1]] for r in batch.rows], dtype=torch.long, device=self.device)
        batch.pos = batch.pos + 1
        batch.mask = torch.cat([batch.mask, torch.ones((n, 1), dtype=batch.mask.dtype, device=self.device)], dim=1)
        self.trace.append(("step", n))
        logits, batch.cache = self._forward(last, batch.mask, batch.pos, batch.cache)
        return logits

    def step(self, rows: list[_Row]) -> torch.Tensor:
        """The next token's logits of every row of the batch that `prefill(rows)` started."""
        assert self.batch is not None and self.batch.rows is rows
        return self._step(self.batch)

    def advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            if row.finish is not None:
                row.ids.append(self.pad)  # finished rows ride along until the batch is compacted
                continue
            if row.req.cancelled.is_set():
                row.finish = "cancelled"
                self.cancelled += 1
                row.ids.append(self.pad)
                continue
            tok = row.next_token(logits[i])
            row.ids.append(tok)
            if tok in self.stops:
                if row.pending:
                    row.pending.pop()  # the end-of-turn token is not part of the answer
                self._finish(row, "stop", flush=True)
                continue
            row.produced += 1
            row.text += row.decoder.push(tok)
            hit = min((row.text.find(s) for s in row.req.sampling.stop if s and s in row.text), default=-1)
            if hit >= 0:
                row.text = row.text[:hit]
                self._finish(row, "stop", flush=False)  # nothing of the stop string or after it is sent
                continue
            if row.produced >= row.req.max_tokens:
                self._finish(row, "length", flush=True)
                continue
            delta = row.visible(final=False)
            if delta:
                row.send(delta)

    def _finish(self, row: _Row, reason: str, flush: bool) -> None:
        if flush:
            row.text += row.decoder.flush()
        row.send(row.visible(final=True))
        row.finish = reason
        self.trace.append(("done", id(row.req)))
        row.req.events.put(
            ("done", {"finish_reason": reason, "completion_tokens": row.produced, "prompt_tokens": len(row.req.prompt)})
        )

    def _rebuild(self, rows: list[_Row]) -> _Batch:
        """A batch of rows already decoding, by prefilling what they have so far (all but each last id)."""
        self.trace.append(("prefill", len(rows)))
        return self._fill(rows, [r.ids[:-1] for r in rows])[0]

    def _compact(self, batch: _Batch) -> _Batch | None:
        """The batch without its finished rows (None when none is left), and without the leading cache
        columns that only they used."""
        live = [i for i, r in enumerate(batch.rows) if r.finish is None]
        if not live:
            return None
        if len(live) == len(batch.rows):
            return batch
        rows = [batch.rows[i] for i in live]
        if not _spliceable(batch.cache):
            return self._rebuild(rows)
        idx = torch.tensor(live, dtype=torch.long, device=self.device)
        mask = batch.mask[idx]
        first = int(mask.any(0).nonzero()[0])
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, first:], layer.values[idx, :, first:]
        return _Batch(rows, batch.cache, mask[:, first:], batch.pos[idx])

    def _splice(self, a: _Batch, b: _Batch) -> _Batch:
        """One batch of both: the caches left-padded to one width and concatenated, not recomputed."""
        if not (_spliceable(a.cache) and _spliceable(b.cache)):
            return self._rebuild(a.rows + b.rows)
        width = max(a.mask.shape[1], b.mask.shape[1])
        for la, lb in zip(a.cache.layers, b.cache.layers):
            la.keys = torch.cat([_left_pad(la.keys, width, 2), _left_pad(lb.keys, width, 2)])
            la.values = torch.cat([_left_pad(la.values, width, 2), _left_pad(lb.values, width, 2)])
        mask = torch.cat([_left_pad(a.mask, width, 1), _left_pad(b.mask, width, 1)])
        return _Batch(a.rows + b.rows, a.cache, mask, torch.cat([a.pos, b.pos]))


class Batcher(Decoder):
    """One model, one worker thread, requests decoded together. Each turn of its loop:

    - requests that arrived join: prompts of up to `chunk` tokens are prefilled together in one forward
      and spliced into the running batch's KV cache (nothing of the batch is recomputed); longer ones are
      set aside to be prefilled a chunk at a time;
    - one chunk of one long prompt is prefilled (in turn, when there are several): a long prompt costs the
      others one chunk's forward per step, never its whole prefill, so it cannot starve them;
    - one decode step for every row of the batch.

    A cancelled request (its client left) stops at once. Every request taken gets a "done" or an "error"
    event, whatever fails: its client never waits forever.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 16,
        gather_s: float = 0.01,
        chunk: int = 256,
        start: bool = True,
    ) -> None:
        super().__init__(model, tokenizer)
        self.max_batch, self.gather_s, self.chunk = max_batch, gather_s, chunk
        self.pending: queue.Queue[Request] = queue.Queue()
        self.filling: list[_Prefill] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="gitbake-batcher")
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker (tests that queue requests first start it after, to fix the order it sees them)."""
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
                out.append(
                    self.pending.get(timeout=max(0.0, deadline - time.monotonic()))
                    if wait
                    else self.pending.get_nowait()
                )
            except queue.Empty:
                break
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception as exc:  # a failed turn fails the requests it held, not the server
                held = (self.batch.rows if self.batch else []) + [p.row for p in self.filling]
                for r in held:
                    if r.finish is None:
                        r.finish = "error"
                        r.req.events.put(("error", f"{type(exc).__name__}: {exc}"))
                self.batch, self.filling = None, []

    def _turn(self) -> None:
        self._admit()
        short = [p for p in self.filling if len(p.row.ids) <= self.chunk]
        if short:  # newcomers that fit in a chunk: one forward for all of them
            rows = [p.row for p in short]
            group, logits = self._start(rows)
            self.advance(rows, logits)
            self._join(group)
            self.filling = [p for p in self.filling if p not in short]  # only now: a failure above fails them too
        if self.filling:
            self._chunk(self.filling[0])
        if self.batch is not None and any(r.finish is None for r in self.batch.rows):
            logits = self._step(self.batch)
            self.advance(self.batch.rows, logits)
        if self.batch is not None:
            finished = sum(r.finish is not None for r in self.batch.rows)
            if finished * 2 >= len(self.batch.rows):  # finished rows ride along until they are half the batch
                self.batch = self._compact(self.batch)

    def _admit(self) -> None:
        """Take the requests that arrived (waiting for one when there is nothing to do) as rows to prefill."""
        live = sum(r.finish is None for r in self.batch.rows) if self.batch else 0
        room = self.max_batch - live - len(self.filling)
        if room <= 0:
            return
        if self.batch is None and not self.filling:
            try:
                first = self.pending.get(timeout=0.1)
            except queue.Empty:
                return
            reqs = [first] + self._take(room - 1, self.gather_s)
        else:
            reqs = self._take(room, 0.0)
        for req in reqs:
            try:
                self.filling.append(_Prefill(_Row(req, self.tokenizer)))
            except Exception as exc:  # a request that cannot start fails alone, and is answered
                req.events.put(("error", f"{type(exc).__name__}: {exc}"))

    def _chunk(self, p: _Prefill) -> None:
        """The next chunk of a long prompt; with its last, the row's first token, and it joins the batch."""
        row = p.row
        if row.req.cancelled.is_set():  # its client left before it was answered
            row.finish = "cancelled"
            self.cancelled += 1
            self.filling.remove(p)
            return
        end = min(p.done + self.chunk, len(row.ids))
        ids = torch.tensor([row.ids[p.done : end]], dtype=torch.long, device=self.device)
        pos = torch.arange(p.done, end, dtype=torch.long, device=self.device)[None]
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        self.trace.append(("chunk", id(row.req)))
        logits, p.cache = self._forward(ids, mask, pos, p.cache)
        p.done = end
        if end < len(row.ids):
            self.filling.append(self.filling.pop(0))  # the next turn's chunk is the next long prompt's
            return
        self.batches.append(1)
        self.advance([row], logits)
        self._join(_Batch([row], p.cache, mask, pos[:, -1:]))
        self.filling.remove(p)

    def _join(self, group: _Batch) -> None:
        """Newly started rows join the running batch (those already finished, at their first token, do not)."""
        live = self._compact(group)
        if live is not None:
            self.batch = live if self.batch is None else self._splice(self.batch, live)


def stream(
    model: Any, tokenizer: Any, prompt: Sequence[int], sampling: Sampling, max_tokens: int = 256, events: bool = False
) -> Iterator[Any]:
    """Text deltas of one answer, as they are generated (the batch machinery, with one row, in this thread);
    with `events`, ("text", delta) and ("logprobs", [TokenLogprob]) pairs instead."""
    dec = Decoder(model, tokenizer)
    req = Request(list(prompt), sampling, max_tokens)
    rows = [_Row(req, tokenizer)]
    logits = dec.prefill(rows)
    while True:
        dec.advance(rows, logits)
        while not req.events.empty():
            kind, value = req.events.get_nowait()
            if kind == "text":
                yield (kind, value) if events else value
            elif kind == "logprobs" and events:
                yield kind, value
        if rows[0].finish is not None:
            return
        logits = dec.step(rows)


def complete(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy answers to `prompts`, in order: `batch_size` rows decoded together, shortest prompts
    first so that a batch pads little (eval's behaviour check)."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    answers = [""] * len(prompts)
    dec = Decoder(model, tokenizer)
    greedy = with_turn_stops(tokenizer, GREEDY)  # the prompts are rendered chats
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [_Row(Request(list(prompts[i]), greedy, max_tokens), tokenizer) for i in idx]
        rows = batch
        logits = dec.prefill(rows)
        while True:
            dec.advance(rows, logits)
            live = sum(r.finish is None for r in rows)
            if not live:
                break
            if live * 2 <= len(rows) and dec.batch is not None:  # as the Batcher: drop finished rows at half
                dec.batch = dec._compact(dec.batch)
                rows = dec.batch.rows if dec.batch is not None else []
            logits = dec.step(rows)
        for i, row in zip(idx, batch):
            answers[i] = row.text
    return answers
