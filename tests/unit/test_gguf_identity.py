"""A GGUF base model's identity: the file's blake3 digest, through the stat cache (contract/identity.py)."""

from __future__ import annotations

import os
from pathlib import Path

import blake3

from gitbake.contract import identity


def test_identity_is_the_files_digest_through_the_stat_cache(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(range(200)))  # the identity reads bytes, not GGUF
    digest = blake3.blake3(path.read_bytes()).hexdigest()

    class Cache:
        def __init__(self) -> None:
            self.known: dict[int, str] = {}
            self.lookups = 0

        def lookup(self, st: os.stat_result) -> str | None:
            self.lookups += 1
            return self.known.get(st.st_ino)

        def record(self, st: os.stat_result, digest: str, started_ns: int) -> bool:
            self.known[st.st_ino] = digest
            return True

    cache = Cache()
    # the file, relative to the repository (as init records it), and the directory that holds only it
    for name in ("models/m.gguf", "models", str(path)):
        assert identity.classify(name, tmp_path) == "gguf", name
        assert identity.base_identity(name, tmp_path, cache) == {"kind": "gguf", "digest": digest}
    assert cache.lookups == 3 and len(cache.known) == 1
    cache.known[path.stat().st_ino] = "f" * 64  # a hit is trusted: the file was not read again
    assert identity.base_identity("models/m.gguf", tmp_path, cache)["digest"] == "f" * 64
    # a name ending in .gguf is never a hub id, and a directory with a config.json stays a model directory
    assert identity.classify("org/missing.gguf", tmp_path) == "gguf"
    (tmp_path / "models" / "config.json").write_text("{}")
    assert identity.classify("models", tmp_path) == "dir"
