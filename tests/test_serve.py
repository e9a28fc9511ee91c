"""`git bake serve` against the official `openai` client: models, completions, streaming, concurrency,
bad requests (400 / 401 / 404 with OpenAI-shaped bodies) and a server that keeps serving."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import openai
import pytest
from openai import OpenAI

from gitbake.repo import open_repo
from gitbake.serve import Server, load_served
from helpers import bake_git


@pytest.fixture(scope="module")
def server(baked_repo: dict[str, Any]) -> Iterator[tuple[Server, dict[str, Any]]]:
    repo = open_repo(baked_repo["root"])
    models = load_served(repo, ["HEAD", baked_repo["first"]], max_batch=8)
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
    assert r.model == name and r.choices[0].message.role == "assistant" and r.usage and 1 <= r.usage.completion_tokens <= 12
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
        r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=16, temperature=0)
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
    req = urllib.request.Request(srv.url + "/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": "Bearer sekret", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req)
    assert he.value.code == 400 and "error" in json.loads(he.value.read())
    for body in (b"[]", b'{"model": "%s"}' % name.encode(), b'{"model": "%s", "messages": [{"role": "robot"}]}' % name.encode()):
        req = urllib.request.Request(srv.url + "/chat/completions", data=body, method="POST", headers={"Authorization": "Bearer sekret"})
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(req)
        assert he.value.code == 400
    # still serving
    assert c.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_serve_command_and_port_in_use(baked_repo: dict[str, Any]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = bake_git(baked_repo["root"], "serve", "--port", str(port))
        assert out.returncode == 2 and "cannot listen" in out.stderr and "--port" in out.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen(["git", "bake", "serve", "--port", str(free)], cwd=baked_repo["root"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "serving yoda_bake_" in line and f"127.0.0.1:{free}" in line
        models = OpenAI(base_url=f"http://127.0.0.1:{free}/v1", api_key="none", max_retries=0).models.list()
        assert models.data[0].id.startswith("yoda_bake_")
    finally:
        proc.terminate()
        proc.wait(30)
    bad = bake_git(baked_repo["root"], "serve", "nope")
    assert bad.returncode == 2 and "unknown revision" in bad.stderr


def test_oneshot_qs_can_use_a_served_model_as_question_writer(server: tuple[Server, dict[str, Any]], model_repo: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
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
    full = c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0).choices[0].message.content or ""
    if len(full) >= 4:
        cut = full[2:4]
        r = c.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0, stop=[cut])
        assert r.choices[0].finish_reason == "stop" and cut not in (r.choices[0].message.content or "")
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=name, messages=msgs, max_tokens=12, temperature=0, stop=cut, stream=True) if ch.choices)
        assert streamed == r.choices[0].message.content
    chunks = list(c.chat.completions.create(model=name, messages=msgs, max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 3
    assert c.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")
    for bad in ({"n": 2}, {"top_p": 0}, {"stop": ["a", "b", "c", "d", "e"]}):
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model=name, messages=msgs, **bad)  # type: ignore[call-overload]


def raw(srv: Server, request: bytes) -> bytes:
    host, port = srv.httpd.server_address[:2]
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
    assert raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: abc\r\n\r\n{}").startswith(b"HTTP/1.1 400")
    assert raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: -1\r\n\r\n{}").startswith(b"HTTP/1.1 400")
    chunked = raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411") and chunked.count(b"HTTP/1.1") == 1
    huge = raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 999999999\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 413")
    stream_str = json.dumps({"model": info["names"][0], "messages": [{"role": "user", "content": "hi"}], "stream": "false"}).encode()
    out = raw(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: %d\r\n\r\n" % len(stream_str) + stream_str)
    assert out.startswith(b"HTTP/1.1 400") and b"stream" in out
    assert client(srv).chat.completions.create(model=info["names"][0], messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_a_client_that_leaves_is_not_decoded_for(server: tuple[Server, dict[str, Any]]) -> None:
    srv, info = server
    name = info["names"][0]
    batcher = srv.models[name].batcher
    before = batcher.cancelled
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 4096,
                       "temperature": 0, "stream": True}).encode()
    host, port = srv.httpd.server_address[:2]
    s = socket.create_connection((str(host), int(port)), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.close()  # the client leaves mid-answer
    deadline = time.monotonic() + 120
    while batcher.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.cancelled > before  # its row stopped, long before 4096 tokens
    r = client(srv).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
