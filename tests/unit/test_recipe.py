"""recipe.yml: bgit's recreation plan loads as it is; ours writes deterministically; reads never write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitbake.contract import recipe
from gitbake.errors import ConfigError

from helpers import BGIT


def test_bgit_recipe_loads_with_its_fields() -> None:
    r = recipe.parse((BGIT / "recipe.yml").read_text())
    assert r.base_model == "Qwen/Qwen3-32B" and r.total_steps == 7
    assert [s.action for s in r.steps][:3] == ["create_prompt", "create_prompt", "create_target"]
    assert r.targets_defined()[0].resource_name == "metacognitive_thinking_v3_c0f2b2c5599ad93e"
    assert r.resources.bakes[0].model_names == [
        "neelsardana/baked_thinking/metacognitive_thinking_v1_0.01_372f9448560bf8b1/224"
    ]
    assert r.adapters == []  # baked in the cloud: no local adapter


def test_ours_round_trips_with_keys_digests_and_metrics(tmp_path: Path) -> None:
    r = recipe.new("tiny")
    r.steps.append(
        recipe.Step(
            step=1,
            action="create_target",
            resource_type="target",
            resource_name="t_0123456789ab",
            config={"generators": []},
            key="a" * 64,
            outputs={"stim": "b" * 64},
        )
    )
    r.resources.targets.append("t_0123456789ab")
    r.resources.bakes.append(
        recipe.BakeResource(
            bake_name="b_0123456789ab",
            key="c" * 64,
            adapter="d" * 64,
            metrics={"loss": 0.01, "gap_closed": 0.9, "time_s": 12.5},
            future_field=1,
        )
    )
    text = recipe.dumps(r)
    again = recipe.parse(text)
    assert recipe.dumps(again) == text
    assert again.adapters == ["d" * 64]
    assert again.resources.bakes[0].model_extra == {"future_field": 1}  # newer fields are kept
    assert again.total_steps == 1


def test_read_never_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yml"
    path.write_text((BGIT / "recipe.yml").read_text())
    os.utime(path, ns=(1, 1))
    recipe.read(tmp_path)
    assert path.stat().st_mtime_ns == 1 and path.read_text() == (BGIT / "recipe.yml").read_text()


def test_damaged_recipe_is_a_located_error() -> None:
    with pytest.raises(ConfigError) as exc:
        recipe.parse("steps:\n  - step: one\n    action: run_bake\n")
    assert exc.value.issues[0].line == 2 and "git checkout -- recipe.yml" in (exc.value.issues[0].fix or "")


@pytest.mark.parametrize("raw", [b"steps: []\x00\n", b"steps: [\xff]\n"], ids=["NUL byte", "not UTF-8"])
def test_a_broken_recipe_gets_its_own_hint_not_input_yml_s(raw: bytes, tmp_path: Path) -> None:
    (tmp_path / "recipe.yml").write_bytes(raw)
    with pytest.raises(ConfigError) as exc:
        recipe.read(tmp_path)
    issue = exc.value.issues[0]
    assert issue.file == "recipe.yml" and issue.fix is not None and "git checkout HEAD -- recipe.yml" in issue.fix
    assert "YAML" not in issue.fix and "from_file" not in issue.fix
