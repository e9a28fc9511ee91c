"""What every command module shares: click's context settings, and the repository of this invocation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from gitbake.repo.repo import ModelRepo

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def repository() -> ModelRepo:
    """The model repository of the current directory, opened once per invocation (exit 3 outside one).

    Commands call this where they need the repository, not before: a usage error still comes first.
    """
    from gitbake.repo.repo import open_repo

    ctx = click.get_current_context().find_root()
    repo: ModelRepo | None = ctx.meta.get("gitbake.repo")
    if repo is None:
        repo = ctx.meta["gitbake.repo"] = open_repo(Path.cwd())
    return repo
