"""A real HTTP server on 127.0.0.1 that speaks the parts of the Hugging Face Hub's API that
huggingface_hub and datasets use to download a repository: revision info, the file tree, and `resolve`
with HEAD, ETag, X-Repo-Commit and Range (so an interrupted download can resume). Point `HF_ENDPOINT` at
`url`. Repositories are in memory; a branch can be moved, a repository made private (401 without the
token), a file's first download cut off midway, and every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


def blob_oid(data: bytes) -> str:
    """git's blob id, which the Hub reports as a file's `oid` (and ETag, for files not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    kind: str  # "models" or "datasets"
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit with `files` (the whole tree), and `branch` moved to it."""
        sha = hashlib.sha1(json.dumps(sorted((k, blob_oid(v)) for k, v in files.items())).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class FakeHub:
    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.token = token
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.cut_once: set[str] = set()  # file paths whose next GET stops halfway
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, repo_id: str, kind: str = "models") -> Repo:
        return self.repos.setdefault((kind, repo_id), Repo(kind, repo_id))

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub._serve(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub._serve(self, head=False)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                hub._serve(self, head=False)

        return Handler

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(
        self, h: BaseHTTPRequestHandler, status: int, obj: Any, head: bool, extra: dict[str, str] | None = None
    ) -> None:
        self._send(h, status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(extra or {})}, head)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, head: bool) -> None:
        self._json(h, status, {"error": message}, head, {"X-Error-Code": code, "X-Error-Message": message})

    def _find(self, kind: str, parts: list[str]) -> tuple[Repo | None, list[str]]:
        """The repository named by the first one or two path segments, and the rest."""
        for n in (2, 1):
            repo = self.repos.get((kind, "/".join(parts[:n])))
            if repo is not None:
                return repo, parts[n:]
        return None, parts[2:]

    def _allowed(self, h: BaseHTTPRequestHandler, repo: Repo) -> bool:
        return not repo.private or h.headers.get("Authorization") == f"Bearer {self.token}"

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = url.path
        self.requests.append((h.command, path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["api"] and len(parts) >= 3:
            kind = parts[1]
            repo, rest = self._find(kind, parts[2:])
            if repo is None or not self._allowed(h, repo):
                return self._error(
                    h, 401 if repo is None or repo.private else 404, "RepoNotFound", "Repository not found", head
                )
            return self._api(h, repo, rest, parse_qs(url.query), head)
        kind = "datasets" if parts[:1] == ["datasets"] else "models"
        repo, rest = self._find(kind, parts[1:] if kind == "datasets" else parts)
        if repo is None or not self._allowed(h, repo):
            return self._error(h, 401, "RepoNotFound", "Repository not found", head)
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error(h, 404, "EntryNotFound", "not found", head)
        commit = repo.resolve(rest[1])
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rest[1]}", head)
        name = "/".join(rest[2:])
        data = repo.commits[commit].get(name)
        if data is None:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist", head)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob_oid(data)}"', "Accept-Ranges": "bytes"}
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0] or 0)
        if not head and name in self.cut_once and start == 0:
            self.cut_once.discard(name)  # send half the body under the full length, then hang up
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(h, 206, data[start:], headers, head)
        return self._send(h, 200, data, headers, head)

    def _api(
        self, h: BaseHTTPRequestHandler, repo: Repo, rest: list[str], query: dict[str, list[str]], head: bool
    ) -> None:
        if not rest:
            rest = ["revision", "main"]
        what, rev = rest[0], rest[1] if len(rest) > 1 else "main"
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        files = repo.commits[commit]
        if what == "revision":
            info = {
                "id": repo.repo_id,
                "sha": commit,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            }
            return self._json(h, 200, info, head)
        if what in ("tree", "paths-info"):
            under = "/".join(rest[2:])
            entries = []
            dirs: set[str] = set()
            recursive = query.get("recursive", ["false"])[0].lower() == "true" or what == "paths-info"
            for p, data in sorted(files.items()):
                if under and not p.startswith(under + "/"):
                    continue
                rel = p[len(under) + 1 :] if under else p
                if not recursive and "/" in rel:
                    d = (under + "/" if under else "") + rel.split("/")[0]
                    if d not in dirs:
                        dirs.add(d)
                        entries.append({"type": "directory", "oid": blob_oid(d.encode()), "size": 0, "path": d})
                    continue
                entries.append({"type": "file", "oid": blob_oid(data), "size": len(data), "path": p})
            return self._json(h, 200, entries, head)
        return self._error(h, 404, "EntryNotFound", f"unknown API {what}", head)
