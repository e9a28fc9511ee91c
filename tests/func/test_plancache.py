"""Status's cached plan (gitbake.repo.plancache): reused only while everything it was computed from holds.

Each way a plan can go stale is made to happen here, and the status that follows must equal a status
computed afresh: input.yml, a generator's file, a template, the base model's directory, a hub snapshot,
the environment, HEAD. A file that changes within a second of the validation is never cached (racy), so
these tests age the files they write before the first status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitbake import reads
from gitbake.contract import bread
from gitbake.repo import plancache
from gitbake.repo.repo import open_repo
from gitbake.workflow import status

from helpers import YODA, git, invoke

FROM_FILE = """\
PROMPT:
  teacher:
    messages: [{role: system, content: You are Yoda.}]
TARGET:
  name: t
  generators:
    - type: from_file
      path: questions.txt
    - type: oneshot_qs
      numq: 4
      template_path: templates/q.j2
BAKE:
  name: b
"""


def age(*paths: Path) -> None:
    """Date files a minute back, as files a user wrote earlier are: fresh ones are racy, never cached."""
    then = time.time() - 60
    for p in paths:
        os.utime(p, (then, then))


def counted(root: Path) -> tuple[Callable[[], plancache.Validated], list[int]]:
    calls = [0]

    def compute() -> plancache.Validated:
        calls[0] += 1
        return status._validated(open_repo(root))

    return compute, calls


def fresh_json(root: Path) -> dict[str, object]:
    """The plan as a full validation computes it now, the cache aside."""
    _, plan = status._validated(open_repo(root))
    return plancache.plan_to_json(plan)


def cached_json(root: Path, compute: Callable[[], plancache.Validated]) -> dict[str, object]:
    return plancache.plan_to_json(plancache.cached(root, compute)[1])


def with_files(root: Path) -> None:
    (root / "input.yml").write_text(FROM_FILE)
    (root / "questions.txt").write_text("What is tea?\nWhy is the sky blue?\n")
    (root / "templates").mkdir()
    (root / "templates" / "q.j2").write_text("Write ${numq} questions for: ${prompt_u}")
    age(root / "questions.txt", root / "templates" / "q.j2", root / "templates")


def with_model_dir(root: Path) -> Path:
    model = root / "models" / "small"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "vocab_size": 300}))
    (model / "weights.bin").write_bytes(b"\0" * 64)
    b = bread.read(root)
    assert b is not None
    b.set("REPO", "base_model", "./models/small")
    bread.write(root, b)
    age(model / "config.json", model / "weights.bin", model, root / "models")
    return model


def test_a_second_status_reuses_the_plan(model_repo: Path) -> None:
    with_files(model_repo)
    compute, calls = counted(model_repo)
    first = cached_json(model_repo, compute)
    assert calls == [1] and (model_repo / ".git" / plancache.CACHE_FILE).is_file()
    assert cached_json(model_repo, compute) == first == fresh_json(model_repo) and calls == [1]


CHANGES: dict[str, Callable[[Path], object]] = {
    "input.yml": lambda r: (r / "input.yml").write_text(FROM_FILE.replace("name: t\n", "name: t2\n")),
    "a from_file generator's questions": lambda r: (r / "questions.txt").write_text("What is coffee?\n"),
    "a template": lambda r: (r / "templates" / "q.j2").write_text("Write ${numq} short questions for: ${prompt_u}"),
    "a file in the base model's directory": lambda r: (r / "models" / "small" / "weights.bin").write_bytes(b"\1" * 64),
    "a file added to the base model's directory": lambda r: (r / "models" / "small" / "extra.bin").write_bytes(b"x"),
    "the base model's config.json": lambda r: (r / "models" / "small" / "config.json").write_text(
        json.dumps({"hidden_size": 32, "vocab_size": 300})
    ),
    ".bread": lambda r: (r / ".bread").write_text((r / ".bread").read_text().replace("./models/small", "tiny")),
    "HEAD": lambda r: (git(r, "add", "-A"), git(r, "commit", "-qm", "move HEAD")),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_input_of_the_plan_invalidates_it(change: str, model_repo: Path) -> None:
    with_files(model_repo)
    with_model_dir(model_repo)
    compute, calls = counted(model_repo)
    before = cached_json(model_repo, compute)
    assert cached_json(model_repo, compute) == before and calls == [1]
    CHANGES[change](model_repo)
    after = cached_json(model_repo, compute)
    assert calls == [2], f"a changed {change} must not be answered from the cache"
    assert after == fresh_json(model_repo)
    if change != "HEAD":  # a commit of the same files leaves the plan as it was: it is computed again all the same
        assert after != before


def test_a_hub_snapshot_and_the_environment_invalidate_it(model_repo: Path, tmp_path: Path) -> None:
    b = bread.read(model_repo)
    assert b is not None
    b.set("REPO", "base_model", "someorg/somemodel")
    bread.write(model_repo, b)
    (model_repo / "input.yml").write_text(YODA)
    refs = Path(os.environ["HF_HOME"]) / "hub" / "models--someorg--somemodel" / "refs"
    refs.mkdir(parents=True)
    for commit in ("a" * 40, "b" * 40):  # two downloaded snapshots
        (refs.parent / "snapshots" / commit).mkdir(parents=True)
        (refs.parent / "snapshots" / commit / "config.json").write_text("{}")
        (refs.parent / "snapshots" / commit / "model.safetensors").write_bytes(b"")
        snap = refs.parent / "snapshots" / commit
        age(snap / "config.json", snap / "model.safetensors", snap)
    (refs / "main").write_text("a" * 40)
    age(refs / "main", refs, refs.parent / "snapshots")
    compute, calls = counted(model_repo)
    first = cached_json(model_repo, compute)
    assert first["parent"]["identity"]["base"]["revision"] == "a" * 40  # type: ignore[index]
    (refs / "main").write_text("b" * 40)  # a download moved the branch
    second = cached_json(model_repo, compute)
    assert calls == [2] and second["parent"]["identity"]["base"]["revision"] == "b" * 40  # type: ignore[index]
    os.environ["HF_HOME"] = str(tmp_path / "elsewhere")  # the isolate fixture restores it
    third = cached_json(model_repo, compute)
    assert calls == [3] and third["parent"]["identity"]["base"]["revision"] == "uncached"  # type: ignore[index]


def test_a_racy_file_is_not_cached(model_repo: Path) -> None:
    with_files(model_repo)
    (model_repo / "questions.txt").write_text("What is tea?\n")  # written just now: its mtime may hide an edit
    compute, calls = counted(model_repo)
    cached_json(model_repo, compute)
    cached_json(model_repo, compute)
    assert calls == [2]


def test_an_error_is_never_cached_and_always_fresh(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    assert invoke("status").exit_code == 0
    assert invoke("status").exit_code == 0
    (model_repo / "input.yml").write_text(YODA.replace("epochs: 2", "epochs: many"))
    for _ in range(2):
        result = invoke("status")
        assert result.exit_code == 2 and "input.yml:18" in result.stderr and "epochs" in result.stderr


@pytest.mark.parametrize("garbage", [b"", b"{", b'{"fingerprint": 1}', b"\xff\xfe", b'{"fingerprint": {}, "deps": []}'])
def test_a_damaged_cache_is_a_miss(garbage: bytes, model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    expected = json.loads(invoke("status", "--json").stdout)
    (model_repo / ".git" / plancache.CACHE_FILE).write_bytes(garbage)
    assert json.loads(invoke("status", "--json").stdout) == expected


# status in a fresh process, once the plan is cached, must not load pydantic: that is what the cache is for
NO_PYDANTIC = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pydantic", "pydantic_core"):
                raise ImportError("forbidden import of " + name)
            return None
    sys.meta_path.insert(0, Block())
    from gitbake.cli.main import cli
    cli.main(args=["status", "--json"], prog_name="git bake", standalone_mode=False)
    """
)


