"""`git bake diff`: behavioural difference between model versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import bake_git, bake_here


def test_diff_two_versions_and_against_the_parent(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    out = bake_here(root, "diff", baked_repo["first"], "HEAD", "--json", "--max-tokens", "8")
    assert out.exit_code == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["mean_kl"] > 0 and d["tokens"] > 0 and d["questions"]
    q = d["questions"][0]
    assert {"question", "kl", "answer_a", "answer_b"} <= set(q) and q["kl"] >= d["questions"][-1]["kl"]
    same = json.loads(bake_here(root, "diff", "HEAD", "HEAD", "--json", "--max-tokens", "8").stdout)
    assert same["mean_kl"] < 1e-6  # a model does not differ from itself: the measure can tell
    parent = json.loads(bake_here(root, "diff", "HEAD", "--json", "--max-tokens", "8").stdout)
    assert parent["b"]["adapters"] == parent["a"]["adapters"][:-1] and parent["mean_kl"] > 0
    qfile = tmp_path / "q.txt"
    qfile.write_text("Who are you?\n\nWhat is love?\n")
    custom = json.loads(
        bake_here(root, "diff", "HEAD", "--questions", str(qfile), "--json", "--max-tokens", "8").stdout
    )
    assert custom["asked"] == 2
    human = bake_here(root, "diff", "HEAD", "--max-tokens", "8", "--top", "1").stdout
    assert "mean KL" in human and " | " in human


def test_diff_bad_input(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    base = bake_git(root, "log", "--json")
    assert base.returncode == 0
    out = bake_git(root, "diff", "nope")
    assert out.returncode == 2 and "unknown model address" in out.stderr
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    out = bake_git(root, "diff", "HEAD", "--questions", str(bad))
    assert out.returncode == 2 and "q.jsonl:2" in out.stderr
    first = json.loads(base.stdout)[-1]["commit"]
    out = bake_git(root, "diff", f"{first}~1")
    assert out.returncode == 2 and "no parent" in out.stderr
