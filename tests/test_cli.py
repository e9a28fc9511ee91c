"""The command line as users meet it: `git bake` found on PATH, help with examples, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gitbake import __version__
from gitbake.cli import cli
from helpers import YODA, bake_git, invoke

COMMANDS = [["init"], ["validate"], ["status"], ["target"], ["target", "ls"], ["target", "show"]]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    for flag in ("-h", "--help"):
        result = invoke(*command, flag)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    text = invoke(*command, "-h").stdout
    assert "Example" in text or command[-1] in ("ls", "show")


def test_every_registered_command_is_covered() -> None:
    import click

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, cmd in group.commands.items():
            out.append(prefix + [name])
            if isinstance(cmd, click.Group):
                out += walk(cmd, prefix + [name])
        return out

    registered = {" ".join(c) for c in walk(cli, []) if c != ["target", "list"]}
    assert registered == {" ".join(c) for c in COMMANDS}


def test_unknown_command_and_option_exit_2() -> None:
    assert invoke("bogus").exit_code == 2
    assert invoke("status", "--bogus").exit_code == 2


def test_real_git_bake_external_command(tmp_path: Path) -> None:
    proc = subprocess.run(["git", "bake", "init", "m", "--base-model", "tiny"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "m"
    (root / "input.yml").write_text(YODA)
    proc = bake_git(root, "status")
    assert proc.returncode == 0 and "yoda_bake_" in proc.stdout
    (root / "input.yml").write_text("BAKE:\n  name: b\n  epoch: 3\n")
    proc = bake_git(root, "validate")
    assert proc.returncode == 2 and "input.yml:3:3: BAKE.epoch: unknown field" in proc.stderr
    assert "did you mean `epochs`?" in proc.stderr
    proc = bake_git(tmp_path, "status")
    assert proc.returncode == 3


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gitbake", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout
