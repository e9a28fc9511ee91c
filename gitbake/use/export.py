"""`git bake export REV --adapter DIR [--single] | --merged DIR | --gguf FILE`: take a model elsewhere.

`--adapter`: the adapter chain in PEFT's format, one directory per bake in order, and `chain.json`
naming the base model and the order (PEFT loads each with `PeftModel.from_pretrained`; merge them in
order). With `--single`, one adapter equal to the whole chain (gitbake.engine.adaptersum), which vLLM's
multi-LoRA serving and PEFT load on the base model alone. `--merged`: a plain Hugging Face model
directory with every adapter merged in, which `AutoModelForCausalLM.from_pretrained(DIR)` loads without
gitbake or PEFT. `--gguf FILE`: the merged model as one GGUF file for llama.cpp and Ollama
(gitbake.engine.ggufout), with a `Modelfile` beside it for `ollama create` (gitbake.engine.modelfile).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gitbake import destination, git
from gitbake.contract import identity
from gitbake.errors import UsageError
from gitbake.fsutil import write_atomic
from gitbake.repo.ggufbase import converted_dirs
from gitbake.repo.modelversion import CarriesModel, ModelVersion
from gitbake.repo.repo import ModelRepo
from gitbake.store.objects import swap_in
from gitbake.use.versions import Version, load, materialised, resolve

HOW = "load the base model, then for each adapter in order: PeftModel.from_pretrained(model, path).merge_and_unload()"


@dataclass(frozen=True)
class ExportedAdapter:
    """One bake's adapter in an `--adapter` export: its directory there, its store digest, its bake."""

    path: str
    digest: str
    bake: str | None

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "bake": self.bake}


@dataclass(frozen=True)
class Exported(CarriesModel):
    """What `git bake export` wrote: where, which kind, the model of which commit."""

    dest: Path  # absolute
    kind: Literal["adapter", "merged", "gguf"]
    model: ModelVersion
    commit: str
    dirs: tuple[ExportedAdapter, ...] = ()  # kind "adapter": one directory per bake, in order
    how: str | None = None  # kind "adapter": how to load the chain
    gguf_type: str | None = None  # kind "gguf": f32, f16 or q8_0
    modelfile: Path | None = None  # kind "gguf": the Ollama Modelfile beside the file (absolute)
    rank: int | None = None  # kind "adapter" with --single: the one adapter's LoRA rank (the chain's summed)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dest": str(self.dest),
            "kind": self.kind,
            "base_model": self.base_model,
            "adapters": [a.as_json() for a in self.dirs] if self.kind == "adapter" else list(self.adapters),
            "model_name": self.model_name,
            "commit": self.commit,
        }
        if self.how is not None:
            out["how"] = self.how
        if self.rank is not None:
            out["single"], out["rank"] = True, self.rank
        if self.kind == "gguf":
            out["type"] = self.gguf_type
            out["modelfile"] = str(self.modelfile)
        return out


