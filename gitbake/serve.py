"""`git bake serve [REV...]`: an OpenAI-compatible HTTP API for model versions.

`GET /v1/models` and `POST /v1/chat/completions` (plain or streamed as server-sent events), each version
named by its bake name. Concurrent requests to one version are decoded together (`engine.infer.Batcher`):
one forward pass per step for all of them. Errors are OpenAI-shaped (`{"error": {"message", "type",
"param", "code"}}`) with 400 / 401 / 404, and the server keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gitbake.errors import GitbakeError, UsageError

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_BODY = 4 << 20  # a chat request is text: more than 4 MiB is a mistake or an attack


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

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


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    raise ApiError(400, "message content must be a string or a list of content parts", param="messages")


def parse_request(body: bytes, models: dict[str, Served]) -> tuple[Served, list[dict[str, str]], dict[str, Any]]:
    try:
        req = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ApiError(400, "the request body must be a JSON object")
    name = req.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "`model` is required", param="model")
    served = models.get(name)
    if served is None:
        raise ApiError(404, f"the model `{name}` does not exist; served here: {', '.join(models)}", "invalid_request_error",
                       "model", "model_not_found")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "`messages` must be a non-empty list", param="messages")
    messages = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, "each message needs a `role` of system, user or assistant", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _text(m.get("content"))})
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ApiError(400, f"`max_tokens` must be an integer from 1 to {MAX_TOKENS_LIMIT}, not {max_tokens!r}", param="max_tokens")
    temperature = req.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise ApiError(400, f"`temperature` must be a number from 0 to 2, not {temperature!r}", param="temperature")
    seed = req.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ApiError(400, "`seed` must be an integer", param="seed")
    top_p = req.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise ApiError(400, f"`top_p` must be a number in (0, 1], not {top_p!r}", param="top_p")
    n = req.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "only `n: 1` is supported (one choice per request; send several requests)", param="n")
    stop = req.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(x, str) and x for x in stops):
        raise ApiError(400, "`stop` must be a string or a list of up to 4 non-empty strings", param="stop")
    stream = req.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be true or false", param="stream")
    options = req.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "`stream_options` must be an object", param="stream_options")
    return served, messages, {"max_tokens": max_tokens, "temperature": float(temperature), "seed": seed, "top_p": float(top_p),
                              "stop": stops, "stream": stream, "include_usage": bool(options.get("include_usage", False))}


class Server:
    def __init__(self, models: dict[str, Served], host: str, port: int, api_key: str | None) -> None:
        self.models, self.api_key = models, api_key
        handler = _handler(self)
        try:
            self.httpd = _HTTPServer((host, port), handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                             "choose another port with --port (0 picks a free one)") from None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}/v1"

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

    def complete(self, served: Served, messages: list[dict[str, str]], opts: dict[str, Any]) -> Any:
        from gitbake.engine.infer import Request
        from gitbake.engine.templating import render

        ids = render(served.model.tokenizer, messages, None, None)
        return served.batcher.submit(Request(ids, opts["temperature"], opts["max_tokens"], opts["seed"], opts["top_p"], opts["stop"]))


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

        def _auth(self) -> None:
            if server.api_key is None:
                return
            if self.headers.get("Authorization", "") != f"Bearer {server.api_key}":
                raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer KEY`", "invalid_request_error",
                               None, "invalid_api_key")

        timeout = 60  # a client that stops sending in the middle of a request is dropped, not waited on forever

        def _model(self, name: str, s: Served) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "gitbake",
                    "commit": s.version.commit, "adapters": list(s.version.adapters)}

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                self._auth()
                path = self.path.rstrip("/")
                if path == "/v1/models":
                    self._json(200, {"object": "list", "data": [self._model(n, s) for n, s in server.models.items()]})
                    return
                name = path.removeprefix("/v1/models/") if path.startswith("/v1/models/") else None
                if name is not None and name in server.models:
                    self._json(200, self._model(name, server.models[name]))
                    return
                if name is not None:
                    raise ApiError(404, f"the model `{name}` does not exist", "invalid_request_error", "model", "model_not_found")
                raise ApiError(404, f"no route {self.path}; try GET /v1/models or POST /v1/chat/completions", code="not_found")
            except ApiError as exc:
                self._json(exc.status, exc.body())

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
                    self._auth()
                except ApiError:
                    self.close_connection = True  # its body is not read: the connection cannot carry another request
                    raise
                body = self._body()
                if self.path.rstrip("/") != "/v1/chat/completions":
                    raise ApiError(404, f"no route {self.path}; try POST /v1/chat/completions", code="not_found")
                served, messages, opts = parse_request(body, server.models)
                req = server.complete(served, messages, opts)
            except ApiError as exc:
                self._json(exc.status, exc.body())
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
            parts, info = [], {}
            for kind, value in self._events(req):
                if kind == "text":
                    parts.append(value)
                elif kind == "error":
                    self._json(500, ApiError(500, value, "server_error").body())
                    return
                else:
                    info = value
            usage = {"prompt_tokens": info.get("prompt_tokens", 0), "completion_tokens": info.get("completion_tokens", 0)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                                          "finish_reason": info.get("finish_reason", "stop"), "logprobs": None}],
                             "usage": usage})

        def _stream(self, req: Any, name: str, cid: str, created: int, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
                payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
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
                        usage = {"prompt_tokens": value.get("prompt_tokens", 0), "completion_tokens": value.get("completion_tokens", 0)}
                        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                                   "choices": [], "usage": usage}
                        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def load_served(repo: Any, revs: list[str], max_batch: int = 16) -> dict[str, Served]:
    from gitbake.chat import load
    from gitbake.versions import resolve

    versions = [resolve(repo, rev) for rev in revs or ["HEAD"]]  # every revision checked before any model loads
    from gitbake.engine.infer import Batcher

    models: dict[str, Served] = {}
    for version in versions:
        if version.name in models:
            continue  # two revisions with the same model: serve it once
        loaded = load(repo, version)
        models[version.name] = Served(version.name, version, loaded, Batcher(loaded.model, loaded.tokenizer, max_batch))
    if not models:
        raise GitbakeError("nothing to serve", "give a revision with a baked model: git bake serve HEAD")
    return models
