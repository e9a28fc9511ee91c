"""`git bake serve [MODEL...]`: an OpenAI-compatible HTTP API for model versions, on Starlette and uvicorn.

`GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (plain, or streamed as
server-sent events), each version named by its bake name (and answering to its other addresses). The
protocol, every field checked, is `openai_api`. Concurrent requests to one version are decoded together
(`engine.infer.Batcher`, a worker thread): one forward pass per step for all of them; the event loop only
parses, renders and relays each request's tokens as the worker produces them. Errors are OpenAI-shaped
(`{"error": {"message", "type", "param", "code"}}`) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitbake.errors import GitbakeError, UsageError
from gitbake.use.openai_api import (
    ApiError,
    Parsed,
    chat_logprobs,
    completion_logprobs,
    parse_chat,
    parse_completion,
    usage,
)

if TYPE_CHECKING:
    from gitbake.use.versions import Version

MAX_BODY = 4 << 20  # a chat request is text: more than 4 MiB is a mistake or an attack
ROUTES = "GET /v1/models, POST /v1/chat/completions or POST /v1/completions"


@dataclass
class Served:
    name: str
    version: Any  # versions.Version
    model: Any  # engine LoadedModel
    batcher: Any  # engine.infer.Batcher
    context: int | None = None  # the model's context length in tokens, where its config says
    aliases: tuple[str, ...] = ()  # the other addresses a request's `model` may give: model name, plain name

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases


def context_length(model: Any) -> int | None:
    """The positions the model was built for (`max_position_embeddings` and its older names)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_model(models: dict[str, Served], name: str) -> Served:
    served = models.get(name) or next((m for m in models.values() if m.answers_to(name)), None)
    if served is None:
        raise ApiError(
            404,
            f"the model `{name}` does not exist; served here: {', '.join(models)}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    return served


def parse_request(body: bytes, models: dict[str, Served]) -> tuple[Served, Parsed]:
    """A chat completion request checked, and the served model it names."""
    parsed = parse_chat(body)
    return find_model(models, parsed.model), parsed


WILDCARDS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> frozenset[str] | None:
    """The names a request's Host header may give: the bound address, the loopback names and `extra`.
    None (any) when bound to a wildcard address without `extra`, whose names this server cannot know.
    Checking it stops DNS rebinding: a web page whose name resolves to 127.0.0.1 cannot drive the server."""
    if host in WILDCARDS and not extra:
        return None
    return frozenset({_host_name(host), *LOOPBACK_NAMES, *(_host_name(h) for h in extra)})


def _host_name(header: str) -> str:
    """`name`, `name:port`, `[v6]:port` -> the name, lowercased, without brackets or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.split(":")[0]
    return value.rstrip(".")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(key: str | None, key_file: Path | None) -> str | None:
    """The API key from --api-key / GITBAKE_API_KEY or from --api-key-file (its first line)."""
    if key_file is None:
        if key is not None and not key.strip():
            raise UsageError(
                "the API key is empty", "set GITBAKE_API_KEY to a non-empty key, or use --api-key-file FILE"
            )
        return key
    if key is not None:
        raise UsageError("give the API key once: --api-key-file, or --api-key / GITBAKE_API_KEY, not both")
    try:
        text = key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the API key from {key_file}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = text.splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise UsageError(f"{key_file} holds no API key", "write the key on its first line")
    return value


class _Relay(queue.Queue[tuple[str, Any]]):
    """A request's events, handed from the batcher's thread to the event loop as they are put."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(self, item: tuple[str, Any], block: bool = True, timeout: float | None = None) -> None:
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, item)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            kind, value = await self.inbox.get()
            yield kind, value
            if kind in ("done", "error"):
                return


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port. The command binds it before loading the models, so a port in use
    is said at once, not after minutes of loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "choose another port with --port (0 picks a free one)",
        ) from None
    # a deep backlog: tens of clients connecting at once are queued by the kernel, not reset
    sock.listen(1024)
    return sock