def _staging(repo: ModelRepo, dest: Path, force: bool) -> Path:
    """A fresh directory beside `dest` to write into; `_publish` moves it into place once complete, so a
    failed export leaves `dest` as it was. `dest` goes through the one destination guard: only an earlier
    export (gitbake's marker, not a plain chain.json) is replaced, and only with --force."""
    dest = destination.check(dest, protected=repo.never_replaced(), replace=force, what="the export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _publish(staging: Path, dest: Path, kind: str) -> None:
    destination.write_marker(staging, kind)
    for f in staging.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # an export is the user's to keep: plain, readable files
    swap_in(staging, dest)


def export_adapters(repo: ModelRepo, rev: str, dest: Path, force: bool = False, single: bool = False) -> Exported:
    version = resolve(repo, rev)
    if not version.adapters:
        raise UsageError(
            f"{rev} has no baked model: nothing to export as adapters",
            "export a bake commit (see `git bake log`), or use --merged",
        )
    if single:
        return _export_single(repo, version, dest, force)
    staging = _staging(repo, dest, force)
    try:
        names = _bake_names(repo, version)
        chain: list[ExportedAdapter] = []
        with materialised(repo, version) as dirs:
            for i, (d, digest) in enumerate(zip(dirs, version.adapters)):
                sub = f"{i:02d}-{names.get(digest, digest[:12])}"
                shutil.copytree(d, staging / sub)  # real copies: the export leaves the store behind
                chain.append(ExportedAdapter(sub, digest, names.get(digest)))
        meta = {
            "base_model": version.base_model,
            "adapters": [a.as_json() for a in chain],
            "model_name": version.model_name,
            "commit": version.commit,
            "how": HOW,
        }
        (staging / "chain.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(staging, dest, "export-adapter")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(dest.absolute(), "adapter", version.model, version.commit, tuple(chain), HOW)


SINGLE_BASE = "base"  # where a `--single` export of a base no other tool can load (tiny, a GGUF) puts it


def _export_single(repo: ModelRepo, version: Version, dest: Path, force: bool) -> Exported:
    """One PEFT adapter equal to the whole chain (gitbake.engine.adaptersum), for vLLM and PEFT, whose
    base_model_name_or_path loads outside gitbake: a hub id at its commit, a model directory's path, or,
    for `tiny` and a GGUF base, the model itself written beside the adapter (`base/`)."""
    from gitbake.engine.adaptersum import write_single
    from gitbake.engine.models import resolve_path

    staging = _staging(repo, dest, force)
    try:
        kind = identity.classify(version.base_model, repo.root)
        path, ident = resolve_path(version.base_model, repo.root, converted_dirs(repo.store))
        revision = None
        if kind == "hub":
            base, revision = version.base_model.partition("@")[0], str(ident["revision"])
        elif kind in ("tiny", "gguf"):
            shutil.copytree(path, staging / SINGLE_BASE, ignore=shutil.ignore_patterns(".*"))
            base = str(dest.absolute() / SINGLE_BASE)
        else:
            base = str(Path(path).absolute())
        with materialised(repo, version) as dirs:
            summed = write_single(dirs, staging, base, revision)
        names = _bake_names(repo, version)
        chain = tuple(ExportedAdapter(".", d, names.get(d)) for d in version.adapters)
        how = f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), DIR); vllm serve {base}"
        meta = {
            "base_model": version.base_model,
            "base_model_name_or_path": base,
            "revision": revision,
            "adapters": [a.as_json() for a in chain],
            "rank": summed.rank,
            "ranks": list(summed.ranks),
            "model_name": version.model_name,
            "commit": version.commit,
            "how": how,
        }
        (staging / "gitbake.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(staging, dest, "export-adapter")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(dest.absolute(), "adapter", version.model, version.commit, chain, how, rank=summed.rank)


def export_merged(repo: ModelRepo, rev: str, dest: Path, force: bool = False) -> Exported:
    version = resolve(repo, rev)
    staging = _staging(repo, dest, force)
    try:
        # saving asks whether DeepSpeed ZeRO-3 is on, which imports DeepSpeed, whose logger prints to stdout:
        # stdout is this command's output (--json), so the libraries talk to stderr
        with contextlib.redirect_stdout(sys.stderr):
            loaded = load(repo, version)
            # the name, not where this machine keeps it (a cache snapshot, a home directory): some
            # transformers versions write it into config.json
            loaded.model.config._name_or_path = version.base_model
            loaded.model.save_pretrained(str(staging), safe_serialization=True)
            loaded.tokenizer.save_pretrained(str(staging))
        meta = {
            "base_model": version.base_model,
            "adapters": list(version.adapters),
            "model_name": version.model_name,
            "commit": version.commit,
        }
        (staging / "gitbake.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(staging, dest, "export-merged")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(dest.absolute(), "merged", version.model, version.commit)


MODELFILE = "Modelfile"


def export_gguf(repo: ModelRepo, rev: str, dest: Path, ftype: str = "f32", force: bool = False) -> Exported:
    """The merged model of `rev` as one GGUF file `dest`, and an Ollama `Modelfile` beside it."""
    from gitbake.engine.ggufout import check_ftype

    check_ftype(ftype)  # before the model loads: a wrong --type costs nothing
    version = resolve(repo, rev)
    dest = _gguf_destination(repo, dest, force)
    modelfile_path = _gguf_destination(repo, dest.parent / MODELFILE, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from gitbake.engine.ggufout import write_gguf
    from gitbake.engine.modelfile import modelfile

    with contextlib.redirect_stdout(sys.stderr):  # the libraries talk to stderr: stdout is --json's
        loaded = load(repo, version)
        source = _gguf_source(repo, version)
        write_gguf(loaded.model, loaded.tokenizer, dest, ftype, source, name=version.model_name or version.name)
    tok = loaded.tokenizer
    text = modelfile(
        dest.name,
        getattr(tok, "chat_template", None),
        [t for t in tok.all_special_tokens if isinstance(t, str)],
        tok.eos_token,
        {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or ""},
    )
    write_atomic(modelfile_path, text)
    return Exported(dest, "gguf", version.model, version.commit, gguf_type=ftype, modelfile=modelfile_path)


def _gguf_destination(repo: ModelRepo, dest: Path, force: bool) -> Path:
    """A file gitbake may write: the destination rules for one file, and never a file the repository tracks."""
    never = [git.git_dir(repo.root), git.common_dir(repo.root), repo.store.root]
    dest = destination.check_file(dest, protected=never, replace=force, what="the GGUF export")
    root = repo.root.resolve()
    if dest.exists() and root in dest.resolve().parents:
        rel = dest.resolve().relative_to(root).as_posix()
        if git.index_blob(repo.root, rel) is not None:
            raise UsageError(f"{dest} is a file of the repository; it is left alone", "give a file outside it")
    return dest


def _gguf_source(repo: ModelRepo, version: Version) -> Path | None:
    """The GGUF file the base model came from (`init --base-model FILE.gguf`), whose metadata the export
    keeps; None for other bases."""
    if identity.classify(version.base_model, repo.root) != "gguf":
        return None
    f = identity.gguf_file(version.base_model, repo.root)
    return f if f is not None and f.is_file() else None


def _bake_names(repo: ModelRepo, version: Version) -> dict[str, str]:
    recipe = repo.at(version.commit).recipe
    return {b.adapter: b.bake_name for b in (recipe.resources.bakes if recipe else []) if b.adapter}
