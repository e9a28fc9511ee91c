"""The lazy command map of `git bake` (gitbake/cli/main.py): each name loads the command of that name, and
running one command imports only its own group's module."""

from __future__ import annotations

import sys

import click
import pytest
from click.testing import CliRunner

from gitbake.cli.main import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_name_loads_the_command_of_that_name(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command) and command.name == name


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    assert cli.get_command(ctx, "frobnicate") is None
    listed = CliRunner().invoke(cli, ["-h"]).output.split("Commands:")[1]
    shown = [n for n in sorted(COMMANDS) if not cli.get_command(ctx, n).hidden]  # type: ignore[union-attr]
    assert len(shown) >= len(COMMANDS) - 2  # only the plumbing that git calls (hook, merge-driver) is hidden
    assert sorted(line.split()[0] for line in listed.strip().splitlines()) == shown


def test_looking_up_status_does_not_import_the_other_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in [m for m in sys.modules if m.startswith("gitbake.cli.") and m != "gitbake.cli.main"]:
        monkeypatch.delitem(sys.modules, mod)
    cli.get_command(click.Context(cli), "status")
    loaded = {m for m in sys.modules if m.startswith("gitbake.cli.")}
    assert "gitbake.cli.start" in loaded
    assert not loaded & {f"gitbake.cli.{g}" for g in ("use", "history", "remote", "store", "jobs", "pipeline")}
