"""`git bake export`: a merged model that transformers loads alone, and the adapter chain in PEFT's format,
both giving the in-tool model's logits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch

from gitbake.repo.repo import open_repo
from gitbake.use.versions import load, resolve

from helpers import bake_git


def in_tool_logits(root: Path, rev: str, ids: list[int]) -> torch.Tensor:
    repo = open_repo(root)
    m = load(repo, resolve(repo, rev))
    with torch.no_grad():
        return m.model(torch.tensor([ids])).logits[0]


IDS = [10, 72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101]


def test_merged_export_loads_with_transformers_alone(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = bake_git(baked_repo["root"], "export", "HEAD", "--merged", str(tmp_path / "merged"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "merged" and len(info["adapters"]) == 2
    for meta in (tmp_path / "merged").glob("*.json"):  # where this machine keeps the base model is not part of it
        assert os.environ["GITBAKE_CACHE"] not in meta.read_text(), meta.name
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        exported = model(torch.tensor([IDS])).logits[0]
    assert torch.allclose(exported, in_tool_logits(baked_repo["root"], "HEAD", IDS), atol=1e-5)
    base = in_tool_logits(baked_repo["root"], "HEAD~3", IDS)  # the first bake's model differs: the test can fail
    assert not torch.allclose(exported, base, atol=1e-6)


def test_adapter_export_is_the_peft_chain(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    from peft import PeftModel

    from gitbake.engine.models import load_base

    dest = tmp_path / "adapters"
    out = bake_git(baked_repo["root"], "export", "HEAD", "--adapter", str(dest))
    assert out.returncode == 0, out.stderr
    chain = json.loads((dest / "chain.json").read_text())
    assert chain["base_model"] == "tiny" and [a["path"][:2] for a in chain["adapters"]] == ["00", "01"]
    model = load_base("tiny").model
    for a in chain["adapters"]:
        assert sorted(p.name for p in (dest / a["path"]).iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        model = PeftModel.from_pretrained(model, str(dest / a["path"])).merge_and_unload()
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    assert torch.allclose(logits, in_tool_logits(baked_repo["root"], "HEAD", IDS), atol=1e-5)


def test_export_bad_input(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    assert bake_git(root, "export", "HEAD").returncode == 2  # neither --adapter nor --merged
    both = bake_git(root, "export", "HEAD", "--adapter", str(tmp_path / "a"), "--merged", str(tmp_path / "b"))
    assert both.returncode == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("x")
    out = bake_git(root, "export", "HEAD", "--merged", str(busy))
    assert out.returncode == 2 and "not written by gitbake" in out.stderr and (busy / "mine.txt").exists()
    forced = bake_git(root, "export", "HEAD", "--merged", str(busy), "--force")
    assert forced.returncode == 2 and "not written by gitbake" in forced.stderr and (busy / "mine.txt").exists()
    for dangerous in (root, root.parent, root / ".git"):
        out = bake_git(root, "export", "HEAD", "--adapter", str(dangerous), "--force")
        assert out.returncode == 2 and (root / ".git").is_dir() and (root / ".bread").is_file(), dangerous
    again = tmp_path / "again"
    assert bake_git(root, "export", "HEAD", "--adapter", str(again)).returncode == 0
    refused = bake_git(root, "export", "HEAD", "--adapter", str(again))
    assert refused.returncode == 2 and "--force" in refused.stderr  # an earlier export: not without --force
    assert bake_git(root, "export", baked_repo["first"], "--adapter", str(again), "--force").returncode == 0
    assert len(json.loads((again / "chain.json").read_text())["adapters"]) == 1
    assert all(p.stat().st_mode & 0o777 in (0o644, 0o755) for p in again.rglob("*"))
    out = bake_git(root, "export", "nope", "--adapter", str(tmp_path / "c"))
    assert out.returncode == 2 and "unknown model address" in out.stderr
    first_commit = bake_git(root, "log", "--json")
    assert first_commit.returncode == 0