class Server:
    def __init__(
        self,
        models: dict[str, Served],
        host: str,
        port: int,
        api_key: str | None,
        max_prompt_tokens: int | None = None,
        allow_hosts: Sequence[str] = (),
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: already listening (`listen`), as the command binds before it loads any model."""
        import uvicorn

        self.models, self.api_key, self.max_prompt_tokens = models, api_key, max_prompt_tokens
        self.hosts = allowed_hosts(host, allow_hosts)
        self.sock = sock if sock is not None else listen(host, port)
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=60,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        name, port = self.address
        return f"http://{'[' + name + ']' if ':' in name else name}:{port}/v1"

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (uvicorn's signal handlers, in the main thread) or `close()`."""
        self.uvicorn.run(sockets=[self.sock])

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="gitbake-serve")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sock.close()
        for m in self.models.values():
            m.batcher.close()

    # -------------------------------------------------------------------------------------- checks
    def check_host(self, header: str | None) -> None:
        if self.hosts is None or header is None:  # no Host: not a browser, so not DNS rebinding
            return
        if _host_name(header) not in self.hosts:
            raise ApiError(
                403,
                f"the Host header {header[:60]!r} does not name this server; if clients reach it by that name, "
                f"start it with --allow-host {_host_name(header) or 'NAME'}",
                code="host_not_allowed",
            )

    def check_key(self, header: str | None) -> None:
        if self.api_key is None:
            return
        # constant time: how long the comparison takes must not tell how much of a guess was right
        expected = f"Bearer {self.api_key}".encode("utf-8", "surrogateescape")
        if not hmac.compare_digest((header or "").encode("utf-8", "surrogateescape"), expected):
            raise ApiError(
                401,
                "missing or wrong API key: send `Authorization: Bearer KEY`",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )

    def prompt_limit(self, served: Served, max_tokens: int) -> tuple[int, str] | None:
        """The most prompt tokens a request may send, and where that limit comes from."""
        limits = []
        if served.context is not None:
            limits.append(
                (
                    served.context - max_tokens,
                    f"the model's context of {served.context} tokens minus max_tokens {max_tokens}",
                )
            )
        if self.max_prompt_tokens is not None:
            limits.append((self.max_prompt_tokens, "--max-prompt-tokens"))
        return min(limits) if limits else None

    def submit(self, served: Served, parsed: Parsed, events: queue.Queue[tuple[str, Any]] | None = None) -> Any:
        """Render the request's prompt (the chat template, or a completion's raw text), check its length,
        and queue it with the model's batcher."""
        from gitbake.engine.infer import Request
        from gitbake.engine.templating import render, with_turn_stops

        tok = served.model.tokenizer
        sampling = parsed.sampling
        if parsed.prompt is None:
            ids = render(tok, parsed.messages, parsed.tools, None)
            sampling = with_turn_stops(tok, sampling)
        elif isinstance(parsed.prompt, str):
            ids = list(tok(parsed.prompt)["input_ids"])
        else:
            vocab = len(tok)
            bad = next((t for t in parsed.prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(
                    400, f"`prompt` holds token id {bad}, outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            ids = list(parsed.prompt)
        limit = self.prompt_limit(served, parsed.max_tokens)
        if limit is not None and len(ids) > limit[0]:
            hint = "shorten the prompt" + (" or lower max_tokens" if "context" in limit[1] else "")
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens; this server takes at most {max(limit[0], 0)} ({limit[1]}): {hint}",
                param="messages" if parsed.prompt is None else "prompt",
                code="context_length_exceeded",
            )
        from gitbake.use.toolcalls import ToolCallReader

        # an answer read back through a response template keeps the special tokens its delimiters may be
        req = Request(ids, sampling, parsed.max_tokens, skip_special=not ToolCallReader.wanted(tok, parsed.tools))
        if events is not None:
            req.events = events
        return served.batcher.submit(req)

    # ----------------------------------------------------------------------------------------- HTTP
    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/models/{name:path}", self._model, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completion, methods=["POST"]),
                Route("/{path:path}", self._no_route, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
            ]
        )

    async def _guarded(self, request: Any, answer: Any) -> Any:
        """Who may ask (a Host naming this server, then the API key), then the answer; every failure is an
        OpenAI-shaped error, and a bug is a 500 that leaves the server serving."""
        from starlette.responses import JSONResponse

        try:
            self.check_host(request.headers.get("host"))
            self.check_key(request.headers.get("authorization"))
            return await answer(request)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - a bug, not the client's fault: say so, and keep serving
            sys.stderr.write(
                f"git bake serve: internal error on {request.method} {request.url.path}: {type(exc).__name__}: {exc}\n"
            )
            return JSONResponse(
                ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").body(), status_code=500
            )

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        async def answer(_: Any) -> Any:
            return JSONResponse({"object": "list", "data": [_model_card(n, s) for n, s in self.models.items()]})

        return await self._guarded(request, answer)

    async def _model(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        async def answer(r: Any) -> Any:
            name = r.path_params["name"]
            if name not in self.models:
                raise ApiError(
                    404, f"the model `{name}` does not exist", "invalid_request_error", "model", "model_not_found"
                )
            return JSONResponse(_model_card(name, self.models[name]))

        return await self._guarded(request, answer)

    async def _no_route(self, request: Any) -> Any:
        async def answer(r: Any) -> Any:
            raise ApiError(404, f"no route {r.method} {r.url.path}; try {ROUTES}", code="not_found")

        return await self._guarded(request, answer)

    async def _chat(self, request: Any) -> Any:
        async def answer(r: Any) -> Any:
            served, parsed = parse_request(await _body(r), self.models)
            return await self._respond(served, parsed, chat=True)

        return await self._guarded(request, answer)

    async def _completion(self, request: Any) -> Any:
        async def answer(r: Any) -> Any:
            parsed = parse_completion(await _body(r))
            return await self._respond(find_model(self.models, parsed.model), parsed, chat=False)

        return await self._guarded(request, answer)

    async def _respond(self, served: Served, parsed: Parsed, chat: bool) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        relay = _Relay(asyncio.get_running_loop())
        req = self.submit(served, parsed, relay)
        reply = Reply(served, parsed, chat, req.prompt)
        if parsed.stream:
            return StreamingResponse(
                reply.stream(req, relay), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )

        try:
            body = await reply.whole(relay)
        except BaseException:
            req.cancelled.set()  # the server stops (its tasks are cancelled): stop decoding it
            raise
        return JSONResponse(body, status_code=200 if "error" not in body else 500)


async def _body(request: Any) -> bytes:
    """The request body, at most MAX_BODY bytes (refused from its Content-Length, or as it arrives)."""
    raw = request.headers.get("content-length")
    if raw is not None and raw.isdigit() and int(raw) > MAX_BODY:
        raise ApiError(413, f"the request body is {raw} bytes; the limit is {MAX_BODY}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body is over the limit of {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _model_card(name: str, s: Served) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "gitbake",
        "commit": s.version.commit,
        "adapters": list(s.version.adapters),
        "aliases": list(s.aliases),
    }


class Reply:
    """One answer in OpenAI's shapes: a chat completion or a (legacy) text completion, whole or streamed."""

    def __init__(self, served: Served, parsed: Parsed, chat: bool, prompt: list[int] | None = None) -> None:
        from gitbake.use.toolcalls import ToolCallReader

        self.served, self.parsed, self.chat = served, parsed, chat
        self.tokenizer = served.model.tokenizer
        # the answer read as content and tool calls, when tools are offered and the model ships a response template
        self.tools = ToolCallReader.of(self.tokenizer, prompt or [], parsed.tools) if chat else None
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.offset = 0  # completions' logprobs: where the next token's text starts

    def _logprobs(self, items: list[Any]) -> dict[str, Any] | None:
        if not self.parsed.sampling.logprobs:
            return None
        if self.chat:
            return chat_logprobs(self.tokenizer, items)
        out = completion_logprobs(self.tokenizer, items, self.offset)
        self.offset += sum(len(t) for t in out["tokens"])
        return out

    def _envelope(self, choices: list[dict[str, Any]], obj: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj or self.object,
            "created": self.created,
            "model": self.served.name,
            "choices": choices,
        }

    async def whole(self, relay: _Relay) -> dict[str, Any]:
        parts: list[str] = []
        logprobs: list[Any] = []
        async for kind, value in relay.events():
            if kind == "text":
                parts.append(value)
            elif kind == "logprobs":
                logprobs += value
            elif kind == "error":  # the batch failed: its message, as a server error
                return ApiError(500, str(value), "server_error").body()
            else:
                text, finish = "".join(parts), value.get("finish_reason", "stop")
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": self._logprobs(logprobs)}
                if self.tools is not None:
                    self.tools.feed(text)
                    self.tools.finish()
                    choice["message"] = self.tools.message()
                    if self.tools.called:
                        choice["finish_reason"] = "tool_calls"
                elif self.chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                return {**self._envelope([choice]), "usage": usage(value)}
        raise RuntimeError("the answer ended without a result")

    async def stream(self, req: Any, relay: _Relay) -> AsyncIterator[str]:
        """Server-sent events; a client that leaves cancels this, and its row stops decoding."""
        import json

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        def chunk(text: str | None, finish: str | None = None, logprobs: Any = None, delta: Any = None) -> str:
            if self.chat:
                delta = delta if delta is not None else ({} if text is None else {"content": text})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
                return event(self._envelope([choice], "chat.completion.chunk"))
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
            return event(self._envelope([choice]))

        pending: list[Any] = []
        try:
            if self.chat:
                yield event(
                    self._envelope(
                        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                        "chat.completion.chunk",
                    )
                )
            async for kind, value in relay.events():
                if kind == "logprobs":
                    pending += value
                elif kind == "text" and self.tools is not None:
                    # content as it comes; a tool call once its region closes (templates give it whole)
                    for delta in self.tools.feed(value):
                        yield chunk(None, logprobs=self._logprobs(pending) if pending else None, delta=delta)
                        pending = []
                elif kind == "text":
                    yield chunk(value, logprobs=self._logprobs(pending))
                    pending = []
                elif kind == "error":
                    yield event(ApiError(500, str(value), "server_error").body())
                    break
                else:
                    finish = value.get("finish_reason", "stop")
                    if self.tools is not None:
                        for delta in self.tools.finish():
                            yield chunk(None, logprobs=self._logprobs(pending) if pending else None, delta=delta)
                            pending = []
                        finish = "tool_calls" if self.tools.calls else finish
                    yield chunk(None, finish, self._logprobs(pending) if pending else None)
                    if self.parsed.include_usage:
                        obj = "chat.completion.chunk" if self.chat else None
                        yield event({**self._envelope([], obj), "usage": usage(value)})
            yield "data: [DONE]\n\n"
        finally:
            req.cancelled.set()  # finished: a no-op; the client left mid-answer: its row stops decoding


def resolve_served(repo: Any, revs: list[str]) -> list[Version]:
    """The versions to serve (default HEAD): every address checked before anything binds or loads."""
    from gitbake.use.versions import resolve

    return [resolve(repo, rev) for rev in revs or ["HEAD"]]


def load_served(repo: Any, versions: list[Version], max_batch: int = 16) -> dict[str, Served]:
    """Each version's model (`resolve_served`) with its batcher."""
    from gitbake.engine.infer import Batcher
    from gitbake.use.versions import load

    models: dict[str, Served] = {}
    for version in versions:
        if version.name in models:
            continue  # two revisions with the same model: serve it once
        loaded = load(repo, version)
        models[version.name] = Served(
            version.name,
            version,
            loaded,
            Batcher(loaded.model, loaded.tokenizer, max_batch),
            context_length(loaded.model),
            _aliases(version),
        )
    if not models:
        raise GitbakeError("nothing to serve", "give a revision with a baked model: git bake serve HEAD")
    return models


def _aliases(version: Any) -> tuple[str, ...]:
    """What else a request may call a served version: the address it was served as, its `.bread` model name
    (`local/<repo>/<bake>/<step>`) and its plain bake name (the name without the hash)."""
    from gitbake.contract.keys import split_name

    plain = split_name(version.name)
    names = [version.rev, version.model_name if version.checkpoint is None else None, plain[0] if plain else None]
    return tuple(n for n in names if n and n != version.name)
