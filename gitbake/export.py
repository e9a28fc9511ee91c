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
from pathlib import Path
from typing import Any

from gitbake.errors import UsageError
from gitbake.repo import ModelRepo
from gitbake.versions import Version, materialised, resolve


def _prepare(dest: Path, force: bool) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        if not force:
            raise UsageError(f"{dest} exists and is not empty", "give a new directory, or --force to replace it")
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    dest.mkdir(parents=True, exist_ok=True)


def export_adapters(repo: ModelRepo, rev: str, dest: Path, force: bool = False) -> dict[str, Any]:
    version = resolve(repo, rev)
    if not version.adapters:
        raise UsageError(f"{rev} has no baked model: nothing to export as adapters", "export a bake commit (see `git bake log`), or use --merged")
    _prepare(dest, force)
    names = _bake_names(repo, version)
    chain = []
    with materialised(repo, version) as dirs:
        for i, (d, digest) in enumerate(zip(dirs, version.adapters)):
            sub = f"{i:02d}-{names.get(digest, digest[:12])}"
            shutil.copytree(d, dest / sub)  # real copies: the export leaves the store behind
            for f in (dest / sub).iterdir():
                f.chmod(0o644)
            chain.append({"path": sub, "digest": digest, "bake": names.get(digest)})
    meta = {"base_model": version.base_model, "adapters": chain, "model_name": version.model_name, "commit": version.commit,
            "how": "load the base model, then for each adapter in order: PeftModel.from_pretrained(model, path).merge_and_unload()"}
    (dest / "chain.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"dest": str(dest), "kind": "adapter", **meta}


def export_merged(repo: ModelRepo, rev: str, dest: Path, force: bool = False) -> dict[str, Any]:
    from gitbake.chat import load

    version = resolve(repo, rev)
    _prepare(dest, force)
    # saving asks whether DeepSpeed ZeRO-3 is on, which imports DeepSpeed, whose logger prints to stdout:
    # stdout is this command's output (--json), so the libraries talk to stderr
    with contextlib.redirect_stdout(sys.stderr):
        loaded = load(repo, version)
        loaded.model.save_pretrained(str(dest), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(dest))
    meta = {"base_model": version.base_model, "adapters": list(version.adapters), "model_name": version.model_name, "commit": version.commit}
    (dest / "gitbake.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"dest": str(dest), "kind": "merged", **meta}


def _bake_names(repo: ModelRepo, version: Version) -> dict[str, str]:
    recipe = repo.at(version.commit).recipe
    return {b.adapter: b.bake_name for b in (recipe.resources.bakes if recipe else []) if b.adapter}
