"""The one destination guard (gitbake.destination): a command that replaces a directory replaces only one
gitbake wrote, never the repository, its store, the cwd, HOME, / or a parent of them, and never a symlink.

Issue 14, case 1: `checkout --to "$PWD"` in a repository holding a `model.json` deleted the work tree, .git
and the store; `export --force` into a folder with a `chain.json` deleted the user's other files there; an
export into a symlink replaced the link with a directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from gitbake import destination
from gitbake.errors import UsageError

from helpers import bake_git, bake_here, copy_baked, git


def _user_dir(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("{}\n" if name.endswith(".json") else "the user's own words\n")
    return path


# -- the guard itself (fast: no repository, no model) --------------------------------------------------


def test_guard_accepts_new_empty_and_marked_directories(tmp_path: Path) -> None:
    assert destination.check(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    destination.check(tmp_path / "empty")
    marked = _user_dir(tmp_path / "marked", "model.json")
    destination.write_marker(marked, "model")
    destination.check(marked)
    with pytest.raises(UsageError, match="earlier gitbake output") as err:
        destination.check(marked, replace=False)
    assert "--force" in err.value.render()


@pytest.mark.parametrize("decoy", ["model.json", "chain.json", "gitbake.json"])
def test_guard_refuses_a_plain_model_json_or_chain_json(tmp_path: Path, decoy: str) -> None:
    d = _user_dir(tmp_path / "proj", decoy, "notes.txt")
    with pytest.raises(UsageError, match="not written by gitbake") as err:
        destination.check(d)
    assert err.value.exit_code == 2 and (d / "notes.txt").exists()
    assert f"it holds {decoy}: if an older gitbake wrote it, delete it yourself" in err.value.render()


def test_guard_refuses_a_forged_or_linked_marker(tmp_path: Path) -> None:
    forged = _user_dir(tmp_path / "forged", "notes.txt")
    (forged / destination.MARKER).write_text("I am gitbake, honest\n")
    with pytest.raises(UsageError, match="not written by gitbake"):
        destination.check(forged)
    real = _user_dir(tmp_path / "real")
    destination.write_marker(real, "model")
    linked = _user_dir(tmp_path / "linked", "notes.txt")
    (linked / destination.MARKER).symlink_to(real / destination.MARKER)
    with pytest.raises(UsageError, match="not written by gitbake"):
        destination.check(linked)


def test_guard_never_replaces_protected_places_even_when_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _user_dir(tmp_path / "work" / "repo")
    destination.write_marker(repo, "model")  # a marker planted in the repository changes nothing
    for place in (repo, repo.parent, tmp_path):
        with pytest.raises(UsageError, match="never replaces"):
            destination.check(place, protected=[repo])
    monkeypatch.chdir(repo)
    with pytest.raises(UsageError, match="never replaces"):
        destination.check(Path("."))
    with pytest.raises(UsageError, match="never replaces"):
        destination.check(Path.home())
    with pytest.raises(UsageError, match="never replaces"):
        destination.check(Path("/"))


def test_guard_refuses_symlinks_and_files(tmp_path: Path) -> None:
    target = _user_dir(tmp_path / "target")
    destination.write_marker(target, "model")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link") as err:
        destination.check(link)
    assert str(target) in (err.value.hint or "")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        destination.check(tmp_path / "file")


# -- checkout --to, through the real command ----------------------------------------------------------


def test_checkout_to_the_repository_itself_deletes_nothing(model_repo: Path) -> None:
    # the reproducer, word for word: a model.json in the work tree made the repository "ours"
    (model_repo / "model.json").write_text("{}")
    out = bake_git(model_repo, "checkout", "--to", str(model_repo))
    assert out.returncode == 2, out.stderr
    assert "never replaces" in out.stderr and "Traceback" not in out.stderr
    assert (model_repo / ".git").is_dir() and (model_repo / ".bread").is_file() and (model_repo / "input.yml").is_file()
    assert git(model_repo, "status", "--porcelain").strip() == "?? model.json"


def test_checkout_to_a_user_folder_with_model_json_keeps_it(model_repo: Path, tmp_path: Path) -> None:
    proj = _user_dir(tmp_path / "home-proj", "model.json", "notes.txt")
    out = bake_here(model_repo, "checkout", "--to", str(proj))
    assert out.exit_code == 2 and "not written by gitbake" in out.stderr
    assert sorted(p.name for p in proj.iterdir()) == ["model.json", "notes.txt"]


def test_checkout_to_protected_places_is_refused(model_repo: Path, tmp_path: Path) -> None:
    from gitbake.repo.repo import open_repo

    repo = open_repo(model_repo)
    for place in (model_repo.parent, model_repo / ".git", repo.store.root, repo.store.root / "objects", Path.home()):
        before = sorted(p.name for p in place.iterdir()) if place.is_dir() else None
        out = bake_here(model_repo, "checkout", "--to", str(place))
        assert out.exit_code == 2, (place, out.stderr)
        assert (sorted(p.name for p in place.iterdir()) if place.is_dir() else None) == before


def test_checkout_to_a_symlink_keeps_the_link(model_repo: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert bake_here(model_repo, "checkout", "--to", str(fresh)).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(fresh)
    out = bake_here(model_repo, "checkout", "--to", str(link))
    assert out.exit_code == 2 and "symbolic link" in out.stderr and link.is_symlink()
    # following the link explicitly is the way: the target is a directory gitbake wrote
    assert bake_here(model_repo, "checkout", "--to", os.path.realpath(link)).exit_code == 0


def test_checkout_replaces_what_it_wrote_and_a_legacy_bake_model(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    fresh = tmp_path / "fresh"
    assert bake_here(root, "checkout", "HEAD", "--to", str(fresh)).exit_code == 0
    assert destination.is_managed(fresh)
    assert bake_here(root, "checkout", baked_repo["first"], "--to", str(fresh)).exit_code == 0
    assert len(json.loads((fresh / "model.json").read_text())["adapters"]) == 1
    # .bake/model as an earlier gitbake left it (model.json, no marker) is still the repository's own
    (root / ".bake" / "model" / destination.MARKER).unlink()
    assert bake_here(root, "checkout", baked_repo["first"]).exit_code == 0
    assert destination.is_managed(root / ".bake" / "model")
    assert len(json.loads((root / ".bake" / "model" / "model.json").read_text())["adapters"]) == 1


# -- export, through the real command -----------------------------------------------------------------


def test_export_force_never_deletes_a_users_chain_json_folder(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    folder = _user_dir(tmp_path / "models", "chain.json", "notes.txt", "gitbake.json")
    out = bake_git(root, "export", "HEAD", "--adapter", str(folder), "--force")
    assert out.returncode == 2 and "not written by gitbake" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["chain.json", "gitbake.json", "notes.txt"]


def test_export_into_a_symlink_keeps_the_link(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    real = tmp_path / "real"
    assert bake_here(root, "export", "HEAD", "--adapter", str(real)).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    out = bake_here(root, "export", "HEAD", "--adapter", str(link), "--force")
    assert out.exit_code == 2 and "symbolic link" in out.stderr
    assert link.is_symlink() and (real / "chain.json").is_file()
    shutil.rmtree(real)


def test_a_linked_dot_bake_never_makes_a_foreign_model_dir_ours(model_repo: Path, tmp_path: Path) -> None:
    elsewhere = _user_dir(tmp_path / "elsewhere" / "model", "model.json", "notes.txt")
    shutil.rmtree(model_repo / ".bake", ignore_errors=True)
    (model_repo / ".bake").symlink_to(elsewhere.parent)
    out = bake_here(model_repo, "checkout")
    assert out.exit_code == 2 and (elsewhere / "notes.txt").exists()
