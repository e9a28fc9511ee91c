"""The one reporter: lines now, notes for the result, progress with a sink (gitbake/reporter.py)."""

from __future__ import annotations

import io
from typing import Any

from gitbake.reporter import Reporter


def test_say_writes_a_prefixed_line_to_its_stream() -> None:
    out = io.StringIO()
    Reporter(out, prefix="gitbake: ").say("baking")
    assert out.getvalue() == "gitbake: baking\n"


def test_a_reporter_without_a_stream_writes_to_stderr_as_it_is_when_it_writes(capsys: Any) -> None:
    reporter = Reporter()  # made before pytest's capture of this test swapped sys.stderr in some runners
    reporter.say("hello")
    assert capsys.readouterr().err == "hello\n"


def test_notes_are_collected_per_block_and_do_not_leak_outwards() -> None:
    reporter = Reporter(io.StringIO())
    reporter.note("run-level")
    with reporter.collecting() as outer:
        reporter.note("stage")
        with reporter.collecting() as inner:
            reporter.note("sub-stage")
        reporter.note("stage again")
    assert inner == ["sub-stage"]
    assert outer == ["stage", "stage again"]
    assert reporter.notes == ["run-level"]


def test_progress_publishes_every_update_to_the_sink() -> None:
    seen: list[dict[str, Any]] = []
    out = io.StringIO()
    progress = Reporter(out, sink=seen.append).progress("bake b", 3, unit="step")
    for _ in range(3):
        progress.update()
    assert [p["done"] for p in seen] == [1, 2, 3]
    assert {p["label"] for p in seen} == {"bake b"} and seen[-1]["total"] == 3 and seen[-1]["unit"] == "step"
    assert out.getvalue().splitlines()[-1].startswith("bake b: 100%")  # the final line goes to the reporter stream
