"""Model identity: what a model *is*, for keys (docs/config.md, keys).

A base model is `tiny` (built in), a local directory (identity: the digest of its files), a GGUF file or
a directory holding one and no config.json (identity: the file's digest) or a hub id (identity: the id
plus the revision resolved from the local Hugging Face cache; never the network). A model is a base plus
the ordered digests of the adapters applied on top. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import blake3

from gitbake import hub
from gitbake.contract.keys import canonical_json
from gitbake.hub import COMMIT
from gitbake.reads import note


class StatCache(Protocol):
    """What hashing a directory needs of the store's stat cache (gitbake.store.statcache), named here as a
    protocol so the contract layer does not import the store layer above it."""

    def lookup(self, st: os.stat_result) -> str | None: ...

    def record(self, st: os.stat_result, digest: str, started_ns: int) -> bool: ...


TINY = "tiny"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
UNCACHED = "uncached"  # the revision of a hub model not in the local cache yet: `run` downloads it first


GGUF_SUFFIX = ".gguf"


def _local(base_model: str, root: Path | None) -> Path:
    p = Path(os.path.expanduser(base_model))
    local = root / p if not p.is_absolute() and root is not None else p
    note(local)  # whether it exists decides what the name means (a directory, a GGUF or a hub id)
    return local


def gguf_in(directory: Path) -> Path | None:
    """The GGUF file a directory stands for: its only `.gguf`, when it has no config.json (a saved model
    directory that also carries a GGUF export is still a directory model)."""
    note(directory, directory / "config.json")
    try:
        if (directory / "config.json").exists():
            return None
        found = [f for f in directory.iterdir() if f.suffix.lower() == GGUF_SUFFIX and f.is_file()]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def gguf_file(base_model: str, root: Path | None = None) -> Path | None:
    """The GGUF file of a `gguf` base model (it may not exist), else None."""
    p = _local(base_model, root)
    if p.suffix.lower() == GGUF_SUFFIX:
        return p
    return gguf_in(p) if p.is_dir() else None


def classify(base_model: str, root: Path | None = None) -> str:
    """`tiny`, `dir`, `gguf` or `hub`: how a `--base-model` value is to be loaded."""
    if base_model == TINY:
        return "tiny"
    p = _local(base_model, root)
    # a name ending in .gguf is a file, never a hub id (`models/x.gguf` would match HUB_ID)
    if p.suffix.lower() == GGUF_SUFFIX and not p.is_dir():
        return "gguf"
    if base_model.startswith((".", "/", "~")) or (p.is_dir() and (root is not None or p.is_absolute())):
        return "gguf" if p.is_dir() and gguf_in(p) is not None else "dir"
    if HUB_ID.match(base_model):
        return "hub"
    return "unknown"


def pinned(base_model: str, revision: str | None) -> str:
    """The base model as keys and loading read it. A Hugging Face id whose branch or tag (none: `main`) was
    resolved to `revision` when it was downloaded (.bread's `[REPO] base_revision`) is that commit,
    `org/name@<commit>`: a commit of the lineage names the weights it was baked on, not whatever the branch
    names today. Anything else is returned as it is."""
    if revision is None or not HUB_ID.match(base_model):
        return base_model
    repo_id, _, ref = base_model.partition("@")
    return base_model if COMMIT.fullmatch(ref) else f"{repo_id}@{revision}"


def unpinned(base_model: str) -> str:
    """`pinned`'s inverse for display and comparison: a hub id without the commit it is pinned to."""
    repo_id, _, ref = base_model.partition("@")
    return repo_id if HUB_ID.match(base_model) and COMMIT.fullmatch(ref) else base_model


def base_identity(base_model: str, root: Path | None = None, cache: StatCache | None = None) -> dict[str, Any]:
    kind = classify(base_model, root)
    if kind == "tiny":
        from gitbake.contract.tiny_pin import TINY_WEIGHTS_DIGEST

        return {"kind": "tiny", "weights": TINY_WEIGHTS_DIGEST}
    if kind == "dir":
        return {"kind": "dir", "digest": directory_digest(_local(base_model, root), cache)}
    if kind == "gguf":
        f = gguf_file(base_model, root)
        # the file's bytes are the model: where it lies, or its name, is not part of its identity
        return {"kind": "gguf", "digest": file_digest(f, cache) if f is not None and f.is_file() else "missing"}
    if kind == "hub":
        repo_id, _, rev = base_model.partition("@")
        # a branch or tag names whatever commit it points to today: the identity is that commit, so a key
        # follows the weights (and `org/name` and `org/name@main` are the same model)
        return {
            "kind": "hub",
            "id": repo_id,
            "revision": rev if COMMIT.fullmatch(rev) else (hub.cached_commit(repo_id, rev or "main") or UNCACHED),
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
    walked = [p for p in path.rglob("*") if ".git" not in p.relative_to(path).parts]
    note(path, *(p for p in walked if p.is_dir()))  # a file added or removed changes its directory's stamp
    for f in sorted(p for p in walked if p.is_file()):
        entries.append([f.relative_to(path).as_posix(), file_digest(f, cache)])
    return blake3.blake3(canonical_json(entries)).hexdigest()


def file_digest(f: Path, cache: StatCache | None = None) -> str:
    """blake3 of a file's bytes; through the stat cache, one stat when the file has not changed."""
    started = time.time_ns()
    note(f)
    st = f.stat()
    digest = cache.lookup(st) if cache is not None else None
    if digest is None:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        if st.st_size:
            h.update_mmap(f)
        digest = h.hexdigest()
        if cache is not None:
            cache.record(st, digest, started)
    return digest
