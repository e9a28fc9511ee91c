""".bread: bgit's INI read and written byte-compatibly; reading never writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitbake.contract import bread
from gitbake.errors import ConfigError

from helpers import BGIT


def test_bgit_file_round_trips_byte_for_byte() -> None:
    text = (BGIT / "bread").read_text()
    assert bread.dumps(bread.parse(text)) == text


def test_escaped_sections_and_json_values() -> None:
    b = bread.parse((BGIT / "bread").read_text())
    assert b.repo_name == "baked_thinking"
    assert set(b.prompts) == {"teacher", "student"}
    assert b.prompts["student"].name == "prompt_2e6b7a4f61149e18"
    assert b.target is not None and b.target.name == "metacognitive_thinking_v3_c0f2b2c5599ad93e"
    assert b.bake is not None and b.bake.name == "metacognitive_thinking_v1_0.01_372f9448560bf8b1"
    section = "RECIPE.BAKES.metacognitive_thinking_v1_0.01_372f9448560bf8b1"
    assert (
        b.get(section, "model_names")
        == '["neelsardana/baked_thinking/metacognitive_thinking_v1_0.01_372f9448560bf8b1/224"]'
    )
    assert b.is_foreign_parent and b.parent_adapters is None


def test_our_fields_and_adapters() -> None:
    b = bread.Bread()
    b.set("REPO", "name", "m")
    b.set("REPO", "base_model", "tiny")
    b.set("PARENT_MODEL", "model_name", "m/yoda_bake_0123456789ab")
    b.set("PARENT_MODEL", "adapters", '["' + "a" * 64 + '"]')
    again = bread.parse(bread.dumps(b))
    assert again.base_model == "tiny"
    assert again.parent_adapters == ["a" * 64] and not again.is_foreign_parent
    assert 'adapters="[\\"' in bread.dumps(b)  # quoted the way npm's ini quotes a value starting with [


def test_values_needing_quotes_survive() -> None:
    b = bread.Bread()
    for i, value in enumerate(
        ["a=b", " padded ", "semi;colon", "hash#tag", '"quoted"', "[list", "back\\slash", "é", "\\;", "a\\#b"]
    ):
        b.set("X.y.z", f"k{i}", value)
    b.set("X.y.z", "key=with=equals", "v")
    again = bread.parse(bread.dumps(b))
    assert again.sections == b.sections
    assert "[X\\.y\\.z]" in bread.dumps(b)


def test_comments_and_blank_lines_are_ignored() -> None:
    b = bread.parse("; c\n# c\n\n[REPO]\nname = spaced ; trailing comment\nflag\n")
    assert b.get("REPO", "name") == "spaced" and b.get("REPO", "flag") == "true"


def test_write_twice_same_bytes_and_read_never_writes(tmp_path: Path) -> None:
    b = bread.parse((BGIT / "bread").read_text())
    assert bread.write(tmp_path, b) is True
    first = (tmp_path / ".bread").read_bytes()
    os.utime(tmp_path / ".bread", ns=(1, 1))
    assert bread.write(tmp_path, b) is False  # unchanged: not rewritten
    assert (tmp_path / ".bread").stat().st_mtime_ns == 1
    bread.read(tmp_path)
    assert (tmp_path / ".bread").stat().st_mtime_ns == 1
    assert (tmp_path / ".bread").read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("raw", ["foo", "[", "5", '["not-a-digest"]', "[1,2]"])
def test_malformed_adapters_are_a_located_error(raw: str) -> None:
    from gitbake.errors import ConfigError

    b = bread.parse(f"[REPO]\nname=m\n[PARENT_MODEL]\nadapters={raw}\n")
    with pytest.raises(ConfigError) as exc:
        _ = b.parent_adapters
    issue = exc.value.issues[0]
    assert (issue.file, issue.line, issue.field) == (".bread", 4, "PARENT_MODEL.adapters") and exc.value.exit_code == 2


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"[REPO]\nname=m\x00\n", "binary"),
        (b"[REPO]\nname=\xff\n", "UTF-8"),
        (b"[REPO]\n" + b"x=y\n" * 1_100_000, "limit"),
    ],
    ids=["NUL byte", "not UTF-8", "too big"],
)
def test_a_broken_bread_gets_its_own_hint_not_input_yml_s(raw: bytes, problem: str, tmp_path: Path) -> None:
    from gitbake.errors import ConfigError

    (tmp_path / ".bread").write_bytes(raw)
    with pytest.raises(ConfigError) as exc:
        bread.read(tmp_path)
    issue = exc.value.issues[0]
    assert issue.file == ".bread" and problem in issue.message
    # gitbake writes .bread: the fix is to restore it from git, not input.yml's "from_file generator" or "YAML text"
    assert issue.fix is not None and "git checkout HEAD -- .bread" in issue.fix
    assert "from_file" not in issue.fix and "YAML" not in issue.fix


def test_a_line_without_a_key_says_to_restore_the_file() -> None:
    from gitbake.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        bread.parse("[REPO]\n=m\n")
    assert exc.value.issues[0].fix is not None and "git checkout HEAD -- .bread" in exc.value.issues[0].fix


COMMIT_A = "a" * 40


@pytest.mark.parametrize(
    ("base", "revision", "pinned"),
    [
        ("acme/chat", COMMIT_A, f"acme/chat@{COMMIT_A}"),  # main, resolved when it was downloaded
        ("acme/chat@v2", COMMIT_A, f"acme/chat@{COMMIT_A}"),  # a tag or branch: the commit it resolved to
        (f"acme/chat@{'b' * 40}", COMMIT_A, f"acme/chat@{'b' * 40}"),  # a commit named by the user stays
        ("acme/chat", None, "acme/chat"),  # not pinned yet (init --no-download): the cache decides
        ("tiny", COMMIT_A, "tiny"),  # only a hub id is pinned
        ("/models/local", COMMIT_A, "/models/local"),
    ],
)
def test_the_base_model_to_load_is_the_pinned_commit(base: str, revision: str | None, pinned: str) -> None:
    b = bread.Bread({"REPO": {"base_model": base, **({"base_revision": revision} if revision else {})}})
    assert b.base_model == base  # as the user wrote it
    assert b.pinned_base_model == pinned


def test_a_base_revision_that_is_not_a_commit_is_a_located_error() -> None:
    b = bread.parse("[REPO]\nname=m\nbase_model=acme/chat\nbase_revision=main\n")
    with pytest.raises(ConfigError) as info:
        _ = b.pinned_base_model
    issue = info.value.issues[0]
    assert (issue.file, issue.line, issue.field) == (".bread", 4, "REPO.base_revision")
    assert "40-hex commit" in issue.message and "git checkout -- .bread" in (issue.fix or "")
