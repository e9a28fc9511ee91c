"""One address for a model (repo/address.py): a revision, a bake name plain or hashed, the `.bread` model
name and `@checkpoint-STEP`, accepted the same way by show, checkout, export, chat, eval, diff and serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitbake.contract import bread as bread_mod
from gitbake.repo.address import resolve, split_checkpoint
from gitbake.repo.history import version_at
from gitbake.repo.repo import open_repo
from gitbake.use import serve

from helpers import bake_here, copy_baked, git


@pytest.fixture
def repo(baked_repo: dict[str, Any], tmp_path: Path) -> Path:
    return copy_baked(baked_repo, tmp_path)


def names(root: Path, rev: str) -> tuple[str, str]:
    v = version_at(root, rev)
    assert v.bake_name and v.model_name
    return v.bake_name, v.model_name


def test_every_kind_of_address_names_the_same_commit(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    hashed, model_name = names(repo, "HEAD")
    assert model_name.startswith("local/") and model_name.count("/") == 3
    first_hashed, first_model = names(repo, "HEAD~2")  # the first bake, under its own bake commit
    assert first_hashed != hashed and first_hashed.rsplit("_", 1)[0] == hashed.rsplit("_", 1)[0]
    cases = {
        "HEAD": ("revision", head),
        hashed: ("bake name", version_at(repo, "HEAD").commit),
        model_name: ("model name", version_at(repo, "HEAD").commit),
        first_hashed: ("bake name", version_at(repo, "HEAD~2").commit),
        first_model: ("model name", version_at(repo, "HEAD~2").commit),
        # the plain name is shared by both bakes: the newest on HEAD's line wins
        "yoda_bake": ("bake name", version_at(repo, "HEAD").commit),
    }
    for text, (kind, commit) in cases.items():
        address = resolve(repo, text)
        assert (address.kind, address.commit, address.checkpoint) == (kind, commit, None), text
        assert version_at(repo, text).chain == version_at(repo, commit).chain
    assert resolve(repo, f"{hashed}@checkpoint-4").checkpoint == 4
    assert split_checkpoint("HEAD@{1}") == ("HEAD@{1}", None)  # git's reflog syntax is not a checkpoint


def test_commands_take_bake_and_model_names(repo: Path, tmp_path: Path) -> None:
    first_hashed, first_model = names(repo, "HEAD~2")
    shown = bake_here(repo, "show", first_model, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["bake_name"] == first_hashed
    out = bake_here(repo, "checkout", first_hashed, "--to", str(tmp_path / "older"), "--json")
    assert out.exit_code == 0, out.stderr
    first_chain = bread_mod.parse(git(repo, "show", "HEAD~2:.bread")).parent_adapters
    adapters = json.loads((tmp_path / "older" / "model.json").read_text())["adapters"]
    assert [a["digest"] for a in adapters] == first_chain
    exported = bake_here(repo, "export", "yoda_bake", "--adapter", str(tmp_path / "ad"), "--json")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["commit"] == version_at(repo, "HEAD").commit


def test_unknown_address_says_what_was_tried(repo: Path) -> None:
    hashed, _ = names(repo, "HEAD")
    for cmd in (["show"], ["checkout"], ["export", "--adapter", "out"], ["chat", "-p", "hi"], ["diff"], ["eval"]):
        out = bake_here(repo, cmd[0], "nope_bake", *cmd[1:])
        assert out.exit_code == 2, (cmd, out.stderr)
        assert "unknown model address `nope_bake`" in out.stderr
        assert "a revision, a bake name" in out.stderr and "local/<repo>/<bake>/<step>" in out.stderr
        assert hashed in out.stderr  # what exists is listed
    bad = bake_here(repo, "show", "local/model/nope_bake/3")
    assert bad.exit_code == 2 and "tried it as a model name" in bad.stderr
    missing = bake_here(repo, "show", f"{hashed}@checkpoint-999")
    assert missing.exit_code == 2 and "no checkpoint at step 999" in missing.stderr


def test_a_plain_name_of_bakes_on_no_line_of_head_is_ambiguous(repo: Path) -> None:
    git(repo, "branch", "keep")  # both bakes stay reachable, from a branch that is not HEAD
    git(repo, "checkout", "-q", "--orphan", "empty")
    out = bake_here(repo, "show", "yoda_bake")
    assert out.exit_code == 2 and "several bakes are called yoda_bake" in out.stderr and "hashed name" in out.stderr


def test_serve_answers_to_every_name_of_a_served_model(repo: Path) -> None:
    hashed, model_name = names(repo, "HEAD")
    from gitbake.use.versions import resolve as resolve_version

    version = resolve_version(open_repo(repo), "HEAD")
    served = {version.name: serve.Served(version.name, version, None, None, None, serve._aliases(version))}
    for name in (hashed, "yoda_bake", model_name, "HEAD"):
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]}).encode()
        assert serve.parse_request(body, served)[0] is served[hashed], name
    with pytest.raises(serve.ApiError) as exc:
        serve.parse_request(
            json.dumps({"model": "other", "messages": [{"role": "user", "content": "hi"}]}).encode(), served
        )
    assert exc.value.status == 404
