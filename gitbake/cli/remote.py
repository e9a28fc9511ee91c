"""`git bake remote add / ls / rm`, `push` and `pull`: sharing adapters through remote stores."""

from __future__ import annotations

from typing import Any

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json, human_size, progress_reporter


@click.group(context_settings=CONTEXT)
def remote() -> None:
    """Manage remote stores that push and pull share adapters through.

    A remote is a directory, file://, s3://, gs://... URL (fsspec; install gitbake[remote], or
    gitbake[s3] for S3). Kept in git config; the first one added becomes the default (bake.remote).

    \b
    Examples:
      git bake remote add origin /mnt/shared/models
      git bake remote add cloud s3://my-bucket/models
      git bake remote ls
    """


@remote.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.argument("url")
def remote_add(name: str, url: str) -> None:
    """Add remote NAME at URL (the first becomes the default).

    \b
    Example:
      git bake remote add origin s3://bucket/prefix
    """
    from gitbake.store import remote as remote_mod

    root = repository().root
    remote_mod.Remote(name, remote_mod.normalise_url(url, root))  # fails early on a URL fsspec cannot use
    made_default = remote_mod.add_remote(root, name, url)
    click.echo(f"added remote {name}: {remote_mod.list_remotes(root)[name]}" + (" (default)" if made_default else ""))


@remote.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the remotes as JSON.")
def remote_ls(as_json: bool) -> None:
    """List remotes; * marks the default.

    \b
    Example:
      git bake remote ls --json
    """
    from gitbake.store import remote as remote_mod

    root = repository().root
    remotes, default = remote_mod.list_remotes(root), remote_mod.default_remote(root)
    if as_json:
        emit_json({"default": default, "remotes": remotes})
        return
    if not remotes:
        click.echo("No remotes. Add one: git bake remote add origin /path/or/s3://bucket/prefix")
    for name, url in remotes.items():
        click.echo(f"{'*' if name == default else ' '} {name:<12} {url}")


remote.add_command(remote_ls, "list")


@remote.command("rm", context_settings=CONTEXT)
@click.argument("name")
def remote_rm(name: str) -> None:
    """Remove remote NAME (the objects on it are left alone).

    \b
    Example:
      git bake remote rm origin
    """
    from gitbake.store import remote as remote_mod

    remote_mod.remove_remote(repository().root, name)
    click.echo(f"removed remote {name}")


def _transfer(
    verb: str, name: str | None, revs: tuple[str, ...], jobs: int, as_json: bool, force: bool = False
) -> None:
    from gitbake.workflow import transfer

    def progress(target: Any) -> Any:
        return progress_reporter(f"{verb} {target.name}")

    if verb == "push":
        done = transfer.push(repository(), name, revs, jobs, progress, force)
    else:
        done = transfer.pull(repository(), name, revs, jobs, progress)
    report, target = done.report, done.remote
    if as_json:
        emit_json(report.as_json())
    else:
        moved = "uploaded" if verb == "push" else "downloaded"
        click.echo(
            f"{verb} {target.name} ({target.url}): {report.needed} object(s) needed, {len(report.transferred)} {moved} "
            f"({human_size(report.bytes)}), {report.skipped} already there"
        )
    report.raise_for_problems(verb)
    state = done.refresh_model()
    if state is not None and state.state == "updated" and not as_json:
        click.echo(f".bake/model is now {state.model_name or 'the base model'}")


@click.command(context_settings=CONTEXT)
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option("-j", "--jobs", default=8, show_default=True, help="Objects in flight at once.")
@click.option("--force", is_flag=True, help="Upload even what the remote has (repairs a damaged remote copy).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def push(remote_name: str | None, revs: tuple[str, ...], jobs: int, force: bool, as_json: bool) -> None:
    """Upload the objects the models of REV... need (default: HEAD) to REMOTE (default: bake.remote).

    Skips what the remote has; an interrupted push resumes when run again.

    \b
    Examples:
      git bake push
      git bake push origin main formal
    """
    _transfer("push", remote_name, revs, jobs, as_json, force)


@click.command(context_settings=CONTEXT)
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option("-j", "--jobs", default=8, show_default=True, help="Objects in flight at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def pull(remote_name: str | None, revs: tuple[str, ...], jobs: int, as_json: bool) -> None:
    """Download the objects the models of REV... need (default: HEAD) from REMOTE (default: bake.remote).

    Every object is re-hashed as it arrives; a corrupt one is refused by name (exit 4).

    \b
    Examples:
      git bake pull
      git bake pull origin HEAD~3
    """
    _transfer("pull", remote_name, revs, jobs, as_json)
