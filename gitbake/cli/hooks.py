"""`git bake hooks` and the entry points git itself runs: `hook NAME` and `merge-driver`."""

from __future__ import annotations

from pathlib import Path

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json


@click.command("hook", hidden=True, context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(name: str, args: tuple[str, ...]) -> None:
    """Run a git hook (the shims in .git/hooks call this)."""
    from gitbake.workflow.hooks import main as hook_main

    raise SystemExit(hook_main(name, list(args)))


@click.command("merge-driver", hidden=True, context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(["input", "lineage"]))
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("ours", type=click.Path(path_type=Path))
@click.argument("theirs", type=click.Path(path_type=Path))
@click.argument("path", required=False)
def merge_driver(kind: str, base: Path, ours: Path, theirs: Path, path: str | None) -> None:
    """git's merge drivers for input.yml and for .bread / recipe.yml (configured by init)."""
    from gitbake.workflow.mergedriver import merge_input, merge_lineage

    if kind == "lineage":
        raise SystemExit(merge_lineage(base, ours, theirs, path or ".bread"))
    raise SystemExit(merge_input(base, ours, theirs))


@click.group(context_settings=CONTEXT)
def hooks() -> None:
    """Install or remove gitbake's git hooks (`git bake init` installs them).

    \b
    pre-commit     refuses a commit of an invalid input.yml (field, line and fix)
    post-commit    a commit that changed input.yml starts the bake (in the background;
                   `git config bake.hookMode foreground` runs it inline, `off` not at all)
    post-checkout  .bake/model follows HEAD (fetching from the bake remote when needed)
    post-merge     the same after a merge or pull
    post-rewrite   the same after a rebase or `git pull --rebase` (checkouts during them are skipped)
    pre-push       with `git config bake.autoPush true`, uploads the models before git pushes

    A hook that was there before is kept as NAME.legacy and still runs; bgit's hooks are set aside
    as NAME.bgit. core.hooksPath is respected.

    \b
    Examples:
      git bake hooks install
      git config bake.hookMode foreground     # bake inline in `git commit` instead of in the background
    """


@hooks.command("install", context_settings=CONTEXT)
def hooks_install() -> None:
    """Install (or update) the hooks of this repository.

    \b
    Example:
      git bake hooks install     # after cloning a model repository (git bake init does it too)
    """
    from gitbake import git
    from gitbake.workflow.hooks import HOOKS, install

    root = repository().root
    for note in install(root):
        click.echo(f"note: {note}")
    click.echo(f"installed {', '.join(HOOKS)} in {git.hooks_dir(root)}")


@hooks.command("uninstall", context_settings=CONTEXT)
def hooks_uninstall() -> None:
    """Remove gitbake's hooks (your own hooks that were kept as .legacy come back).

    \b
    Example:
      git bake hooks uninstall
    """
    from gitbake.workflow.hooks import uninstall

    for note in uninstall(repository().root):
        click.echo(f"note: {note}")
    click.echo("removed gitbake's hooks")


@hooks.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def hooks_ls(as_json: bool) -> None:
    """Show which hooks are gitbake's.

    \b
    Example:
      git bake hooks ls --json
    """
    from gitbake.workflow.hooks import installed

    states = installed(repository().root)
    if as_json:
        emit_json(states)
        return
    for name, state in states.items():
        click.echo(f"{name:<14} {state}")
