"""`git bake serve` against the official `openai` client: models, completions, streaming, concurrency,
bad requests (400 / 401 / 404 with OpenAI-shaped bodies) and a server that keeps serving."""

from __future__ import annotations

import hmac
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai", reason="needs openai: pip install 'gitbake[dev]'")
pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import openai
from openai import OpenAI

from gitbake.engine.infer import GREEDY, Batcher, Request, stream
from gitbake.engine.models import load_base
from gitbake.engine.sampling import Sampling
from gitbake.engine.templating import render
from gitbake.repo.repo import open_repo
from gitbake.use import openai_api, serve
from gitbake.use.serve import Server, load_served, resolve_served

from helpers import bake_git, bake_here


@pytest.fixture(scope="module")
def server(baked_repo: dict[str, Any]) -> Iterator[tuple[Server, dict[str, Any]]]:
    repo = open_repo(baked_repo["root"])
    models = load_served(repo, resolve_served(repo, ["HEAD", baked_repo["first"]]), max_batch=8)
    srv = Server(models, "127.0.0.1", 0, "sekret").start()
    yield srv, {"names": list(models), **baked_repo}
    srv.close()


def client(srv: Server, key: str = "sekret") -> OpenAI:
    return OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=60)


def test_models_are_named_by_their_bakes(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    ids = [m.id for m in client(srv).models.list().data]
    assert ids == info["names"] and len(ids) == 2 and all(i.startswith("yoda_bake_") for i in ids)


def test_completion_and_stream(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    c = client(srv)
    name = info["names"][0]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    r = c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    assert (
        r.model == name
        and r.choices[0].message.role == "assistant"
        and r.usage
        and 1 <= r.usage.completion_tokens <= 12
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    chunks = list(c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0, stream=True))  # type: ignore[arg-type]
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == r.choices[0].message.content  # the same answer, in pieces
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and len(chunks) >= 3


def test_concurrent_requests_are_batched_and_all_succeed(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    c = client(srv)
    name = info["names"][0]
    before = len(srv.models[name].batcher.batches)

    def ask(i: int) -> str:
        r = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=16, temperature=0
        )
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8
    sizes = srv.models[name].batcher.batches[before:]
    assert max(sizes) > 1 and len(sizes) < 8  # shared forward passes (prefills here), not one request at a time


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    c = client(srv)
    name = info["names"][0]
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    for bad in ({"max_tokens": 0}, {"max_tokens": 10**6}, {"temperature": 5}):
        with pytest.raises(openai.BadRequestError) as br:
            c.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], **bad)  # type: ignore[call-overload]
        assert br.value.body["param"] in ("max_tokens", "temperature")  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        client(srv, "wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        client(srv, "wrong").chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    req = urllib.request.Request(
        srv.url + "/chat/completions",
        data=b"{not json",
        method="POST",
        headers={"Authorization": "Bearer sekret", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req)
    assert he.value.code == 400 and "error" in json.loads(he.value.read())
    for body in (
        b"[]",
        b'{"model": "%s"}' % name.encode(),
        b'{"model": "%s", "messages": [{"role": "robot"}]}' % name.encode(),
    ):
        req = urllib.request.Request(
            srv.url + "/chat/completions", data=body, method="POST", headers={"Authorization": "Bearer sekret"}
        )
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(req)
        assert he.value.code == 400
    # still serving
    assert c.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_serve_says_a_bad_address_then_a_busy_port_before_loading_any_model(
    baked_repo: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the address and the port were checked")

    monkeypatch.setattr(serve, "load_served", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = bake_here(baked_repo["root"], "serve", "--port", port)
        assert out.exit_code == 2 and "cannot listen" in out.stderr and "--port" in out.stderr, out.stderr
        out = bake_here(baked_repo["root"], "serve", "nope", "--port", port)
        assert out.exit_code == 2 and "unknown model address `nope`" in out.stderr, out.stderr


def test_serve_command_and_port_in_use(baked_repo: dict[str, Any]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = bake_git(baked_repo["root"], "serve", "--port", str(port))
        assert out.returncode == 2 and "cannot listen" in out.stderr and "--port" in out.stderr
    # a serve that starts: test_serve_command_key_from_file_or_env_prompt_cap_and_warnings
    bad = bake_git(baked_repo["root"], "serve", "nope")
    assert bad.returncode == 2 and "unknown model address" in bad.stderr


def test_oneshot_qs_can_use_a_served_model_as_question_writer(
    server: tuple[Server, dict[str, Any]], model_repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, info = server
    name = info["names"][0]
    (model_repo / "q.txt").write_text("Write ${numq} questions for someone who is ${prompt_u}\n")
    (model_repo / "input.yml").write_text(f"""\
PROMPT:
  teacher:
    messages: [{{role: system, content: You are Yoda.}}]
TARGET:
  name: served_target
  generators:
    - type: oneshot_qs
      numq: 2
      template_path: q.txt
      model: {name}
      base_url: {srv.url}
      api_key_env: SERVE_KEY
      max_tokens: 64  # tiny's context is 2048 tokens: a 2048-token answer (the default) leaves no room for the prompt
  max_tokens: 4
""")
    monkeypatch.setenv("SERVE_KEY", "sekret")
    subprocess.run(["git", "add", "-A"], cwd=model_repo, check=True)
    subprocess.run(["git", "commit", "-qm", "served writer"], cwd=model_repo, check=True)
    before = sum(srv.models[name].batcher.batches)
    out = bake_git(model_repo, "run", "stim", "--json")
    assert "401" not in out.stderr and "invalid_api_key" not in out.stderr
    # tiny writes noise, so the writer may not yield enough well-formed questions; what matters is that
    # the served model was asked (the request reached it through the OpenAI-compatible API)
    assert sum(srv.models[name].batcher.batches) > before


def test_sampling_parameters(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    c = client(srv)
    name = info["names"][0]
    msgs = [{"role": "user", "content": "Tell me a story."}]

    def ask(**kw: Any) -> str:
        r = c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=1.0, **kw)  # type: ignore[arg-type]
        return r.choices[0].message.content or ""

    alone = ask(seed=5)
    with ThreadPoolExecutor(4) as pool:  # the same seed gives the same answer inside a batch of others
        crowd = list(pool.map(lambda s: ask(seed=s), [5, 6, 7, 8]))
    assert crowd[0] == alone
    assert len({ask(), ask(), ask()}) > 1  # no seed: fresh randomness each time
    assert ask(seed=5, top_p=0.5) is not None
    # stop strings end the answer before them (and the stream never shows them)
    full = (
        c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0).choices[0].message.content
        or ""
    )
    if len(full) >= 4:
        cut = full[2:4]
        r = c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0, stop=[cut])
        assert r.choices[0].finish_reason == "stop" and cut not in (r.choices[0].message.content or "")
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(
                model=name, messages=msgs, max_tokens=12, temperature=0, stop=cut, stream=True
            )
            if ch.choices
        )
        assert streamed == r.choices[0].message.content
    chunks = list(
        c.chat.completions.create(
            model=name, messages=msgs, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 3
    assert c.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")
    for bad in ({"n": 2}, {"top_p": 0}, {"stop": ["a", "b", "c", "d", "e"]}):
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model=name, messages=msgs, **bad)  # type: ignore[call-overload]


def raw(srv: Server, request: bytes) -> bytes:
    host, port = srv.address
    with socket.create_connection((str(host), int(port)), timeout=30) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_bad_http_framing_is_refused_and_the_server_keeps_serving(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    auth = b"Authorization: Bearer sekret\r\n"
    assert raw(
        srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: abc\r\n\r\n{}"
    ).startswith(b"HTTP/1.1 400")
    assert raw(
        srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: -1\r\n\r\n{}"
    ).startswith(b"HTTP/1.1 400")
    chunked = raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    # a chunked body is read like any other (up to the size limit): this one lacks `model`
    assert chunked.startswith(b"HTTP/1.1 400") and b"`model` is required" in chunked
    huge = raw(
        srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: 999999999\r\n\r\n"
    )
    assert huge.startswith(b"HTTP/1.1 413")
    stream_str = json.dumps(
        {"model": info["names"][0], "messages": [{"role": "user", "content": "hi"}], "stream": "false"}
    ).encode()
    out = raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % len(stream_str)
        + stream_str,
    )
    assert out.startswith(b"HTTP/1.1 400") and b"stream" in out
    assert (
        client(srv)
        .chat.completions.create(model=info["names"][0], messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        .choices
    )


def test_a_client_that_leaves_is_not_decoded_for(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    batcher = srv.models[name].batcher
    before = batcher.cancelled
    body = json.dumps(
        {
            "model": name,
            "messages": [{"role": "user", "content": "go on forever"}],
            "max_tokens": 2000,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    host, port = srv.address
    s = socket.create_connection((str(host), int(port)), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sekret\r\nContent-Length: "
        b"%d\r\n\r\n" % len(body) + body
    )
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.close()  # the client leaves mid-answer
    deadline = time.monotonic() + 120
    while batcher.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.cancelled > before  # its row stopped, long before 2000 tokens
    r = client(srv).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def post(srv: Server, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST /v1/chat/completions: the status and the JSON answer, whatever the status."""
    req = urllib.request.Request(
        srv.url + "/chat/completions",
        data=body,
        method="POST",
        headers={"Authorization": "Bearer sekret", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def bad_values(spec: openai_api.Field) -> list[Any]:
    """Values outside what a field allows: the wrong type, past each end of its range, and a value in range
    that the server does not honour."""
    if spec.kind is bool:
        out: list[Any] = [1, "true"]
    else:
        out = [True, "1", [1], spec.hi + 1, -(2**64), 2**64]
        out += [spec.lo - 1] if not spec.lo_open else [spec.lo]
        out += [1.5] if spec.kind is int else []
    if spec.supported is not None:
        out.append(not spec.supported[0] if spec.kind is bool else spec.hi)
    return out


def test_every_request_field_is_checked_against_its_range(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    base = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for field, spec in openai_api.FIELDS.items():
        for value in bad_values(spec):
            status, answer = post(srv, json.dumps({**base, field: value}).encode())
            assert status == 400 and answer["error"]["param"] == field, (field, value, answer)
            assert answer["error"]["type"] == "invalid_request_error" and field in answer["error"]["message"]
    status, answer = post(srv, json.dumps({**base, "stream_options": {"include_usage": "yes"}}).encode())
    assert status == 400 and answer["error"]["param"] == "stream_options.include_usage"
    status, answer = post(srv, json.dumps({**base, "stop": "x" * 1000}).encode())
    assert status == 400 and answer["error"]["param"] == "stop"
    status, answer = post(
        srv, b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}' % name.encode()
    )
    assert status == 400 and "NaN" in answer["error"]["message"]
    # the red-team case: a seed past 64 bits hung its request and every request batched with it
    with pytest.raises(openai.BadRequestError) as br:
        client(srv).chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], seed=18446744073709551616
        )
    assert br.value.body["param"] == "seed"  # type: ignore[index]
    ok = client(srv).chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        seed=-(2**63),
        presence_penalty=0,
        n=1,
        logprobs=False,
    )
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_a_request_that_cannot_start_fails_alone_and_is_answered(server: tuple[Server, dict[str, Any]]) -> None:
    # behind the validator: should anything still make a row fail to start, its request gets an error
    # and the requests taken with it are decoded, instead of all of them waiting forever
    srv, info = server
    served = srv.models[info["names"][0]]
    ids = render(served.model.tokenizer, [], None, "hi")
    bad = served.batcher.submit(Request(ids, Sampling(temperature=1.0, seed=2**64), 3))
    good = served.batcher.submit(Request(ids, GREEDY, 3))
    assert bad.events.get(timeout=60)[0] == "error"
    kinds: list[str] = []
    while not kinds or kinds[-1] not in ("done", "error"):
        kinds.append(good.events.get(timeout=60)[0])
    assert kinds[-1] == "done"


def test_malformed_bodies_get_a_400_not_a_dropped_connection(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    deep = b'{"model": "%s", "messages": ' % name.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {
        "nested too deeply": deep,
        "content[0].text": json.dumps(
            {"model": name, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
        ).encode(),
        "text part": json.dumps(
            {"model": name, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        ).encode(),
        "content": json.dumps({"model": name, "messages": [{"role": "user", "content": {"text": "hi"}}]}).encode(),
    }
    auth = b"Authorization: Bearer sekret\r\n"
    for words, body in cases.items():
        out = raw(
            srv,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + auth
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body,
        )
        assert out.startswith(b"HTTP/1.1 400"), (words, out[:200])
        error = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error"
    assert (
        client(srv)
        .chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        .choices
    )


def test_prompts_longer_than_the_context_get_a_400(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    served = srv.models[name]
    assert served.context == 2048  # tiny's max_position_embeddings
    c = client(srv)
    with pytest.raises(openai.BadRequestError) as br:  # the default cap: 2048 - 256 (max_tokens by default)
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "x" * 1900}])
    assert br.value.body["code"] == "context_length_exceeded" and "2048" in br.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:  # a long answer leaves less room for the prompt
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "x" * 100}], max_tokens=2000)
    assert br.value.body["code"] == "context_length_exceeded" and "max_tokens" in br.value.body["message"]  # type: ignore[index]
    ok = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "x" * 1900}], max_tokens=2)
    assert ok.usage and ok.usage.prompt_tokens > 1900


def test_a_long_prompt_is_prefilled_in_chunks_between_the_other_rows_steps() -> None:
    # the long prompt arrives first; the short request behind it is answered while the long prompt is
    # still being prefilled (a chunk per turn, each turn also a decode step), not after all of it
    loaded = load_base("tiny")
    tok = loaded.tokenizer
    b = Batcher(loaded.model, tok, max_batch=8, gather_s=0.0, chunk=64, start=False)
    try:
        long = b.submit(Request(render(tok, [], None, "tell me a long story " * 80), GREEDY, 3))
        short = b.submit(Request(render(tok, [], None, "hi"), GREEDY, 3))
        b.start()
        answers = [r.result(timeout=120) for r in (long, short)]
        trace = list(b.trace)
        chunks = [i for i, (kind, rid) in enumerate(trace) if kind == "chunk" and rid == id(long)]
        assert len(chunks) == -(-len(long.prompt) // 64) > 20  # the long prompt, a chunk at a time
        short_done = trace.index(("done", id(short)))
        assert short_done < chunks[-1]  # answered in full before the long prompt's last chunk
        # each turn until then: one chunk of the long prompt, then a decode step of the short one
        kinds = [kind for kind, _ in trace[:short_done]]
        assert kinds[0] == "prefill" and kinds[1:] == ["chunk", "step"] * ((len(kinds) - 1) // 2)
        for req, (text, info) in zip((long, short), answers):  # chunking and splicing change no greedy answer
            assert info["finish_reason"] in ("stop", "length")
            assert text == "".join(stream(loaded.model, tok, req.prompt, GREEDY, 3))
    finally:
        b.close()


def test_many_simultaneous_connections_are_all_served(server: tuple[Server, dict[str, Any]]) -> None:
    # Python's default listen backlog of 5 reset (or left hanging) most of 200 clients connecting at once
    srv, _ = server
    host, port = srv.address
    n = 200
    start = threading.Barrier(n)

    def one(_: int) -> bytes:
        with socket.socket() as s:
            s.settimeout(20)  # bounded: a connection the kernel dropped fails the test, it does not hang it
            start.wait()
            try:
                s.connect((str(host), int(port)))
                s.sendall(
                    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sekret\r\nConnection: "
                    b"close\r\n\r\n"
                )
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out[:12]
            except OSError as exc:
                return repr(exc).encode()

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    assert answers.count(b"HTTP/1.1 200") == n, {a: answers.count(a) for a in set(answers)}


def test_host_header_must_name_this_server(
    server: tuple[Server, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    port = srv.address[1]
    get = b"GET /v1/models HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sekret\r\n\r\n"
    refused = raw(srv, get % b"evil.example:%d" % port)  # a page on evil.example whose name now resolves to 127.0.0.1
    assert refused.startswith(b"HTTP/1.1 403") and b"--allow-host evil.example" in refused
    for ok in (b"127.0.0.1:%d" % port, b"localhost:%d" % port, b"LOCALHOST", b"[::1]:%d" % port):
        assert raw(srv, get % ok).startswith(b"HTTP/1.1 200"), ok
    assert serve.allowed_hosts("0.0.0.0") is None  # every interface: its names are not known, so any
    assert serve.allowed_hosts("0.0.0.0", ["box.lan"]) == frozenset(
        {"0.0.0.0", "box.lan", "localhost", "127.0.0.1", "::1"}
    )
    assert "box.lan" in serve.allowed_hosts("127.0.0.1", ["Box.LAN."])  # type: ignore[operator]
    compared: list[bytes] = []
    real = hmac.compare_digest

    def recorded(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recorded)
    with pytest.raises(openai.AuthenticationError):
        client(srv, "sekreu").models.list()
    assert compared == [b"Bearer sekreu"]  # keys are compared in constant time


def test_serve_command_key_from_file_or_env_prompt_cap_and_warnings(
    baked_repo: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = baked_repo["root"]
    key_file = tmp_path / "key"
    key_file.write_text("filed-key\n")
    for args, words in (
        (["--api-key-file", str(tmp_path / "none")], "cannot read the API key"),
        (["--api-key-file", str(key_file), "--api-key", "x"], "not both"),
    ):
        out = bake_git(root, "serve", *args)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
    # the warnings come before any model loads (an unknown model address then ends the run)
    out = bake_git(root, "serve", "nope", "--host", "0.0.0.0")
    assert out.returncode == 2 and "warning: listening on 0.0.0.0 without an API key" in out.stderr
    out = bake_git(root, "serve", "nope", "--host", "0.0.0.0", "--api-key", "k")
    assert "visible to other users" in out.stderr and "without an API key" not in out.stderr
    monkeypatch.setenv("GITBAKE_API_KEY", "k")
    out = bake_git(root, "serve", "nope", "--host", "0.0.0.0")
    assert out.returncode == 2 and "warning" not in out.stderr  # from the environment: not in `ps`, and a key
    monkeypatch.delenv("GITBAKE_API_KEY")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen(
        ["git", "bake", "serve", "--port", str(free), "--api-key-file", str(key_file), "--max-prompt-tokens", "20"],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "serving yoda_bake_" in line and f"127.0.0.1:{free}" in line and "warning" not in line
        c = OpenAI(base_url=f"http://127.0.0.1:{free}/v1", api_key="filed-key", max_retries=0, timeout=60)
        name = c.models.list().data[0].id
        assert name.startswith("yoda_bake_")
        with pytest.raises(openai.BadRequestError) as br:
            c.chat.completions.create(model=name, messages=[{"role": "user", "content": "x" * 100}], max_tokens=2)
        assert br.value.body["code"] == "context_length_exceeded" and "--max-prompt-tokens" in br.value.body["message"]  # type: ignore[index]
        assert c.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{free}/v1", api_key="none", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(30)


def test_completions_logprobs_tools_and_unsupported_fields(server: tuple[Server, dict[str, Any]]) -> None:
    """/v1/completions (plain and streamed), logprobs on both endpoints, tools through the chat template,
    and every field the server does not honour answered 400 with its name."""
    srv, info = server
    c = client(srv)
    name = info["names"][0]
    done = c.completions.create(model=name, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    choice = done.choices[0]
    assert choice.logprobs is not None and 0 < len(choice.logprobs.tokens or []) <= 6
    assert len(choice.logprobs.token_logprobs or []) == len(choice.logprobs.tokens or [])
    assert all(v is not None and v <= 0 for v in choice.logprobs.token_logprobs or [])
    assert all(1 <= len(t or {}) <= 2 for t in choice.logprobs.top_logprobs or [])  # keyed by text: may merge
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model=name, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True)
        if ch.choices
    )
    assert streamed == choice.text and done.usage is not None and done.usage.completion_tokens <= 6
    msgs = [{"role": "user", "content": "What is the weather?"}]
    chat = c.chat.completions.create(
        model=name,
        messages=msgs,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    content = chat.choices[0].logprobs.content if chat.choices[0].logprobs else None
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert chat.usage is not None and len(content) <= chat.usage.completion_tokens
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob for t in content)  # greedy: the likeliest
    # tiny's greedy answer is bytes that are not whole characters: each token's `bytes` is its own byte (the
    # text of each is U+FFFD), and joined they give the answer back
    raw = [bytes(t.bytes or []) for t in content]
    assert "\ufffd" in "".join(t.token for t in content) and "\ufffd".encode() not in raw, raw
    assert b"".join(raw).decode("utf-8", "replace") == chat.choices[0].message.content
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    bare = c.chat.completions.create(model=name, messages=msgs, max_tokens=1)  # type: ignore[arg-type]
    tooled = c.chat.completions.create(model=name, messages=msgs, max_tokens=1, tools=[tool])  # type: ignore[list-item]
    assert bare.usage and tooled.usage and tooled.usage.prompt_tokens > bare.usage.prompt_tokens  # rendered
    none = c.chat.completions.create(model=name, messages=msgs, max_tokens=1, tools=[tool], tool_choice="none")  # type: ignore[list-item]
    assert none.usage and none.usage.prompt_tokens == bare.usage.prompt_tokens
    turns = msgs + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert c.chat.completions.create(model=name, messages=turns, max_tokens=1, tools=[tool]).choices  # type: ignore[arg-type,list-item]
    refused = {
        "response_format": {"type": "json_object"},
        "tool_choice": "required",
        "presence_penalty": -3,
        "frequency_penalty": 2.5,
        "top_logprobs": 21,
        "n": 2,
        "stop": ["a", "b", "c", "d", "e"],
        "functions": [{"name": "f"}],
        "guided_json": {"type": "object"},
    }
    for field, value in refused.items():
        status, body = post(srv, json.dumps({"model": name, "messages": msgs, field: value}).encode())
        assert status == 400 and body["error"]["param"] == field, (field, body)
    for field, value in {"logprobs": 21, "echo": True, "suffix": "x", "best_of": 2, "n": 3}.items():
        status, body = post_to(srv, "/completions", {"model": name, "prompt": "hi", field: value})
        assert status == 400 and body["error"]["param"] == field, (field, body)
    status, body = post_to(srv, "/completions", {"model": name, "prompt": [1, 2, 10**9]})
    assert status == 400 and "outside the vocabulary" in body["error"]["message"]


def post_to(srv: Server, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        srv.url + path,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Authorization": "Bearer sekret", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# tiny's greedy answer opens with bytes that are not whole characters (U+FFFD, as the logprobs test above
# shows): a template that reads everything from the first of them as a call makes the call certain, so the
# test is about serve's side (OpenAI's shapes, whole and streamed), while transformers parses (test_toolcalls.py)
REST_AS_CALL = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "tool_calls": {
            "open": "\ufffd",
            "repeats": True,
            "content": "text",
            "transform": {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
        },
        "content": {"content": "text"},
    },
}


def test_tool_calls_come_back_through_the_models_response_template(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    c = client(srv)
    msgs = [{"role": "user", "content": "What is the weather?"}]
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    ask = {"model": name, "messages": msgs, "max_tokens": 4, "temperature": 0}
    plain = c.chat.completions.create(**ask, tools=[tool])  # type: ignore[call-overload]
    text = plain.choices[0].message.content or ""
    assert text.startswith("\ufffd") and plain.choices[0].finish_reason == "length"  # no template: the text
    tok = srv.models[name].model.tokenizer
    tok.response_template = REST_AS_CALL
    try:
        done = c.chat.completions.create(**ask, tools=[tool])  # type: ignore[call-overload]
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls or []
        assert [(t.type, t.function.name, json.loads(t.function.arguments)) for t in calls] == [
            ("function", "weather", {"city": "Paris"})
        ]
        assert calls[0].id.startswith("call_") and not choice.message.content
        chunks = list(c.chat.completions.create(**ask, tools=[tool], stream=True))  # type: ignore[call-overload]
        deltas = [d for ch in chunks for d in ch.choices]
        streamed = [t for d in deltas for t in (d.delta.tool_calls or [])]
        assert [(t.index, t.function.name if t.function else None) for t in streamed] == [(0, "weather")]
        assert deltas[-1].finish_reason == "tool_calls"
        untooled = c.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert untooled.choices[0].message.content and not untooled.choices[0].message.tool_calls  # no tools offered
    finally:
        tok.response_template = None
