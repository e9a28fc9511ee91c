"""`git bake serve [REV...]`: an OpenAI-compatible HTTP API for model versions.

`GET /v1/models` and `POST /v1/chat/completions` (plain or streamed as server-sent events), each version
named by its bake name. Concurrent requests to one version are decoded together (`engine.infer.Batcher`):
one forward pass per step for all of them. Errors are OpenAI-shaped (`{"error": {"message", "type",
"param", "code"}}`) with 400 / 401 / 404, and the server keeps serving.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gitbake.errors import GitbakeError, UsageError

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_BODY = 4 << 20  # a chat request is text: more than 4 MiB is a mistake or an attack


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog: Python's default of 5 makes the kernel drop or reset connections when tens of
    # clients connect at once; accepting is fast (a thread each), so a deep queue only absorbs bursts
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return  # a client that left is not the server's error
        super().handle_error(request, client_address)


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


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


INT64 = 1 << 63


@dataclass(frozen=True)
class Field:
    """A scalar request field: its JSON type (bool, int, or float for any number), its range, its default
    (for an absent or null value), and the values this server honours where it does not honour them all."""

    kind: type
    default: Any
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    supported: tuple[Any, ...] | None = None
    why: str = ""  # why the others are refused

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        what = "an integer" if self.kind is int else "a number"
        if self.lo_open:
            return f"{what} in ({self.lo:g}, {self.hi:g}]"
        return f"{what} from {self.lo:g} to {self.hi:g}"

    def check(self, name: str, value: Any) -> Any:
        """The value to use, or a 400 naming the field: the one gate every scalar of a request goes through."""
        if value is None:
            return self.default
        kinds = (int, float) if self.kind is float else (self.kind,)
        typed = isinstance(value, kinds) and (self.kind is bool or not isinstance(value, bool))
        in_range = typed and (
            self.kind is bool or (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi
        )
        if not in_range:  # NaN fails every comparison, so it lands here too
            raise ApiError(400, f"`{name}` must be {self.describe()}, not {_show(value)}", param=name)
        if self.supported is not None and value not in self.supported:
            allowed = " or ".join(json.dumps(v) for v in self.supported)
            raise ApiError(400, f"`{name}`: only {allowed} is supported ({self.why}), not {_show(value)}", param=name)
        return float(value) if self.kind is float else value


# Every scalar of a chat completion request that this server reads or refuses, with its range: huge,
# negative, fractional, boolean or NaN values get a 400 here, before anything reaches the model.
FIELDS: dict[str, Field] = {
    "max_completion_tokens": Field(int, None, 1, MAX_TOKENS_LIMIT),
    "max_tokens": Field(int, None, 1, MAX_TOKENS_LIMIT),
    "temperature": Field(float, 1.0, 0, 2),
    "top_p": Field(float, 1.0, 0, 1, lo_open=True),
    "seed": Field(int, None, -INT64, INT64 - 1),  # a signed 64-bit integer, as OpenAI's
    "n": Field(int, 1, 1, 128, supported=(1,), why="one choice per request; send several requests"),
    "presence_penalty": Field(float, 0.0, -2, 2, supported=(0,), why="penalties are not implemented"),
    "frequency_penalty": Field(float, 0.0, -2, 2, supported=(0,), why="penalties are not implemented"),
    "logprobs": Field(bool, False, supported=(False,), why="log probabilities are not returned"),
    "top_logprobs": Field(int, 0, 0, 20, supported=(0,), why="log probabilities are not returned"),
    "stream": Field(bool, False),
}
INCLUDE_USAGE = Field(bool, False)  # stream_options.include_usage
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # each token is checked against every stop string's prefixes


def _show(value: Any) -> str:
    """A request value in an error message: short, whatever was sent."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _text(content: Any, where: str) -> str:
    """OpenAI message content: a string, null, or a list of text parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"`{where}.content` must be a string or a list of content parts, not {_show(content)}",
            param="messages",
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise ApiError(
                400,
                f'`{where}.content[{j}]` must be a text part ({{"type": "text", "text": ...}}): '
                "this server serves text models",
                param="messages",
            )
        if not isinstance(part.get("text"), str):
            raise ApiError(
                400, f"`{where}.content[{j}].text` must be a string, not {_show(part.get('text'))}", param="messages"
            )
        texts.append(part["text"])
    return "".join(texts)


def _messages(msgs: Any) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "`messages` must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"`messages[{i}]` needs a `role` of system, user or assistant", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _text(m.get("content"), f"messages[{i}]")})
    return messages


def _stops(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_STOP_CHARS for x in stops)
    ):
        raise ApiError(
            400,
            f"`stop` must be a string or a list of up to {MAX_STOPS} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters, not {_show(stop)}",
            param="stop",
        )
    return stops


def parse_request(body: bytes, models: dict[str, Served]) -> tuple[Served, list[dict[str, str]], dict[str, Any]]:
    """The request, every field checked (`FIELDS` for the scalars), or the 400 that says what is wrong."""
    try:
        req = json.loads(body or b"", parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses per level: thousands of [[[[ exhaust the stack
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(req, dict):
        raise ApiError(400, "the request body must be a JSON object")
    name = req.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "`model` is required", param="model")
    served = models.get(name) or next((m for m in models.values() if m.answers_to(name)), None)
    if served is None:
        raise ApiError(
            404,
            f"the model `{name}` does not exist; served here: {', '.join(models)}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    messages = _messages(req.get("messages"))
    opts = {key: field.check(key, req.get(key)) for key, field in FIELDS.items()}
    options = req.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"`stream_options` must be an object, not {_show(options)}", param="stream_options")
    if req.get("logit_bias") not in (None, {}):
        raise ApiError(400, "`logit_bias` is not supported", param="logit_bias")
    max_tokens = opts["max_completion_tokens"] or opts["max_tokens"] or DEFAULT_MAX_TOKENS
    return (
        served,
        messages,
        {
            "max_tokens": max_tokens,
            "temperature": opts["temperature"],
            "seed": opts["seed"],
            "top_p": opts["top_p"],
            "stop": _stops(req.get("stop")),
            "stream": opts["stream"],
            "include_usage": INCLUDE_USAGE.check("stream_options.include_usage", (options or {}).get("include_usage")),
        },
    )


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


class Server:
    def __init__(
        self,
        models: dict[str, Served],
        host: str,
        port: int,
        api_key: str | None,
        max_prompt_tokens: int | None = None,
        allow_hosts: Sequence[str] = (),
    ) -> None:
        self.models, self.api_key, self.max_prompt_tokens = models, api_key, max_prompt_tokens
        self.hosts = allowed_hosts(host, allow_hosts)
        handler = _handler(self)
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self.httpd = server_class((host, port), handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                "choose another port with --port (0 picks a free one)",
            ) from None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{'[' + name + ']' if ':' in name else name}:{port}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> Server:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for m in self.models.values():
            m.batcher.close()

    def check_host(self, header: str | None) -> None:
        if self.hosts is None or header is None:  # no Host: not a browser, so not DNS rebinding
            return
        if _host_name(header) not in self.hosts:
            raise ApiError(
                403,
                f"the Host header {_show(header)} does not name this server; if clients reach it by that name, "
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

    def complete(self, served: Served, messages: list[dict[str, str]], opts: dict[str, Any]) -> Any:
        from gitbake.engine.infer import Request
        from gitbake.engine.templating import render

        ids = render(served.model.tokenizer, messages, None, None)
        limit = self.prompt_limit(served, opts["max_tokens"])
        if limit is not None and len(ids) > limit[0]:
            hint = "shorten the conversation" + (" or lower max_tokens" if "context" in limit[1] else "")
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens; this server takes at most {max(limit[0], 0)} ({limit[1]}): {hint}",
                param="messages",
                code="context_length_exceeded",
            )
        return served.batcher.submit(
            Request(ids, opts["temperature"], opts["max_tokens"], opts["seed"], opts["top_p"], opts["stop"])
        )


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def _usage(info: dict[str, Any]) -> dict[str, int]:
    prompt, completion = info.get("prompt_tokens", 0), info.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: one line per request is noise on a terminal
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _gate(self) -> None:
            """Who may ask: a Host naming this server (DNS rebinding), then the API key."""
            server.check_host(self.headers.get("Host"))
            server.check_key(self.headers.get("Authorization"))

        def _refuse(self, exc: Exception) -> None:
            """Every failure gets an answer: an OpenAI-shaped error, never a dropped connection."""
            if not isinstance(exc, ApiError):  # a bug, not the client's fault: say so, and keep serving
                sys.stderr.write(
                    f"git bake serve: internal error on {self.command} {self.path}: {type(exc).__name__}: {exc}\n"
                )
                exc = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
                self.close_connection = True
            self._json(exc.status, exc.body())

        timeout = 60  # a client that stops sending in the middle of a request is dropped, not waited on forever

        def _model(self, name: str, s: Served) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "gitbake",
                "commit": s.version.commit,
                "adapters": list(s.version.adapters),
            }

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                self._gate()
                path = self.path.rstrip("/")
                if path == "/v1/models":
                    self._json(200, {"object": "list", "data": [self._model(n, s) for n, s in server.models.items()]})
                    return
                name = path.removeprefix("/v1/models/") if path.startswith("/v1/models/") else None
                if name is not None and name in server.models:
                    self._json(200, self._model(name, server.models[name]))
                    return
                if name is not None:
                    raise ApiError(
                        404, f"the model `{name}` does not exist", "invalid_request_error", "model", "model_not_found"
                    )
                raise ApiError(
                    404, f"no route {self.path}; try GET /v1/models or POST /v1/chat/completions", code="not_found"
                )
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                raise
            except Exception as exc:
                self._refuse(exc)

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.close_connection = True  # the chunks were not read: the connection cannot be reused
                raise ApiError(411, "send the body with a Content-Length (chunked transfer encoding is not supported)")
            raw = self.headers.get("Content-Length")
            if raw is None:
                return b""
            try:
                length = int(raw)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                raise ApiError(400, f"invalid Content-Length {raw!r}")
            if length > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, f"the request body is {length} bytes; the limit is {MAX_BODY}")
            return self.rfile.read(length)

        def do_POST(self) -> None:  # noqa: N802
            try:
                try:
                    self._gate()
                except ApiError:
                    self.close_connection = True  # its body is not read: the connection cannot carry another request
                    raise
                body = self._body()
                if self.path.rstrip("/") != "/v1/chat/completions":
                    raise ApiError(404, f"no route {self.path}; try POST /v1/chat/completions", code="not_found")
                served, messages, opts = parse_request(body, server.models)
                req = server.complete(served, messages, opts)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                raise
            except Exception as exc:
                self._refuse(exc)
                return
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            try:
                if opts["stream"]:
                    self._stream(req, served.name, cid, created, opts["include_usage"])
                else:
                    self._whole(req, served.name, cid, created)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                req.cancelled.set()  # the client left: stop decoding its answer
                self.close_connection = True

        def _events(self, req: Any) -> Any:
            while True:
                kind, value = req.events.get()
                yield kind, value
                if kind in ("done", "error"):
                    return

        def _whole(self, req: Any, name: str, cid: str, created: int) -> None:
            try:
                text, info = req.result()
            except RuntimeError as exc:  # the batch failed: its message, as a server error
                self._json(500, ApiError(500, str(exc), "server_error").body())
                return
            self._json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": info.get("finish_reason", "stop"),
                            "logprobs": None,
                        }
                    ],
                    "usage": _usage(info),
                },
            )

        def _stream(self, req: Any, name: str, cid: str, created: int, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
                payload = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            chunk({"role": "assistant", "content": ""})
            for kind, value in self._events(req):
                if kind == "text":
                    chunk({"content": value})
                elif kind == "error":
                    self.wfile.write(f"data: {json.dumps(ApiError(500, value, 'server_error').body())}\n\n".encode())
                    break
                else:
                    chunk({}, value.get("finish_reason", "stop"))
                    if include_usage:
                        payload = {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": name,
                            "choices": [],
                            "usage": _usage(value),
                        }
                        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def load_served(repo: Any, revs: list[str], max_batch: int = 16) -> dict[str, Served]:
    from gitbake.use.versions import load, resolve

    versions = [resolve(repo, rev) for rev in revs or ["HEAD"]]  # every revision checked before any model loads
    from gitbake.engine.infer import Batcher

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
