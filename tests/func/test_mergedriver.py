"""The input.yml merge driver: cleared on both sides takes theirs; otherwise an ordinary text merge."""

from __future__ import annotations

from pathlib import Path

from gitbake.workflow.mergedriver import merge_input


def files(tmp_path: Path, base: str, ours: str, theirs: str) -> tuple[Path, Path, Path]:
    out = []
    for name, text in (("base", base), ("ours", ours), ("theirs", theirs)):
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out[0], out[1], out[2]


def test_both_cleared_takes_theirs(tmp_path: Path) -> None:
    b, o, t = files(tmp_path, "PROMPT:\n  a: 1\n", "# PROMPT:\n#   a: 2\n", "# PROMPT:\n#   a: 3\n")
    assert merge_input(b, o, t) == 0 and o.read_text() == "# PROMPT:\n#   a: 3\n"


def test_an_active_side_merges_as_text(tmp_path: Path) -> None:
    b, o, t = files(tmp_path, "x: 1\nPROMPT:\n  a: 1\n", "x: 2\nPROMPT:\n  a: 1\n", "x: 1\nPROMPT:\n  a: 3\n")
    assert merge_input(b, o, t) == 0 and o.read_text() == "x: 2\nPROMPT:\n  a: 3\n"
    b, o, t = files(tmp_path, "PROMPT:\n  a: 1\n", "PROMPT:\n  a: 2\n", "# PROMPT:\n#   a: 3\n")
    assert merge_input(b, o, t) == 1 and "<<<<<<<" in o.read_text()  # a real conflict stays one


def test_a_cleared_ours_gives_way_to_an_active_theirs(tmp_path: Path) -> None:
    """A rebase replaying a commit of input.yml onto a baked (cleared) base: the input that still has
    something to run is the result, not a conflict with the record of what was baked."""
    b, o, t = files(tmp_path, "# PROMPT:\n#   a: 1\n", "# PROMPT:\n#   a: 2\n", "PROMPT:\n  a: 3\n")
    assert merge_input(b, o, t) == 0 and o.read_text() == "PROMPT:\n  a: 3\n"
