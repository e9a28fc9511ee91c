"""A lineage file damaged in a commit (while the working tree's copy is good), and a bake commit whose
questions / answers were lost: every command names `<rev>:<file>` with a fix that works (exit 2), no
traceback, and `store fsck` reports HEAD's (exit 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gitbake.contract import recipe as recipe_mod

from helpers import bake_here, copy_baked, git


def test_fsck_flags_a_head_bake_that_records_no_questions_or_answers(
    baked_repo: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_baked(baked_repo, tmp_path)
    recipe = recipe_mod.read(root)
    assert recipe is not None
    lost = [s for s in recipe.steps if s.action in ("run_stim", "run_rollout")][-2:]
    assert [s.action for s in lost] == ["run_stim", "run_rollout"] and all(s.outputs for s in lost)
    for step in lost:
        step.outputs = None  # what a bake commit recorded when gc took its stage keys mid-bake
    recipe_mod.write(root, recipe)
    git(root, "commit", "-qam", "lost data", "--no-verify")

    result = bake_here(root, "store", "fsck")
    assert result.exit_code == 4 and "store OK" not in result.stdout
    assert (
        "damaged: HEAD's recipe.yml" in result.stderr and "run_stim" in result.stderr and "run_rollout" in result.stderr
    )
    report = json.loads(bake_here(root, "store", "fsck", "--json").stdout)
    assert set(report["head_problems"]) == {"HEAD's recipe.yml"} and not report["ok"]


def test_a_damaged_bread_in_a_commit_is_named_everywhere(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    with (root / ".bread").open("ab") as fh:
        fh.write(b"\xff")
    git(root, "commit", "-qam", "damaged", "--no-verify")
    git(root, "checkout", "HEAD~1", "--", ".bread")  # the working tree's copy is good again

    for args in (["checkout", "HEAD"], ["checkout", "--to", str(tmp_path / "out"), "HEAD"], ["diff", "HEAD~1", "HEAD"]):
        result = bake_here(root, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "HEAD:.bread" in result.stderr and "not valid UTF-8" in result.stderr, (args, result.stderr)
        assert "git show HEAD~1:.bread > .bread" in result.stderr and "has no .bread" not in result.stderr
    assert not (tmp_path / "out").exists()

    fsck = bake_here(root, "store", "fsck")
    assert fsck.exit_code == 4 and "damaged: HEAD's .bread" in fsck.stderr and "store OK" not in fsck.stdout

    # the history walkers skip the damaged version the same way, and still show the rest
    log = bake_here(root, "log", "--json")
    assert log.exit_code == 0 and baked_repo["second"] in log.stdout and baked_repo["first"] in log.stdout


def test_a_damaged_recipe_at_head_is_named_by_fsck(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    (root / "recipe.yml").write_text("steps: [\n")
    git(root, "commit", "-qam", "damaged", "--no-verify")
    result = bake_here(root, "store", "fsck")
    assert (
        result.exit_code == 4 and "damaged: HEAD's recipe.yml" in result.stderr and "HEAD:recipe.yml" in result.stderr
    )
