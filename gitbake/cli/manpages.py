"""The man pages of `git bake`, generated from the click help by click-man.

`git bake --help` is `git help bake` to git, which runs `man git-bake`: without a page, git says "No
manual entry for git-bake". So the pages (git-bake.1, git-bake-init.1, ...) are generated from the same
help text `-h` prints, kept in man/man1/ and installed into `<prefix>/share/man/man1`, where man finds
them next to the `git-bake` on PATH. A test regenerates them and fails when they are stale:

    python -m gitbake.cli.manpages man/man1
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from gitbake import __version__
from gitbake.cli.main import COMMANDS, cli

NAME = "git-bake"


def eager_group() -> click.Group:
    """`cli` with every command loaded: click-man walks a group's `commands`, which the lazy group fills
    only on demand."""
    ctx = click.Context(cli, info_name=NAME)
    commands = {name: cli.get_command(ctx, name) for name in COMMANDS}
    return click.Group(NAME, commands={k: v for k, v in commands.items() if v}, help=cli.help, params=cli.params)


def write(target: Path) -> list[Path]:
    """Write every page into `target` (replacing stale ones) and return them, sorted."""
    from click_man.core import write_man_pages  # a dev tool: only the generator needs it

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob(f"{NAME}*.1"):
        old.unlink()
    with warnings.catch_warnings():  # click-man calls a click helper that click 8.2 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        # a fixed date: the pages change when the help does, not when they are regenerated
        write_man_pages(NAME, eager_group(), version=__version__, target_dir=str(target), date="gitbake")
    return sorted(target.glob(f"{NAME}*.1"))


if __name__ == "__main__":
    for page in write(Path(sys.argv[1] if len(sys.argv) > 1 else "man/man1")):
        print(page)
