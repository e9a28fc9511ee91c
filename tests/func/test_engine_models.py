"""engine/models.py and tiny: the built-in model, local directories, the offline hub cache."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from gitbake.contract import identity
from gitbake.contract.tiny_pin import TINY_WEIGHTS_DIGEST
from gitbake.engine import models, tiny
from gitbake.engine.templating import render

YODA = [{"role": "system", "content": "You are Yoda. Speak like Yoda you must: inverted word order, wise and brief."}]


def test_tiny_weights_match_the_pin() -> None:
    # regenerating the weights must give the pinned digest: identity is the weights, not a version string
    assert tiny.weights_digest(tiny.build_weights()) == TINY_WEIGHTS_DIGEST
    assert identity.base_identity("tiny") == {"kind": "tiny", "weights": TINY_WEIGHTS_DIGEST}


def test_digest_changes_with_any_weight() -> None:
    w = tiny.build_weights()
    w["lm_head.weight"] = w["lm_head.weight"].copy()
    w["lm_head.weight"][0, 0] += 1e-3
    assert tiny.weights_digest(w) != TINY_WEIGHTS_DIGEST


def test_tiny_loads_offline_with_a_chat_template() -> None:
    m = models.load_base("tiny")
    assert m.identity["weights"] == TINY_WEIGHTS_DIGEST and m.device == models.pick_device()[0]
    n = sum(p.numel() for p in m.model.parameters())
    assert 1_000_000 < n < 10_000_000
    ids = render(m.tokenizer, YODA, None, "Hi")
    assert m.tokenizer.decode(ids) == "<|system|>" + YODA[0]["content"] + "<|eos|><|user|>Hi<|eos|><|assistant|>"
    # an empty student prompt renders as the question alone: no system turn
    assert m.tokenizer.decode(render(m.tokenizer, [], None, "Hi")) == "<|user|>Hi<|eos|><|assistant|>"
    # tools are passed to the template (bgit drops them)
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    assert "lookup" in m.tokenizer.decode(render(m.tokenizer, [], tools, "Hi"))
    # saved as files: loads without remote code
    assert (Path(m.path) / "tokenizer.json").exists() and (Path(m.path) / "config.json").exists()


def test_tiny_is_prompt_sensitive() -> None:
    """Mean per-token KL(prompted || unprompted) over sampled answers >= 0.1 nats (the demo needs a gap)."""
    pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
    import torch

    m = models.load_base("tiny")
    torch.manual_seed(0)
    kls = []
    for q in [
        "What is the capital of France?",
        "How do I make a cup of tea?",
        "Why is the sky blue?",
        "What should I do when I feel stuck?",
    ]:
        t = render(m.tokenizer, YODA, None, q)
        s = render(m.tokenizer, [], None, q)
        ids = torch.tensor([t], device=m.device)
        out = m.model.generate(ids, max_new_tokens=32, do_sample=True, pad_token_id=256, eos_token_id=258)
        resp = out[0, len(t) :].tolist()
        lt = torch.log_softmax(
            m.model(torch.tensor([t + resp], device=m.device)).logits[0, len(t) - 1 : -1].float(), -1
        )
        ls = torch.log_softmax(
            m.model(torch.tensor([s + resp], device=m.device)).logits[0, len(s) - 1 : -1].float(), -1
        )
        kls.append((lt.exp() * (lt - ls)).sum(-1).mean().item())
    assert sum(kls) / len(kls) >= 0.1


def test_local_directory(tmp_path: Path) -> None:
    src, _ = tiny.ensure_tiny()
    local = tmp_path / "my-model"
    shutil.copytree(src, local)
    m = models.load_base(str(local))
    assert m.identity["kind"] == "dir" and m.identity["digest"] == identity.directory_digest(local)


def test_directory_without_weights(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(models.ModelError) as exc:
        models.load_base(str(tmp_path / "empty"))
    assert "no model weights" in exc.value.message and exc.value.exit_code == 2


def test_hub_id_not_cached_offline(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE (set by the test fixture) and nothing cached: exit 2, and `hf download` is the fix."""
    from gitbake.hub import HubError

    with pytest.raises(HubError) as exc:
        models.load_base("someorg/not-downloaded")
    assert exc.value.exit_code == 2 and "not in the Hugging Face cache" in exc.value.message
    assert "HF_HUB_OFFLINE is set" in exc.value.message
    assert exc.value.hint and "`hf download someorg/not-downloaded`" in exc.value.hint


