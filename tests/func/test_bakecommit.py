"""The bake commit's compare-and-swap: when the branch may move and when the result waits in refs/bake/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gitbake.repo import pendingrefs
from gitbake.workflow import bakecommit

from helpers import git


def commit_file(root: Path, name: str, text: str, msg: str) -> str:
    (root / name).write_text(text)
    git(root, "add", name)
    git(root, "commit", "-qm", msg)
    return git(root, "rev-parse", "HEAD").strip()


FILES = {
    ".bread": b"# Bread configuration mapping\n[REPO]\nname=x\n",
    "recipe.yml": b"steps: []\n",
    "input.yml": b"# PROMPT:\n",
}


def test_the_branch_moves_when_it_still_points_at_the_trigger(model_repo: Path) -> None:
    trigger = git(model_repo, "rev-parse", "HEAD").strip()
    r = bakecommit.make_commit(model_repo, trigger, "refs/heads/main", dict(FILES), "bake: x\n")
    assert r.ref == "refs/heads/main" and r.pending is None
    assert git(model_repo, "rev-parse", "HEAD").strip() == r.commit and git(model_repo, "status", "--porcelain") == ""
    assert git(model_repo, "rev-parse", f"{r.commit}^").strip() == trigger


def test_a_moved_branch_keeps_the_result_aside(model_repo: Path) -> None:
    trigger = git(model_repo, "rev-parse", "HEAD").strip()
    mine = commit_file(model_repo, "notes.md", "x\n", "notes")
    r = bakecommit.make_commit(model_repo, trigger, "refs/heads/main", dict(FILES), "bake: x\n")
    assert r.ref is None and r.pending == f"refs/bake/main/{trigger[:12]}"
    assert git(model_repo, "rev-parse", "HEAD").strip() == mine
    assert pendingrefs.pending(model_repo, "refs/heads/main") == {r.pending: r.commit}


def test_no_move_during_a_merge_in_progress(model_repo: Path) -> None:
    base = git(model_repo, "rev-parse", "HEAD").strip()
    git(model_repo, "checkout", "-q", "-b", "other")
    commit_file(model_repo, "f.txt", "theirs\n", "theirs")
    git(model_repo, "checkout", "-q", "main")
    trigger = commit_file(model_repo, "f.txt", "ours\n", "ours")
    proc = subprocess.run(["git", "merge", "other"], cwd=model_repo, capture_output=True, text=True)
    assert proc.returncode != 0 and (model_repo / ".git/MERGE_HEAD").exists()  # a conflicted merge in progress
    r = bakecommit.make_commit(model_repo, trigger, "refs/heads/main", dict(FILES), "bake: x\n")
    assert r.ref is None and r.pending and git(model_repo, "rev-parse", "main").strip() == trigger
    assert base != trigger


def test_a_detached_bake_does_not_move_a_branch_checked_out_since(model_repo: Path) -> None:
    trigger = git(model_repo, "rev-parse", "HEAD").strip()
    git(model_repo, "checkout", "-q", "--detach")
    git(model_repo, "checkout", "-q", "-b", "exp")
    r = bakecommit.make_commit(model_repo, trigger, None, dict(FILES), "bake: x\n")
    assert r.ref is None and r.pending == f"refs/bake/HEAD/{trigger[:12]}"
    assert git(model_repo, "symbolic-ref", "HEAD").strip() == "refs/heads/exp"


def test_pending_results_of_one_branch_are_not_another_branchs(model_repo: Path) -> None:
    head = git(model_repo, "rev-parse", "HEAD").strip()
    git(model_repo, "update-ref", "refs/bake/f/x/0123456789ab", head)
    git(model_repo, "update-ref", "refs/bake/f/0123456789ab", head)
    assert list(pendingrefs.pending(model_repo, "refs/heads/f")) == ["refs/bake/f/0123456789ab"]
    assert list(pendingrefs.pending(model_repo, "refs/heads/f/x")) == ["refs/bake/f/x/0123456789ab"]


def test_a_bake_commit_never_names_an_object_the_store_lacks(model_repo: Path) -> None:
    """The check runs before the compare-and-swap: a result that vanished from the store (deleted during
    the bake) stops the commit, by name; what the trigger already named is not checked again."""
    import json

    import pytest

    from gitbake.errors import StoreCorruptError
    from gitbake.repo.repo import open_repo

    store = open_repo(model_repo).store
    here = model_repo.parent / "adapter"
    here.mkdir()
    (here / "adapter_model.safetensors").write_bytes(b"weights")
    present = store.put_dir(here, {"kind": "adapter"})
    gone = "e" * 64
    trigger = git(model_repo, "rev-parse", "HEAD").strip()

    def bread_naming(chain: list[str]) -> dict[str, bytes]:
        text = FILES[".bread"].decode() + f"[PARENT_MODEL]\nadapters={json.dumps(chain)}\n"
        return {**FILES, ".bread": text.encode()}

    with pytest.raises(StoreCorruptError, match=gone):
        bakecommit.make_commit(model_repo, trigger, "refs/heads/main", bread_naming([present, gone]), "bake: x\n")
    assert (
        git(model_repo, "rev-parse", "HEAD").strip() == trigger and git(model_repo, "for-each-ref", "refs/bake/") == ""
    )

    # a manifest that is here but lost one of its files is refused too
    weights = next(iter(store.read_manifest(present).files.values())).digest
    lost = store.object_path(weights)
    data = lost.read_bytes()
    lost.unlink()
    with pytest.raises(StoreCorruptError, match=weights):
        bakecommit.make_commit(model_repo, trigger, "refs/heads/main", bread_naming([present]), "bake: x\n")
    store.put_bytes(data)
    r = bakecommit.make_commit(model_repo, trigger, "refs/heads/main", bread_naming([present]), "bake: x\n")
    assert r.ref == "refs/heads/main"


def test_a_bake_commit_never_records_questions_or_answers_as_none(model_repo: Path) -> None:
    """When the stim or rollout key was gone at commit time, compose wrote `outputs: null`: no digest,
    so the presence check passed and the commit recorded its questions and answers as None. Such a
    commit is refused (exit 4, by step) before the compare-and-swap; one that records them goes through."""
    import pytest

    from gitbake.contract import recipe as recipe_mod
    from gitbake.errors import StoreCorruptError
    from gitbake.repo.repo import open_repo

    store = open_repo(model_repo).store
    trigger = git(model_repo, "rev-parse", "HEAD").strip()
    stim_key, rollout_key = "1" * 64, "2" * 64

    def files_with(stim: str | None, rollout: str | None) -> dict[str, bytes]:
        r = recipe_mod.new("tiny")
        for n, (action, key, out) in enumerate(
            [("run_stim", stim_key, stim), ("run_rollout", rollout_key, rollout)], 1
        ):
            r.steps.append(
                recipe_mod.Step(
                    step=n,
                    action=action,
                    resource_type="target",
                    resource_name="yoda_target",
                    key=key,
                    outputs={"manifest": out} if out else None,
                )
            )
        return {**FILES, "recipe.yml": recipe_mod.dumps(r).encode()}

    with pytest.raises(StoreCorruptError) as err:
        bakecommit.make_commit(model_repo, trigger, "refs/heads/main", files_with(None, None), "bake: x\n")
    assert err.value.exit_code == 4
    assert (
        "step 1 run_stim of yoda_target" in err.value.message
        and "step 2 run_rollout of yoda_target" in err.value.message
    )
    assert "git bake run stim rollout" in (err.value.hint or "")
    assert (
        git(model_repo, "rev-parse", "HEAD").strip() == trigger and git(model_repo, "for-each-ref", "refs/bake/") == ""
    )

    questions, answers = store.put_bytes(b'{"q": 1}\n'), store.put_bytes(b'{"a": 1}\n')
    r = bakecommit.make_commit(model_repo, trigger, "refs/heads/main", files_with(questions, answers), "bake: x\n")
    assert r.ref == "refs/heads/main"
