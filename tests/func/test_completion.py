"""`git bake completion bash|zsh`: `git bake <TAB>` through git's completion hook, and `git-bake <TAB>`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import bake_git

GIT_COMPLETION = Path("/usr/share/bash-completion/completions/git")


def complete(script: Path, line: list[str], setup: str = "") -> list[str]:
    """COMPREPLY after sourcing `script` in a real bash and completing the last word of `line` the way
    git's completion calls an external command's function (`words`, `cword`, `__git_cmd_idx`)."""
    words = " ".join(f"'{w}'" for w in line)
    body = (
        f"{setup}source {script}\n"
        f"words=({words}); cword={len(line) - 1}; __git_cmd_idx=1\n"
        "_git_bake\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, check=True)
    return [w for w in out.stdout.splitlines() if w]


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    out = bake_git(tmp_path, "completion", "bash")
    assert out.returncode == 0, out.stderr
    assert "_GIT BAKE" not in out.stdout and "_GIT_BAKE_COMPLETE" in out.stdout  # a valid variable name
    path = tmp_path / "git-bake.bash"
    path.write_text(out.stdout)
    return path


def test_bash_completes_commands_options_and_choices(bash_script: Path) -> None:
    assert complete(bash_script, ["git", "bake", "st"]) == ["status", "stim", "store"]
    assert "checkout" in complete(bash_script, ["git", "bake", "ch"])
    assert "--json" in complete(bash_script, ["git", "bake", "status", "--"])
    assert complete(bash_script, ["git", "bake", "completion", ""]) == ["bash", "zsh"]


def test_bash_completion_through_gits_own_script(bash_script: Path) -> None:
    """The whole path a user's shell takes: git's completion finds `bake` and calls _git_bake."""
    assert GIT_COMPLETION.is_file(), "git's bash completion is part of the git package"
    body = (
        f"source {GIT_COMPLETION}\nsource {bash_script}\n"
        "COMP_WORDS=(git bake ch); COMP_CWORD=2; COMP_LINE='git bake ch'; COMP_POINT=${#COMP_LINE}\n"
        "__git_wrap__git_main\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["chat", "checkout"]


def test_zsh_script_defines_gits_hook(tmp_path: Path) -> None:
    out = bake_git(tmp_path, "completion", "zsh")
    assert out.returncode == 0 and "_git-bake()" in out.stdout and "compdef _git_bake_completion git-bake" in out.stdout
    bad = bake_git(tmp_path, "completion", "fish")
    assert bad.returncode == 2 and "'fish' is not one of 'bash', 'zsh'" in bad.stderr
