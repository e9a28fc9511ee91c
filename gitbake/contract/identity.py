"""Model identity: what a model *is*, for keys (docs/config.md, keys).

A base model is `tiny` (built in), a local directory (identity: the digest of its files) or a hub id
(identity: the id plus the revision resolved from the local Hugging Face cache; never the network). A
model is a base plus the ordered digests of the adapters applied on top. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import blake3

from gitbake.contract.keys import canonical_json


class StatCache(Protocol):
    """What hashing a directory needs of the store's stat cache (gitbake.store.statcache), named here as a
    protocol so the contract layer does not import the store layer above it."""

    def lookup(self, st: os.stat_result) -> str | None: ...

    def record(self, st: os.stat_result, digest: str, started_ns: int) -> bool: ...


TINY = "tiny"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
COMMIT = re.compile(r"[0-9a-f]{40}")  # a git commit of a hub repository, as the cache's snapshots are named


def classify(base_model: str, root: Path | None = None) -> str:
    """`tiny`, `dir` or `hub`: how a `--base-model` value is to be loaded."""
    if base_model == TINY:
        return "tiny"
    p = Path(os.path.expanduser(base_model))
    if not p.is_absolute() and root is not None:
        p = root / p
    if base_model.startswith((".", "/", "~")) or (p.is_dir() and (root is not None or p.is_absolute())):
        return "dir"
    if HUB_ID.match(base_model):
        return "hub"
    return "unknown"


def base_identity(base_model: str, root: Path | None = None, cache: StatCache | None = None) -> dict[str, Any]:
    kind = classify(base_model, root)
    if kind == "tiny":
        from gitbake.contract.tiny_pin import TINY_WEIGHTS_DIGEST

        return {"kind": "tiny", "weights": TINY_WEIGHTS_DIGEST}
    if kind == "dir":
        p = Path(os.path.expanduser(base_model))
        if not p.is_absolute() and root is not None:
            p = root / p
        return {"kind": "dir", "digest": directory_digest(p, cache)}
    if kind == "hub":
        repo_id, _, rev = base_model.partition("@")
        # a branch or tag names whatever commit it points to today: the identity is that commit, so a key
        # follows the weights (and `org/name` and `org/name@main` are the same model)
        return {
            "kind": "hub",
            "id": repo_id,
            "revision": rev if COMMIT.fullmatch(rev) else hub_revision(repo_id, rev or "main"),
        }
    return {"kind": "unknown", "name": base_model}


def model_identity(
    base_model: str, adapters: list[str], root: Path | None = None, cache: StatCache | None = None
) -> dict[str, Any]:
    return {"base": base_identity(base_model, root, cache), "adapters": list(adapters)}


def directory_digest(path: Path, cache: StatCache | None = None) -> str:
    """blake3 over the sorted (relative path, file digest) list of a directory's regular files.

    With the store's stat cache, a multi-GB model directory that has not changed costs one stat per file."""
    if not path.is_dir():
        return "missing"
    entries = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.relative_to(path).parts):
        started = time.time_ns()
        st = f.stat()
        digest = cache.lookup(st) if cache is not None else None
        if digest is None:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            if st.st_size:
                h.update_mmap(f)
            digest = h.hexdigest()
            if cache is not None:
                cache.record(st, digest, started)
        entries.append([f.relative_to(path).as_posix(), digest])
    return blake3.blake3(canonical_json(entries)).hexdigest()


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def hub_repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def hub_revision(repo_id: str, ref: str = "main") -> str:
    """The commit the local cache resolves `ref` (a branch or tag) to; `uncached` when it has none."""
    if ".." in ref.split("/"):
        return "uncached"  # a ref name, never a path out of the cache
    try:
        commit = (hub_repo_dir(repo_id) / "refs" / ref).read_text().strip()
    except OSError:
        return "uncached"
    return commit if COMMIT.fullmatch(commit) else "uncached"
