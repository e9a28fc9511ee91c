"""YAML with positions: every key and item knows its line; duplicates are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitbake.contract import yamlio
from gitbake.errors import ConfigError


def test_positions_of_keys_and_items() -> None:
    doc = yamlio.load("a: 1\nb:\n  - x: 2\n    y: [1, 2]\n", "f.yml")
    assert doc.data == {"a": 1, "b": [{"x": 2, "y": [1, 2]}]}
    assert doc.position(("b", 0, "y")) == (4, 5)
    # locations that are not in the data (pydantic's union tags, missing keys) fall back to the parent
    assert doc.position(("b", 0, "tag", "missing")) == (3, 5)


def test_anchors_and_merge_keys_work() -> None:
    doc = yamlio.load("base: &b {r: 8}\nother:\n  <<: *b\n  alpha: 16\n", "f.yml")
    assert doc.data["other"] == {"r": 8, "alpha": 16}


def test_duplicate_key_names_both_lines() -> None:
    with pytest.raises(ConfigError) as exc:
        yamlio.load("x:\n  a: 1\n  b: 2\n  a: 3\n", "f.yml")
    issue = exc.value.issues[0]
    assert (issue.line, issue.field) == (4, "x.a") and "line 2" in issue.message


def test_dotted() -> None:
    assert yamlio.dotted(("BAKE", "datasets", 0, "target")) == "BAKE.datasets[0].target"


def test_merge_keys_may_be_overridden() -> None:
    doc = yamlio.load("g: &g {type: persona, seed: 1, numq: 3}\nx:\n  <<: *g\n  seed: 2\n", "f.yml")
    assert doc.data["x"] == {"type": "persona", "seed": 2, "numq": 3}
    assert doc.position(("x", "seed")) == (4, 3)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a: &a [*a]\n", "cycle"),
        ("[" * 5000 + "]" * 5000 + "\n", "deep"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
            "expands",
        ),
    ],
    ids=["alias cycle", "deep nesting", "billion laughs"],
)
def test_hostile_yaml_is_refused_quickly(text: str, needle: str) -> None:
    import time

    t0 = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        yamlio.load(text, "f.yml")
    assert needle in exc.value.issues[0].message and time.monotonic() - t0 < 5


def test_a_directory_in_place_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "input.yml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        yamlio.read_text(tmp_path / "input.yml", "input.yml")


def test_a_string_bomb_is_refused_naming_its_anchor() -> None:
    """One 1.9 MB anchor referenced 2,000 times: 3.8 GB once built. The count of values is small, so only
    the expanded size gives it away; it is measured on the node graph, never built."""
    import resource
    import time

    big = "x" * 1_900_000
    text = (
        "PROMPT:\n  teacher:\n    messages:\n      - role: system\n        content: &big " + big + "\n"
        "TARGET:\n  generators:\n    - type: hardcoded\n      questions: [" + ", ".join(["*big"] * 2000) + "]\n"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        yamlio.load(text, "input.yml")
    issue = exc.value.issues[0]
    assert (issue.file, issue.line) == ("input.yml", 5)  # the anchor's line
    assert (
        "`&big`" in issue.message
        and "2,000 times" in issue.message
        and "expands to 3,800,000,000 bytes" in issue.message
    )
    assert exc.value.exit_code == 2 and time.monotonic() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing near 3.8 GB


def test_the_alias_budget_is_relative_to_the_file() -> None:
    # reuse well within the budget is fine: a prompt used in a few places
    doc = yamlio.load("a: &p " + "y" * 1000 + "\nb: [" + ", ".join(["*p"] * 50) + "]\n", "f.yml")
    assert len(doc.data["b"]) == 50
    assert yamlio.alias_expansion_limit(100) == yamlio.ALIAS_EXPANSION_FLOOR
    assert yamlio.alias_expansion_limit(1_000_000) == 8_000_000
    assert yamlio.alias_expansion_limit(4 * 1024 * 1024) == 16 * 1024 * 1024
    # nine uses of a 100 KB anchor in a 100 KB file: 9x its size through aliases, over the 8x budget
    anchor = "z" * 100_000
    uses = 9
    text = "a: &z " + anchor + "\nb: [" + ", ".join(["*z"] * uses) + "]\n"
    with pytest.raises(ConfigError, match="through its aliases"):
        yamlio.load(text, "f.yml")
