"""The engine's environment knobs (engine/knobs.py): a number, the default when unset, and a usage error
naming the variable and the fix otherwise."""

from __future__ import annotations

import pytest

from gitbake.engine import knobs
from gitbake.errors import EXIT_USAGE, UsageError


def test_a_knob_reads_a_whole_number_or_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITBAKE_TEST_KNOB", raising=False)
    assert knobs.number("GITBAKE_TEST_KNOB", 64) == 64
    for raw, value in (("", 64), (" 128 ", 128), ("0", 0)):
        monkeypatch.setenv("GITBAKE_TEST_KNOB", raw)
        assert knobs.number("GITBAKE_TEST_KNOB", 64) == value


@pytest.mark.parametrize("raw", ["abc", "1.5", "-3", "0"])
def test_a_bad_knob_is_a_usage_error_with_the_fix(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("GITBAKE_TEST_KNOB", raw)
    with pytest.raises(UsageError) as info:
        knobs.number("GITBAKE_TEST_KNOB", 64, minimum=1)
    assert info.value.exit_code == EXIT_USAGE
    assert f"GITBAKE_TEST_KNOB={raw!r}" in info.value.message and "at least 1" in info.value.message
    assert info.value.hint is not None and "unset GITBAKE_TEST_KNOB" in info.value.hint


def test_a_switch_is_on_unless_set_to_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITBAKE_TEST_SWITCH", raising=False)
    assert knobs.switch("GITBAKE_TEST_SWITCH")
    for raw, on in (("", True), ("1", True), (" 0 ", False)):
        monkeypatch.setenv("GITBAKE_TEST_SWITCH", raw)
        assert knobs.switch("GITBAKE_TEST_SWITCH") is on


@pytest.mark.parametrize("raw", ["off", "false", "2", "no"])
def test_a_switch_that_is_neither_0_nor_1_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Before, anything but 0 kept the change on: `GITBAKE_PACKING=off` packed silently."""
    monkeypatch.setenv("GITBAKE_TEST_SWITCH", raw)
    with pytest.raises(UsageError) as info:
        knobs.switch("GITBAKE_TEST_SWITCH")
    assert info.value.exit_code == EXIT_USAGE
    assert f"GITBAKE_TEST_SWITCH={raw!r}" in info.value.message and "neither 0 nor 1" in info.value.message
    assert info.value.hint is not None and "GITBAKE_TEST_SWITCH=0" in info.value.hint
