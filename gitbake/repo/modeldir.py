""".bake/model: the materialised model of a commit, linked from the store (docs/workflow.md).

`model.json` names the base model and the ordered adapter chain (and the commit it was made for);
`adapters/<i>/` holds each adapter's PEFT files, hardlinked (or reflinked) read-only from the store, so
switching models costs a few links whatever their size. The directory is built beside the old one and
swapped in, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gitbake import destination
from gitbake.contract import bread as bread_mod
from gitbake.errors import GitbakeError
from gitbake.repo.modelversion import ModelVersion
from gitbake.store.locks import FileLock
from gitbake.store.objects import Store, rmtree, swap_in

MODEL_DIR = Path(".bake") / "model"
MODEL_JSON = "model.json"
FORMAT = 1


def spec_of(b: bread_mod.Bread, default_base: str = "tiny") -> ModelVersion:
    """The model a `.bread` names."""
    adapters = b.parent_adapters or []  # a parent in Bread's cloud is not here: the base model stands in
    return ModelVersion(b.pinned_base_model or default_base, tuple(adapters), b.parent_model_name if adapters else None)


def read_current(root: Path, dest: Path | None = None) -> dict[str, Any] | None:
    """The model.json of the materialised model, or None when there is none (or it is unreadable)."""
    path = (dest or root / MODEL_DIR) / MODEL_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(root: Path, spec: ModelVersion, dest: Path | None = None) -> bool:
    cur = read_current(root, dest)
    return (
        cur is not None
        and cur.get("base_model") == spec.base_model
        and [a.get("digest") for a in cur.get("adapters", [])] == list(spec.adapters)
    )


def missing(store: Store, spec: ModelVersion) -> list[str]:
    """Objects of the chain that are not in the store (manifests, then the files they name)."""
    out: list[str] = []
    for digest in spec.adapters:
        if not store.has(digest):
            out.append(digest)
            continue
        out += [e.digest for e in store.read_manifest(digest).files.values() if not store.has(e.digest)]
    return out


@dataclass
class Materialised:
    dest: Path
    spec: ModelVersion
    methods: dict[str, str] = field(default_factory=dict)  # file -> reflink | hardlink | copy
    changed: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"dest": str(self.dest), **self.spec.as_json(), "methods": self.methods, "changed": self.changed}


def materialise(
    store: Store,
    spec: ModelVersion,
    dest: Path,
    commit: str | None = None,
    protected: Iterable[Path] = (),
    reserved: bool = False,
) -> Materialised:
    """Make `dest` the model of `spec`; raises when an object is missing (nothing is changed then).

    `dest` goes through the one destination guard (gitbake.destination): only a directory gitbake wrote is
    replaced, never one of `protected`. `reserved` says `dest` is a repository's own `.bake/model`, which
    gitbake alone writes: one materialised before the marker existed (model.json only) is replaced too.
    """
    absent = missing(store, spec)
    if absent:
        raise ModelObjectsMissing(absent)
    # `.bake` itself must be a real directory too: a linked one could point `model/` at anything
    legacy = (
        reserved
        and dest.is_dir()
        and not dest.is_symlink()
        and not dest.parent.is_symlink()
        and (dest / MODEL_JSON).is_file()
    )
    if not legacy:
        dest = destination.check(dest, protected=protected, what="the model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock", what=f"{dest} (another checkout is writing it)"):
        return _materialise(store, spec, dest, commit)


def _materialise(store: Store, spec: ModelVersion, dest: Path, commit: str | None) -> Materialised:
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    methods: dict[str, str] = {}
    try:
        staging.mkdir()
        chain = []
        for i, digest in enumerate(spec.adapters):
            sub = staging / "adapters" / str(i)
            for rel, how in store.materialise_tree(digest, sub).items():
                methods[f"adapters/{i}/{rel}"] = how
            chain.append({"digest": digest, "path": f"adapters/{i}"})
        meta = {
            "format": FORMAT,
            "base_model": spec.base_model,
            "adapters": chain,
            "model_name": spec.model_name,
            "commit": commit,
        }
        (staging / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        destination.write_marker(staging, "model")
        swap_in(staging, dest)
    finally:
        if staging.exists():
            rmtree(staging)
    return Materialised(dest, spec, methods)


class ModelObjectsMissing(GitbakeError):
    def __init__(self, digests: list[str]) -> None:
        self.digests = digests
        names = ", ".join(d[:12] for d in digests[:5]) + (f" and {len(digests) - 5} more" if len(digests) > 5 else "")
        super().__init__(
            f"the model needs {len(digests)} object(s) that are not in the store: {names}",
            "fetch them with `git bake pull` (add a remote first: `git bake remote add NAME URL`)",
        )


@dataclass(frozen=True)
class Refreshed:
    """What `refresh` did to `.bake/model`: nothing to do (no .bread), already current, objects missing
    (named), or updated from the store (after fetching `fetched` objects)."""

    state: Literal["none", "current", "missing", "updated"]
    model: ModelVersion | None = None  # None for state "none"
    missing: tuple[str, ...] = ()  # state "missing"
    fetched: int = 0  # state "updated"
    done: Materialised | None = None  # state "updated"

    @property
    def adapters(self) -> tuple[str, ...]:
        return self.model.adapters if self.model else ()

    @property
    def model_name(self) -> str | None:
        return self.model.model_name if self.model else None

    def as_json(self) -> dict[str, Any]:
        if self.done is not None:
            return {"state": self.state, "fetched": self.fetched, **self.done.as_json()}
        out: dict[str, Any] = {"state": self.state}
        if self.state == "missing":
            out["missing"] = list(self.missing)
        return {**out, **self.model.as_json()} if self.model else out


def refresh(
    root: Path, store: Store, fetch: Callable[[set[str]], int] | None = None, commit: str | None = None
) -> Refreshed:
    """Make `.bake/model` the model named by the working tree's `.bread` (HEAD's). Missing objects are
    asked of `fetch` (the default bake remote) when given, else named in the result."""
    b = bread_mod.read(root)
    if b is None:
        return Refreshed("none")
    spec = spec_of(b)
    if is_current(root, spec):
        return Refreshed("current", spec)
    absent = missing(store, spec)
    fetched = 0
    if absent and fetch is not None:
        fetched = fetch(set(spec.adapters))
        absent = missing(store, spec)
    if absent:
        return Refreshed("missing", spec, tuple(absent))
    done = materialise(store, spec, root / MODEL_DIR, commit, reserved=True)
    return Refreshed("updated", spec, fetched=fetched, done=done)
