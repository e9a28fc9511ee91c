"""A GGUF base model's conversion, kept in the store: converted once, then materialised on every load.

The engine converts (gitbake/engine/ggufin.py) but cannot see the store, which is above it; this module is
the `GgufDirs` the engine's loader is handed. The converted directory is a manifest under the stage key
`gguf/<blake3 of {gguf digest, converter version}>`, so a new converter version converts again, and a
gc drops a conversion no one has used within the grace period (each use refreshes its key): it is a cache
that can always be rebuilt from the GGUF.

Nothing half-converted reaches the store: the conversion is written in the store's tmp/ and stored only
once whole; a bad file raises before anything is stored.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gitbake.contract.identity import file_digest
from gitbake.contract.keys import key_of
from gitbake.reporter import Reporter
from gitbake.store.objects import Store

if TYPE_CHECKING:
    from gitbake.engine.models import GgufDirs

STAGE = "gguf"

# the directories materialised in this process, by manifest: diff and chat load the base model twice
_MATERIALISED: dict[tuple[str, str], Path] = {}


def conversion_key(digest: str) -> str:
    from gitbake.engine.ggufin import CONVERTER_VERSION

    return key_of({"gguf": digest, "converter": CONVERTER_VERSION})


def conversion(store: Store, gguf: Path, reporter: Reporter | None = None) -> tuple[str, str]:
    """(the manifest of `gguf` converted, the file's digest), converting and storing it on first use."""
    from gitbake.engine.ggufin import CONVERTER_VERSION, convert

    digest = file_digest(gguf, store.statcache)
    key = conversion_key(digest)
    manifest = store.get_key(STAGE, key)
    if manifest is None:
        (reporter or Reporter()).say(f"converting {gguf.name} to safetensors (once; the store keeps the result)")
        with tempfile.TemporaryDirectory(dir=store.tmp, prefix="gguf-") as tmp:
            convert(gguf, Path(tmp) / "model")
            meta = {"kind": "gguf-conversion", "gguf": digest, "converter": CONVERTER_VERSION, "file": gguf.name}
            manifest = store.put_dir(Path(tmp) / "model", meta, take=True)
    # set on a hit too: the key's age is what gc reads, so a conversion in use is kept
    store.set_key(STAGE, key, manifest)
    return manifest, digest


def converted_dirs(store: Store, reporter: Reporter | None = None) -> GgufDirs:
    """The engine's `GgufDirs` backed by `store`: the conversion, materialised (links, not copies) in the
    store's tmp/ for as long as this process runs (gc leaves a directory there alone while we hold the store)."""

    def directory(gguf: Path) -> tuple[Path, str]:
        manifest, digest = conversion(store, gguf, reporter)
        where = (str(store.root), manifest)
        if where not in _MATERIALISED or not (_MATERIALISED[where] / "config.json").is_file():
            work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="gguf-use-"))
            atexit.register(shutil.rmtree, work, True)
            store.materialise_tree(manifest, work / "model")
            _MATERIALISED[where] = work / "model"
        return _MATERIALISED[where], digest

    return directory
