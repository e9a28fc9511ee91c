"""`git bake target ls | show`: targets of input.yml and of every earlier commit, by plain or hashed name."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import YODA, bake_git, git, invoke, make_bgit_repo, record_bake


def test_empty(model_repo: Path) -> None:
    result = invoke("target", "ls")
    assert result.exit_code == 0 and "No targets yet" in result.stdout


def test_input_and_lineage_targets_newest_first(model_repo: Path) -> None:
    record_bake(
        model_repo, "old_target_aaaaaaaaaaaa", "a" * 64, {"generators": [{"type": "hardcoded", "questions": ["q"]}]}
    )
    record_bake(model_repo, "old_target_bbbbbbbbbbbb", "b" * 64, message="second bake")
    (model_repo / "input.yml").write_text(YODA)
    entries = json.loads(invoke("target", "ls", "--json").stdout)
    names = [e["name"] for e in entries]
    assert names[0].startswith("yoda_target_") and entries[0]["in_input"]
    assert names[1:] == ["old_target_bbbbbbbbbbbb", "old_target_aaaaaaaaaaaa"]
    assert invoke("target", "list").stdout == invoke("target", "ls").stdout
    # by plain name: the newest; by hashed name: exactly that one
    newest = json.loads(invoke("target", "show", "old_target", "--json").stdout)
    assert newest["name"] == "old_target_bbbbbbbbbbbb"
    older = invoke("target", "old_target_aaaaaaaaaaaa")  # bgit's form: `target NAME`
    assert older.exit_code == 0 and "a" * 64 in older.stdout and "questions" in older.stdout


def test_unknown_target_is_exit_2_with_known_names(model_repo: Path) -> None:
    record_bake(model_repo, "old_target_aaaaaaaaaaaa", "a" * 64)
    result = invoke("target", "show", "nope")
    assert result.exit_code == 2 and "old_target" in result.stderr


def test_bgit_names_stay_readable(tmp_path: Path) -> None:
    from gitbake.workflow.init import init

    root = make_bgit_repo(tmp_path / "b")
    init(root, download=False)
    git(root, "commit", "-q", "-m", "adopt gitbake")
    proc = bake_git(root, "target", "ls")
    assert proc.returncode == 0, proc.stderr
    assert "metacognitive_thinking_v3_c0f2b2c5599ad93e" in proc.stdout and "metacognitive_thinking_v3 " in proc.stdout
    assert "bgit cloud" in proc.stdout
    shown = json.loads(bake_git(root, "target", "show", "metacognitive_thinking_v3", "--json").stdout)
    assert shown["foreign"] and shown["config"]["num_traj_per_stimulus"] == 3
    # a bake may not train on data that only exists in Bread's cloud: said plainly
    (root / "input.yml").write_text("BAKE:\n  name: again\n  datasets:\n    - target: metacognitive_thinking_v3\n")
    proc = bake_git(root, "validate")
    assert proc.returncode == 2 and "Bread's cloud" in proc.stderr
