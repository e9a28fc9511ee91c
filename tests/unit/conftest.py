"""The unit tier's guard: a unit test that starts a process or imports the ML stack fails.

Unit tests run in-process on plain files: no `git`, no `git bake` subprocess, no torch. A test that needs one
of these belongs in tests/func/. The guard applies to everything a unit test runs, its fixtures included;
the ML check is strict when the unit tier runs on its own (`scripts/test --fast`, `pytest tests/unit`).
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

ML = ("torch", "transformers", "peft", "accelerate", "deepspeed")
TAG = "[unit tier]"


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"{TAG} a unit test started a process ({what}); move it to tests/func/", pytrace=True)

    return refuse


@contextmanager
def _no_processes() -> Iterator[None]:
    # Popen._execute_child starts every subprocess child, fork_exec multiprocessing's; the os calls are the rest
    targets: list[tuple[Any, str]] = [(subprocess.Popen, "_execute_child"), (_posixsubprocess, "fork_exec")] + [
        (os, name)
        for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve")
        if hasattr(os, name)
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]
    for mod, name, _ in saved:
        setattr(mod, name, _refuse(f"{getattr(mod, '__qualname__', mod.__name__)}.{name}"))
    try:
        yield
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


def _check_ml(before: set[str], when: str) -> None:
    new = [m for m in ML if m in sys.modules and m not in before]
    if new:
        pytest.fail(f"{TAG} {when} imported {', '.join(new)}; move it to tests/func/", pytrace=False)


def _guarded(when: str) -> Any:
    @pytest.hookimpl(wrapper=True)
    def hook(item: pytest.Item) -> Iterator[None]:
        before = set(sys.modules)
        with _no_processes():
            result = yield
        _check_ml(before, f"{item.nodeid} ({when})")
        return result

    return hook


pytest_runtest_setup = _guarded("setup")
pytest_runtest_call = _guarded("call")
pytest_runtest_teardown = _guarded("teardown")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    if not isinstance(collector, pytest.Module):
        return (yield)
    before = set(sys.modules)
    with _no_processes():
        report = yield
    new = [m for m in ML if m in sys.modules and m not in before]
    if new and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{TAG} importing {collector.nodeid} imported {', '.join(new)}; move it to tests/func/"
    return report
