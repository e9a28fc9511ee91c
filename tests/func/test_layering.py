"""The per-library rules: click only in cli/, dulwich only in git.py, the ML stack only under engine/ and
use/ (chat, serve, export); commands that do not touch a model (status, validate, target, store, remote,
log, tree, show, models, jobs, hooks, checkout, fetch) never import torch, transformers, peft or deepspeed.
The layers themselves are enforced on the import graph in test_import_graph.py."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import YODA

PKG = Path(__file__).parent.parent.parent / "gitbake"
ML = {"torch", "transformers", "peft", "deepspeed", "accelerate", "safetensors"}
ML_ALLOWED = ("engine/", "use/chat.py", "use/serve.py", "use/export.py")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: p.relative_to(PKG).as_posix())
def test_import_rules(path: Path) -> None:
    rel = path.relative_to(PKG).as_posix()
    found = imports(path)
    if not rel.startswith("cli/"):
        assert "click" not in found, f"{rel} imports click"
    if rel != "git.py":
        assert "dulwich" not in found, f"{rel} imports dulwich"
    if not rel.startswith(ML_ALLOWED):
        assert not (found & ML), f"{rel} imports {found & ML}"


# Any import of a package in BLOCK fails loudly in the child process, installed or not.
BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCK = {block!r}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ImportError("forbidden import of " + name)
            return None
    sys.meta_path.insert(0, Block())
    """
)
PROBE = BLOCKER.format(block=ML) + textwrap.dedent(
    """
    from gitbake.cli.main import cli
    try:
        cli.main(args=sys.argv[1:], prog_name="git bake", standalone_mode=False)
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
        assert not loaded, loaded
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["validate"],
        ["target", "ls"],
        ["--version"],
        ["store", "du"],
        ["store", "fsck"],
        ["store", "gc", "--dry-run"],
        ["remote", "ls"],
        ["log"],
        ["tree"],
        ["show"],
        ["models"],
        ["jobs", "ls"],
        ["hooks", "ls"],
        ["checkout"],
        ["fetch"],
    ],
    ids=" ".join,
)
def test_read_only_commands_do_not_import_the_ml_stack(args: list[str], model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=model_repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


BAD_REVISION_PROBE = textwrap.dedent(
    """
    import sys
    BLOCK = {ml!r}
    from gitbake.cli.main import cli
    for args in {cases!r}:
        try:
            cli.main(args=args, prog_name="git bake")
        except SystemExit as exc:
            assert exc.code == 2, (args, exc.code)
        else:
            raise AssertionError(args)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    assert not loaded, loaded[:5]
    """
)


def test_model_commands_refuse_a_bad_revision_before_loading_the_ml_stack(model_repo: Path) -> None:
    """A typo in a revision is answered at once, not after seconds of importing torch."""
    cases = [
        ["chat", "nope", "-p", "hi"],
        ["diff", "nope"],
        ["eval", "nope"],
        ["serve", "nope", "--port", "1"],
        ["export", "nope", "--adapter", "out"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", BAD_REVISION_PROBE.format(ml=ML, cases=cases)],
        cwd=model_repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("unknown model address") == len(cases)


# A hook with nothing to do runs on every commit and checkout: its Python path (what a shim runs when it
# cannot answer in shell) must not pay for pydantic, the ML stack or click.
HOOK_PROBE = BLOCKER.format(block=ML | {"pydantic", "pydantic_core", "click"}) + textwrap.dedent(
    """
    import runpy
    sys.argv = ["git-bake", "hook", *sys.argv[1:]]
    try:
        runpy.run_module("gitbake", run_name="__main__")
    except SystemExit as exc:
        assert not exc.code, exc.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    assert not loaded, loaded
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["pre-commit"],
        ["post-commit"],
        ["post-checkout", "a", "b", "1"],
        ["post-checkout", "a", "b", "0"],
        ["post-merge", "0"],
        ["post-rewrite", "amend"],
    ],
    ids=" ".join,
)
def test_a_hook_with_nothing_to_do_imports_no_pydantic(args: list[str], model_repo: Path) -> None:
    (model_repo / "notes.txt").write_text("x\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=model_repo, check=True)
    if args[0] != "pre-commit":  # pre-commit sees notes.txt staged; the others a HEAD that did not touch input.yml
        subprocess.run(["git", "commit", "-qm", "notes"], cwd=model_repo, check=True)
    proc = subprocess.run(
        [sys.executable, "-c", HOOK_PROBE, *args],
        cwd=model_repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr  # a blocked import would be a warning on stderr
