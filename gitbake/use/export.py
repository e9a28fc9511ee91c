"""`git bake export REV --adapter DIR | --merged DIR`: take a model elsewhere.

`--adapter`: the adapter chain in PEFT's format, one directory per bake in order, and `chain.json`
naming the base model and the order (PEFT loads each with `PeftModel.from_pretrained`; merge them in
order). `--merged`: a plain Hugging Face model directory with every adapter merged in, which
`AutoModelForCausalLM.from_pretrained(DIR)` loads without gitbake or PEFT.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from gitbake import destination
from gitbake.errors import UsageError
from gitbake.repo.repo import ModelRepo
from gitbake.store.objects import swap_in
from gitbake.use.versions import Version, load, materialised, resolve


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


def export_adapters(repo: ModelRepo, rev: str, dest: Path, force: bool = False) -> dict[str, Any]:
    version = resolve(repo, rev)
    if not version.adapters:
        raise UsageError(
            f"{rev} has no baked model: nothing to export as adapters",
            "export a bake commit (see `git bake log`), or use --merged",
        )
    staging = _staging(repo, dest, force)
    try:
        names = _bake_names(repo, version)
        chain = []
        with materialised(repo, version) as dirs:
            for i, (d, digest) in enumerate(zip(dirs, version.adapters)):
                sub = f"{i:02d}-{names.get(digest, digest[:12])}"
                shutil.copytree(d, staging / sub)  # real copies: the export leaves the store behind
                chain.append({"path": sub, "digest": digest, "bake": names.get(digest)})
        meta = {
            "base_model": version.base_model,
            "adapters": chain,
            "model_name": version.model_name,
            "commit": version.commit,
            "how": "load the base model, then for each adapter in order: PeftModel.from_pretrained(model, "
            "path).merge_and_unload()",
        }
        (staging / "chain.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(staging, dest, "export-adapter")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"dest": str(dest.absolute()), "kind": "adapter", **meta}


def export_merged(repo: ModelRepo, rev: str, dest: Path, force: bool = False) -> dict[str, Any]:
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
    return {"dest": str(dest.absolute()), "kind": "merged", **meta}


def _bake_names(repo: ModelRepo, version: Version) -> dict[str, str]:
    recipe = repo.at(version.commit).recipe
    return {b.adapter: b.bake_name for b in (recipe.resources.bakes if recipe else []) if b.adapter}
