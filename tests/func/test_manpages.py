"""`git bake --help`: git runs `man git-bake`, which finds the page installed beside git-bake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gitbake.cli.manpages import write

REPO = Path(__file__).resolve().parents[2]


def test_git_bake_help_is_the_man_page(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {**os.environ, "MANPAGER": "cat", "GIT_PAGER": "cat", "MANWIDTH": "100", "PAGER": "cat"}
    env.pop("MANPATH", None)  # man derives its path from PATH: <bin>/../share/man
    assert Path(sys.executable).parent.joinpath("git-bake").exists()
    out = subprocess.run(["git", "bake", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "No manual entry" not in out.stderr
    assert "git-bake - Bake prompts into model weights" in out.stdout and "git-bake-status(1)" in out.stdout
    sub = subprocess.run(["git", "bake", "status", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert sub.returncode == 0 and "Usage: git bake status" in sub.stdout  # after a subcommand: click's help


def test_man_pages_are_current(tmp_path: Path) -> None:
    """The pages in man/man1 are what the help says now (regenerate: python -m gitbake.cli.manpages man/man1)."""
    fresh = {p.name: p.read_text() for p in write(tmp_path)}
    kept = {p.name: p.read_text() for p in sorted((REPO / "man" / "man1").glob("*.1"))}
    assert sorted(fresh) == sorted(kept), "man/man1 is stale: python -m gitbake.cli.manpages man/man1"
    stale = [name for name in fresh if fresh[name] != kept[name]]
    assert not stale, f"stale man pages {stale}: python -m gitbake.cli.manpages man/man1"
