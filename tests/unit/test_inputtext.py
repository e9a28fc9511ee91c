"""input.yml text helpers (gitbake.contract.inputtext): the one place its section headers are matched."""

from __future__ import annotations

from gitbake.contract import config, inputtext


def test_sections_are_the_contracts_sections() -> None:
    assert inputtext.SECTIONS == config.SECTIONS


def test_comment_out_leaves_no_live_section() -> None:
    text = "# BAKE: {name: x}\n#PROMPT:\nTARGET :\n  a: 1\nother: 1\n  BAKE: nested\n"
    assert inputtext.has_sections(text.encode())
    assert inputtext.commented_sections(text) == ["PROMPT", "BAKE"]
    cleared = inputtext.comment_out(text)
    assert not inputtext.has_sections(cleared.encode())
    assert inputtext.commented_sections(cleared) == ["PROMPT", "TARGET", "BAKE"]
    assert "other: 1\n  BAKE: nested\n" in cleared  # outside the blocks: untouched