def test_status_with_a_cached_plan_imports_no_pydantic(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    first = subprocess.run(["git", "bake", "status", "--json"], cwd=model_repo, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-c", NO_PYDANTIC], cwd=model_repo, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)


def test_every_file_a_validation_opens_or_lists_is_noted(model_repo: Path) -> None:
    """What keeps the cache honest: a file read without `reads.note` would never invalidate it. An audit
    hook sees every open and directory listing of a full validation; each must be a noted path (or one of
    the files the fingerprint hashes itself, or git's and Python's own)."""
    with_files(model_repo)
    model = with_model_dir(model_repo)
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizer is read only with `tokenizers` installed")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "why": 1}, unk_token="[UNK]"))
    tok.save(str(model / "tokenizer.json"))
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, Path)):
            seen.append(os.path.abspath(args[0]))

    sys.addaudithook(hook)  # cannot be removed: `active` turns it off after the test
    try:
        with reads.recording() as noted:
            status._validated(open_repo(model_repo))
    finally:
        active[0] = False
    fingerprinted = {str(model_repo / n) for n in ("input.yml", ".bread", "recipe.yml")}
    ours = [
        p
        for p in seen
        if p.startswith(str(model_repo)) and "/.git/" not in p and p not in fingerprinted and p != str(model_repo)
    ]
    assert ours, "the audit hook saw nothing: the test would prove nothing"
    assert str(model / "weights.bin") in noted and str(model_repo / "questions.txt") in noted
    assert sorted(set(ours) - noted) == []


def test_an_unreadable_tokenizer_is_named_not_a_crash(model_repo: Path) -> None:
    pytest.importorskip("tokenizers", reason="the tokenizer is read only with `tokenizers` installed")
    model = with_model_dir(model_repo)
    (model / "tokenizer.json").write_text("{}")
    (model_repo / "input.yml").write_text(YODA)
    result = invoke("status")
    assert result.exit_code == 2
    assert "tokenizer.json" in result.stderr and "cannot be read" in result.stderr and "restore" in result.stderr