def test_hub_id_loads_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id resolves through the cache's refs/main to a snapshot, offline."""
    src, _ = tiny.ensure_tiny()
    cache = tmp_path / "hub"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--acme--tiny-chat" / "snapshots" / rev
    shutil.copytree(src, snap)
    (cache / "models--acme--tiny-chat" / "refs").mkdir()
    (cache / "models--acme--tiny-chat" / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # a process that imported huggingface_hub before HF_HUB_OFFLINE was set (it reads it once): loading must
    # still never reach for the network (transformers asked it for an adapter_config.json, and waited out
    # 20 s of retries offline)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    attempts: list[object] = []

    def no_network(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("the network is unreachable in this test")

    def no_lookup(host: object, *args: object, **kwargs: object) -> None:
        attempts.append(host)
        raise socket.gaierror("the network is unreachable in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    m = models.load_base("acme/tiny-chat")
    assert m.identity == {"kind": "hub", "id": "acme/tiny-chat", "revision": rev}
    assert sum(p.numel() for p in m.model.parameters()) > 0
    assert attempts == []
    # a branch resolves through the cache's refs, as the plain id does; a commit names its snapshot
    assert models.load_base("acme/tiny-chat@main").identity == m.identity
    assert models.load_base("acme/tiny-chat@" + rev).identity == m.identity
    # what the cache does not hold, offline: a clear error, no download
    from gitbake.hub import HubError

    for missing in ("f" * 40, "v9"):
        with pytest.raises(HubError, match=f"acme/tiny-chat@{missing} is not in the Hugging Face cache") as exc:
            models.load_base("acme/tiny-chat@" + missing)
        assert exc.value.hint and f"hf download acme/tiny-chat --revision {missing}" in exc.value.hint
    assert attempts == []


def test_device_and_dtype_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
    import torch

    dev, dt = models.pick_device()
    assert (dev.type, dt) == ("cpu", torch.float32) or dev.type == "cuda"
    assert models.pick_device("cpu", "bf16")[1] == torch.bfloat16
    with pytest.raises(Exception, match="unknown dtype"):
        models.pick_device("cpu", "int3")


def test_a_bake_runs_in_bf16_on_a_cpu_that_multiplies_it_natively(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GITBAKE_DTYPE", raising=False)
    monkeypatch.setenv("GITBAKE_CPU_BF16", "1")
    assert models.bake_dtype(None, "cpu") == "bf16" and models.bake_dtype("auto", "cpu") == "bf16"
    assert models.bake_dtype("fp32", "cpu") == "fp32"  # BAKE.model.dtype wins
    assert models.bake_dtype(None, "cpu", deepspeed=True) is None  # ZeRO-3's loss path would round in bf16
    monkeypatch.setenv("GITBAKE_DTYPE", "fp32")
    assert models.bake_dtype(None, "cpu") is None  # and so does GITBAKE_DTYPE (pick_device reads it)
    monkeypatch.setenv("GITBAKE_DTYPE", "auto")
    assert models.bake_dtype(None, "cpu") == "bf16"  # `auto` is no override
    monkeypatch.setenv("GITBAKE_CPU_BF16", "0")  # emulated bf16 is slower than fp32: keep fp32
    assert models.bake_dtype(None, "cpu") is None
    monkeypatch.delenv("GITBAKE_CPU_BF16")
    # the detection reads the CPU's flags
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert models.native_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")  # AVX-512 without BF16: emulated
    assert not models.native_bf16(str(info))
    info.write_text("flags\t\t: fpu amx_tile amx_bf16\n")
    assert models.native_bf16(str(info))
    assert not models.native_bf16(str(tmp_path / "missing"))


def test_onednn_caches_are_capped_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    models.limit_onednn_caches()
    import os

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == models.ONEDNN_CACHE
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"


SAVE_QUIETLY = """
import sys
from gitbake.engine import models
models.quiet_transformers()
loaded = models.load_base("tiny")
loaded.model.save_pretrained(sys.argv[1], safe_serialization=True)
"""


def test_saving_a_model_on_a_cpu_logs_no_deepspeed_accelerator_warning(tmp_path: Path) -> None:
    """save_pretrained makes accelerate import DeepSpeed (when installed), which warned into every bake log
    of a machine without a GPU that it could not detect one."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed: nothing imports it (pip install 'gitbake[deepspeed]')")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_QUIETLY, str(tmp_path / "saved")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert "Setting accelerator to CPU" not in proc.stderr + proc.stdout
