"""git.py: repository discovery and history reads."""

from __future__ import annotations

from pathlib import Path

from gitbake import git as g

from helpers import git


def test_find_root_walks_up_and_handles_worktrees(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a" / "b").mkdir(parents=True)
    assert g.find_root(root / "a" / "b") == root.resolve()
    (root / "f").write_text("x")
    git(root, "add", "f")
    git(root, "commit", "-q", "-m", "c")
    git(root, "worktree", "add", "-q", str(tmp_path / "wt"))
    assert g.find_root(tmp_path / "wt") == (tmp_path / "wt").resolve()
    assert g.common_dir(tmp_path / "wt") == (root / ".git").resolve()
    assert g.find_root(Path("/")) is None


def test_history_yields_each_version_once_newest_first(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    git(root, "init", "-q")
    for i, content in enumerate(["v1", "v2", "v2", "v3"]):
        (root / "f.txt").write_text(content)
        (root / "other").write_text(str(i))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"commit {i}")
    versions = list(g.history(root, ["f.txt"]))
    assert [v.data for v in versions] == [b"v3", b"v2", b"v1"]
    assert versions[0].summary == "commit 3"
    assert g.show(root, "HEAD~1", "f.txt") == b"v2" and g.show(root, "HEAD", "missing") is None


def test_history_of_empty_repository(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert list(g.history(tmp_path, ["f"])) == [] and g.head(tmp_path) is None


def test_hooks_dir_respects_core_hookspath(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert g.hooks_dir(tmp_path) == (tmp_path / ".git" / "hooks").resolve()
    git(tmp_path, "config", "core.hooksPath", ".githooks")
    assert g.hooks_dir(tmp_path) == tmp_path / ".githooks"


def test_current_branch_reads_head_as_git_does(tmp_path: Path) -> None:
    """One reading of the current branch, from HEAD's file: unborn, in a worktree, detached."""
    root = tmp_path / "r"
    root.mkdir()
    git(root, "init", "-q", "-b", "work")
    assert g.symbolic_head(root) == "refs/heads/work" and g.current_branch(root) == "work"  # unborn
    (root / "f").write_text("x")
    git(root, "add", "f")
    git(root, "commit", "-q", "-m", "c")
    git(root, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    assert g.current_branch(tmp_path / "wt") == "side" and g.current_branch(root) == "work"
    git(root, "checkout", "-q", "--detach")
    assert g.symbolic_head(root) is None and g.current_branch(root) is None
