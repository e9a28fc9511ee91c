"""`git bake metrics`: the loss curve as a chart, JSON, CSV and PNG, with the eval beside it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from gitbake.use.metrics import chart

from helpers import bake_git


def test_metrics_of_head_and_by_name(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    data = json.loads(bake_git(root, "metrics", "--json").stdout)
    assert data["bake"].startswith("yoda_bake_") and data["metrics"] and "loss" in data["metrics"][0]
    assert data["eval"]["gap_closed"] is not None
    by_rev = json.loads(bake_git(root, "metrics", baked_repo["first"], "--json").stdout)
    assert by_rev["commit"] == baked_repo["first"] and by_rev["bake"] != data["bake"]
    by_name = json.loads(bake_git(root, "metrics", by_rev["bake"], "--json").stdout)
    assert by_name["bake"] == by_rev["bake"]
    human = bake_git(root, "metrics").stdout
    assert "gap_closed" in human and "|" in human and "step" in human
    rows = list(csv.DictReader(io.StringIO(bake_git(root, "metrics", "--csv").stdout)))
    assert rows and float(rows[0]["loss"]) == data["metrics"][0]["loss"]
    png = tmp_path / "loss.png"
    out = bake_git(root, "metrics", "--png", str(png))
    assert out.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_bad_input(baked_repo: dict[str, Any], model_repo: Path) -> None:
    out = bake_git(baked_repo["root"], "metrics", "no_such_bake")
    assert out.returncode == 2 and "yoda_bake_" in out.stderr  # names the bakes there are
    out = bake_git(model_repo, "metrics")
    assert out.returncode == 2 and "no bake" in out.stderr


def test_chart_draws_a_falling_curve() -> None:
    text = chart([1.0, 0.8, 0.5, 0.3, 0.2, 0.1], width=6, height=5)
    lines = text.splitlines()
    assert lines[0].strip().startswith("1.0000") and lines[0].rstrip().endswith("*")  # the first step is the highest
    assert "*" in lines[4] and chart([]) == "(no metrics recorded)"


def test_chart_survives_non_finite_and_flat_curves() -> None:
    nan, inf = float("nan"), float("inf")
    assert chart([0.3, nan, 0.2]).count("*") == 2
    assert "no finite" in chart([nan, inf])
    flat = chart([0.5, 0.5, 0.5], width=3, height=5).splitlines()
    assert "*" in flat[2] and float(flat[2].split("|")[0]) == 0.5  # drawn on the row labelled with its value
    from gitbake.use.metrics import finite_json

    assert finite_json({"a": [nan, 1.0], "b": inf}) == {"a": [None, 1.0], "b": None}
