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


def _sample(logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row; temperature 0 is greedy."""
    greedy = logits.argmax(-1)
    if not bool((temperature > 0).any()):
        return greedy  # all greedy: no softmax over the vocabulary at all
    t = temperature.clamp(min=1e-5).unsqueeze(-1)
    probs = torch.softmax(logits.float() / t, dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)


def _cache_argument(model: Any) -> str:
    """transformers 5 renamed `past_key_values` to `cache` (in arguments and outputs); the GPU machines
    run 4.x. Ask the model which one it takes."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _decode_batch(model: Any, prompts: Sequence[Sequence[int]], temps: Sequence[float], max_tokens: Sequence[int],
                  stops: set[int], pad: int, seed: int) -> Iterator[list[int | None]]:
    """Yield, per step, the new token of each row (None once a row has finished)."""
    device = next(model.parameters()).device
    n = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    # left padding: positions count real tokens only (what generate() does)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    temperature = torch.tensor(list(temps), dtype=torch.float32, device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    done = [False] * n
    produced = [0] * n
    past = None
    cache_arg = _cache_argument(model)
    step_ids, step_pos = ids, pos
    with torch.no_grad():
        while True:
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **{cache_arg: past})
            past = getattr(out, cache_arg, None)
            nxt = _sample(out.logits[:, -1, :].float().cpu(), temperature.cpu(), gen)
            row: list[int | None] = []
            for r in range(n):
                if done[r]:
                    row.append(None)
                    continue
                tok = int(nxt[r])
                produced[r] += 1
                row.append(tok)
                if tok in stops or produced[r] >= max_tokens[r]:
                    done[r] = True
            yield row
            if all(done):
                return
            step_ids = nxt.view(n, 1).to(device)
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)


def stream(model: Any, tokenizer: Any, prompt: Sequence[int], temperature: float = 0.7, max_tokens: int = 256,
           seed: int = 0) -> Iterator[str]:
    """Text deltas of one answer, as they are generated."""
    stops = stop_tokens(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    dec = TextDecoder(tokenizer)
    for (tok,) in _decode_batch(model, [prompt], [temperature], [max_tokens], stops, pad, seed):
        if tok is None or tok in stops:
            break
        delta = dec.push(tok)
        if delta:
            yield delta
    rest = dec.flush()
    if rest:
        yield rest


@dataclass
class Request:
    prompt: list[int]
    temperature: float
    max_tokens: int
    seed: int = 0
    events: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)  # ("text", str) | ("done", info) | ("error", str)
    submitted: float = field(default_factory=time.monotonic)


class Batcher:
    """One model, one worker thread, requests decoded together."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, gather_s: float = 0.01) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.gather_s = max_batch, gather_s
        self.stops = stop_tokens(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.pending: "queue.Queue[Request]" = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (for tests and the benchmark)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="gitbake-batcher")
        self.thread.start()

    def submit(self, req: Request) -> Request:
        self.pending.put(req)
        return req

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.pending.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch:  # whoever arrives in the next moment rides along
                try:
                    batch.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(batch))
            try:
                self._run(batch)
            except Exception as exc:  # a failed batch fails its requests, not the server
                for r in batch:
                    r.events.put(("error", f"{type(exc).__name__}: {exc}"))

    def _run(self, batch: list[Request]) -> None:
        decoders = [TextDecoder(self.tokenizer) for _ in batch]
        counts = [0] * len(batch)
        reasons: list[str | None] = [None] * len(batch)
        seed = batch[0].seed
        steps = _decode_batch(self.model, [r.prompt for r in batch], [r.temperature for r in batch],
                              [r.max_tokens for r in batch], self.stops, self.pad, seed)
        for row in steps:
            for i, tok in enumerate(row):
                if tok is None or reasons[i] is not None:
                    continue
                if tok in self.stops:
                    reasons[i] = "stop"
                else:
                    counts[i] += 1
                    delta = decoders[i].push(tok)
                    if delta:
                        batch[i].events.put(("text", delta))
                    if counts[i] >= batch[i].max_tokens:
                        reasons[i] = "length"
                if reasons[i] is not None:
                    rest = decoders[i].flush()
                    if rest:
                        batch[i].events.put(("text", rest))
                    batch[i].events.put(("done", {"finish_reason": reasons[i], "completion_tokens": counts[i],
                                                  "prompt_tokens": len(batch[i].prompt)}))
        for i, r in enumerate(batch):
            if reasons[i] is None:
                rest = decoders[i].flush()
                if rest:
                    r.events.put(("text", rest))
                r.events.put(("done", {"finish_reason": "length", "completion_tokens": counts[i], "prompt_tokens": len(r.prompt)}))
