"""`git bake export --gguf FILE`: the merged model as one GGUF file that transformers' GGUF loader reads back
to the in-tool model's logits (within each type's tolerance) and greedy text, a Modelfile beside it, and the
refusals (an existing file without --force, an unsupported type, a directory, the repository's own files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
pytest.importorskip("gguf", reason="needs gguf: pip install 'gitbake[gguf]'")
import torch

from gitbake.repo.repo import open_repo
from gitbake.use.versions import load, resolve

from helpers import bake_git, bake_here, copy_baked, cpu_fp32, invoke, read_gguf, tiny_gguf

IDS = [10, 72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101]
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 1e-1}  # the largest logit difference each type may make
QUESTION = "What is the capital of France?"


pytestmark = pytest.mark.usefixtures("tiny_on_the_cpu_in_fp32")


@pytest.fixture(scope="module")
def repo(baked_repo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private copy of the session's baked repository for this module's exports."""
    return copy_baked(baked_repo, tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def in_tool(repo: Path) -> torch.Tensor:
    r = open_repo(repo)
    with cpu_fp32(), torch.no_grad():  # module-scoped: before the module's fixture
        out: torch.Tensor = load(r, resolve(r, "HEAD")).model(torch.tensor([IDS])).logits[0]
        return out


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(torch.tensor([IDS])).logits[0]
        return out


def test_f32_export_reads_back_to_the_merged_model_and_chats_the_same(
    repo: Path, in_tool: torch.Tensor, tmp_path: Path
) -> None:
    from gitbake.engine.infer import complete
    from gitbake.engine.templating import render

    dest = tmp_path / "out" / "yoda.gguf"
    out = bake_git(repo, "export", "HEAD", "--gguf", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "gguf" and info["type"] == "f32" and len(info["adapters"]) == 2
    assert info["dest"] == str(dest) and info["modelfile"] == str(dest.parent / "Modelfile")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["Modelfile", "yoda.gguf"]  # no temporary file left
    modelfile = (dest.parent / "Modelfile").read_text()
    assert "FROM ./yoda.gguf\n" in modelfile
    assert (
        'TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|eos|>{{ end }}<|assistant|>"""' in modelfile
    )
    assert 'PARAMETER stop "<|eos|>"' in modelfile
    model, tokenizer = read_gguf(dest)
    exported = logits(model)
    assert torch.allclose(exported, in_tool, atol=TOLERANCE["f32"])
    r = open_repo(repo)
    with torch.no_grad():
        base = load(r, resolve(r, "HEAD~3")).model(torch.tensor([IDS])).logits[0]
    assert not torch.allclose(exported, base, atol=1e-3)  # the bakes are in it: the test can fail
    chat = bake_here(repo, "chat", "HEAD", "-p", QUESTION, "--temperature", "0", "--max-tokens", "24")
    assert chat.exit_code == 0, chat.output
    ids = render(tokenizer, [{"role": "user", "content": QUESTION}], None, None)
    answer = chat.stdout.removesuffix("\n")
    assert answer and complete(model, tokenizer, [ids], 24) == [answer]


@pytest.mark.parametrize("ftype", ["f16", "q8_0"])
def test_smaller_types_read_back_within_their_tolerance(
    repo: Path, in_tool: torch.Tensor, tmp_path: Path, ftype: str
) -> None:
    dest = tmp_path / f"yoda-{ftype}.gguf"
    out = bake_here(repo, "export", "HEAD", "--gguf", str(dest), "--type", ftype)
    assert out.exit_code == 0, out.output
    assert f"gguf {ftype}" in out.stdout and "ollama create" in out.stdout
    diff = (logits(read_gguf(dest)[0]) - in_tool).abs().max().item()
    assert 0 < diff < TOLERANCE[ftype]


def test_gguf_export_bad_input(repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "taken.gguf"
    dest.write_text("mine")
    taken = bake_here(repo, "export", "HEAD", "--gguf", str(dest))
    assert taken.exit_code == 2 and "--force" in taken.stderr and dest.read_text() == "mine"
    q4 = bake_here(repo, "export", "HEAD", "--gguf", str(tmp_path / "q4.gguf"), "--type", "q4_0")
    assert q4.exit_code == 2 and "q4_0" in q4.stderr and "f32, f16, q8_0" in q4.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    isdir = bake_here(repo, "export", "HEAD", "--gguf", str(folder))
    assert isdir.exit_code == 2 and "is a directory" in isdir.stderr and list(folder.iterdir()) == []
    stray = bake_here(repo, "export", "HEAD", "--merged", str(tmp_path / "m"), "--type", "f16")
    assert stray.exit_code == 2 and "--gguf" in stray.stderr
    inside = bake_here(repo, "export", "HEAD", "--gguf", str(repo / ".git" / "x.gguf"))
    assert inside.exit_code == 2 and not (repo / ".git" / "x.gguf").exists()
    tracked = bake_here(repo, "export", "HEAD", "--gguf", str(repo / "recipe.yml"), "--force")
    assert tracked.exit_code == 2 and "file of the repository" in tracked.stderr
    modelfile = tmp_path / "Modelfile"  # the Modelfile beside it is the user's: kept without --force
    modelfile.write_text("mine")
    beside = bake_here(repo, "export", "HEAD", "--gguf", str(tmp_path / "new.gguf"))
    assert beside.exit_code == 2 and "Modelfile" in beside.stderr and not (tmp_path / "new.gguf").exists()
    for out in (taken, q4, isdir, stray, inside, tracked, beside):
        assert "Traceback" not in out.output
    forced = bake_here(repo, "export", "HEAD", "--gguf", str(dest), "--force")
    assert forced.exit_code == 0, forced.output
    assert dest.read_bytes()[:4] == b"GGUF" and modelfile.read_text().startswith("# Written by")


def test_a_gguf_based_model_keeps_its_source_files_metadata(tmp_path: Path, model_cache: Path) -> None:
    """A base model given as a directory holding one GGUF: the export copies that file's general.* and
    tokenizer.* keys (so its name is the source's, not gitbake's model name)."""
    import gguf

    weights = tmp_path / "weights"
    source = tiny_gguf(weights, "source.gguf")
    made = invoke("init", str(tmp_path / "model"), "--base-model", str(weights))
    assert made.exit_code == 0, made.stderr
    out = bake_here(tmp_path / "model", "export", "HEAD", "--gguf", str(tmp_path / "out.gguf"))
    assert out.exit_code == 0, out.stderr

    def name(path: Path) -> str:
        field = gguf.GGUFReader(path).fields["general.name"]
        return bytes(field.parts[field.data[0]]).decode()

    assert name(tmp_path / "out.gguf") == name(source) == "tiny"
