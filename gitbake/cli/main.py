"""`git bake` command line: the click group, the error -> exit-code map and `main`.

click is imported in cli/ only. Each command group has a module here (start, pipeline, store, remote, hooks,
jobs, history, use) that parses, calls one core function and renders (render.py); `common.repository()`
opens the repository once per invocation.

Every command accepts -h; read-only ones accept --json for scripts. Errors map to exit codes in one
place (`main`): 1 failed, 2 bad usage or input, 3 not a gitbake repository, 4 store corruption, 130 ^C.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from gitbake import __version__
from gitbake.cli.common import CONTEXT
from gitbake.errors import EXIT_INTERRUPTED, GitbakeError

# command name -> "module:attribute", one module per command group. A command's module is imported only
# when that command runs (click's documented lazy-loading pattern): `git bake status` runs often, and
# importing every group's module (and what it imports) would be start-up time it does not need.
COMMANDS = {
    "init": "start:init",
    "validate": "start:validate",
    "status": "start:status",
    "target": "start:target",
    "run": "pipeline:run",
    "stim": "pipeline:stim",
    "rollout": "pipeline:rollout",
    "store": "store:store",
    "remote": "remote:remote",
    "push": "remote:push",
    "pull": "remote:pull",
    "hook": "hooks:hook",
    "merge-driver": "hooks:merge_driver",
    "hooks": "hooks:hooks",
    "jobs": "jobs:jobs",
    "fetch": "jobs:fetch",
    "checkout": "history:checkout",
    "log": "history:log_cmd",
    "tree": "history:tree",
    "show": "history:show",
    "models": "history:models",
    "eval": "history:eval_cmd",
    "chat": "use:chat",
    "serve": "use:serve",
    "export": "use:export",
    "metrics": "use:metrics",
    "diff": "use:diff",
    "completion": "completion:completion",
}


class _BakeGroup(click.Group):
    """Maps gitbake's errors to exit codes inside click, so CliRunner and `git bake` behave alike; loads
    each command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(f"gitbake.cli.{module}"), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        if os.environ.get("NO_COLOR"):  # https://no-color.org: any non-empty value turns colour off
            ctx.color = False
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # the reader went away (`git bake rollout | head`): end quietly and successfully, as git does.
            # stdout is pointed at /dev/null so the interpreter's last flush does not fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)
        except GitbakeError as exc:
            click.echo(click.style("error: ", fg="red") + exc.render(), err=True)
            if os.environ.get("GITBAKE_LAUNCHED"):  # a launched rank: the starting process names it in its error
                from gitbake.workflow.launch import record_error

                record_error(exc.render())
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            # the filesystem said no (read-only, full, not a directory...): say what and where, not a traceback
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(click.style("error: ", fg="red") + f"{exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


@click.group(cls=_BakeGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="git bake", message="%(prog)s (gitbake) %(version)s")
def cli() -> None:
    """Bake prompts into model weights, and version every model in git.

    \b
    The loop:
      git bake init my-model --base-model tiny   # a model repository
      cd my-model && $EDITOR input.yml           # PROMPT / TARGET / BAKE
      git bake status                            # what a commit would run
      git commit -am "bake a Yoda persona"

    Run `git bake COMMAND -h` for each command's options and an example.
    """


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`git-bake`, which git runs as `git bake`)."""
    # click names the completion variable after the program; "git bake" has a space, invalid in a name
    cli.main(args=argv, prog_name="git bake", complete_var="_GIT_BAKE_COMPLETE")
