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

from helpers import bake_git, bake_here

pytestmark = pytest.mark.usefixtures("tiny_on_the_cpu_in_fp32")


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


def test_single_adapter_equals_the_chain(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    """`--adapter --single`: one PEFT adapter on the base model alone gives the chain's logits, and names a
    base model that loads outside gitbake (tiny is written beside it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dest = tmp_path / "single"
    out = bake_git(baked_repo["root"], "export", "HEAD", "--adapter", str(dest), "--single", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    config = json.loads((dest / "adapter_config.json").read_text())
    assert info["single"] and info["rank"] == config["r"] == 16 and config["lora_alpha"] == 16  # two rank-8 bakes
    base = config["base_model_name_or_path"]
    assert base != "tiny" and Path(base) == dest / "base" and (dest / "base" / "config.json").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(dest)).eval()
    with torch.no_grad():
        single = model(torch.tensor([IDS])).logits[0]
    chain = in_tool_logits(baked_repo["root"], "HEAD", IDS)
    assert torch.allclose(single, chain, atol=1e-5), (single - chain).abs().max()
    parent = in_tool_logits(baked_repo["root"], "HEAD~2", IDS)  # the first bake alone differs: the test can fail
    assert not torch.allclose(single, parent, atol=1e-5)
    text = bake_here(baked_repo["root"], "export", "HEAD", "--adapter", str(dest), "--single", "--force")
    assert text.exit_code == 0 and "vllm serve" in text.stdout and "--max-lora-rank 16" in text.stdout, text.stderr


def test_single_sums_adapters_of_different_layers(tmp_path: Path) -> None:
    """Chained adapters that target different modules (and scale differently) sum exactly: each layer an
    adapter leaves alone gets zero blocks."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from gitbake.engine.adaptersum import write_single
    from gitbake.engine.models import load_base

    torch.manual_seed(0)
    dirs = []
    for i, (targets, r, alpha, rs) in enumerate([(["q_proj", "v_proj"], 4, 8.0, False), (["up_proj"], 2, 3.0, True)]):
        model = load_base("tiny").model
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rs))
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)  # B starts at zero: give the adapter an effect
        pm.save_pretrained(str(tmp_path / str(i)))
        dirs.append(tmp_path / str(i))
    summed = write_single(dirs, tmp_path / "single", "unused")
    assert summed.rank == 6 and summed.target_modules == ("q_proj", "up_proj", "v_proj")
    chained = load_base("tiny").model
    for d in dirs:
        chained = PeftModel.from_pretrained(chained, str(d)).merge_and_unload()
    one = PeftModel.from_pretrained(load_base("tiny").model, str(tmp_path / "single")).eval()
    with torch.no_grad():
        a, b = chained(torch.tensor([IDS])).logits[0], one(torch.tensor([IDS])).logits[0]
        plain = load_base("tiny").model(torch.tensor([IDS])).logits[0]
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, plain, atol=1e-3)


def test_single_refuses_what_it_cannot_sum(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    from gitbake.engine.adaptersum import write_single
    from gitbake.errors import UsageError

    repo = open_repo(baked_repo["root"])
    from gitbake.use.versions import materialised

    with materialised(repo, resolve(repo, "HEAD")) as dirs:
        for d in dirs:
            copy = tmp_path / d.name
            copy.mkdir()
            for f in d.iterdir():
                (copy / f.name).write_bytes(f.read_bytes())
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
        with pytest.raises(UsageError, match="use_dora"):
            write_single([copy], tmp_path / "out", "unused")
    usage = bake_git(baked_repo["root"], "export", "HEAD", "--merged", str(tmp_path / "m"), "--single")
    assert usage.returncode == 2 and "--single applies to --adapter only" in usage.stderr
