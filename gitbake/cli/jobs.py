"""`git bake jobs` (background bakes) and `git bake fetch` (taking a bake whose branch moved on)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json, job_line

if TYPE_CHECKING:
    from gitbake.workflow.bakecommit import CommitResult


@click.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Without a subcommand: the jobs as JSON (= jobs ls --json).")
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    """Background bake jobs of this repository (started by commits and `git bake run --detach`).

    \b
    Examples:
      git bake jobs                # = jobs ls
      git bake jobs wait           # until the running and queued jobs finish; exit 1 if one failed
      git bake jobs logs           # the newest job's log
      git bake jobs cancel         # stop the running job (nothing is stored or committed)
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(jobs_ls, as_json=as_json)
    elif as_json:
        raise click.UsageError(f"put --json after the subcommand: git bake jobs {ctx.invoked_subcommand} --json")


@jobs.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def jobs_ls(as_json: bool) -> None:
    """List jobs, newest first: id, state, the commit baked, age, progress or result.

    \b
    Example:
      git bake jobs ls --json | jq '.[0].state'
    """
    from gitbake.workflow import jobs as jobs_mod

    found = jobs_mod.list_jobs(repository())
    if as_json:
        emit_json([j.as_json() for j in found])
        return
    if not found:
        click.echo("No bake jobs yet. A commit that changes input.yml starts one.")
    for j in found:
        click.echo(job_line(j))


@jobs.command("wait", context_settings=CONTEXT)
@click.argument("job_id", required=False)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the finished jobs as JSON.")
def jobs_wait(job_id: str | None, timeout: float | None, as_json: bool) -> None:
    """Wait for JOB_ID (default: every running or queued job); exit 1 if one failed, died or was cancelled.

    Without JOB_ID a job that already ended without success since the last successful one counts too,
    so `git commit ... && git bake jobs wait` fails when the bake did, however fast it failed.

    \b
    Examples:
      git bake jobs wait
      git bake jobs wait 20261125-101500-ab12cd --timeout 3600
    """
    from gitbake.workflow import jobs as jobs_mod

    repo = repository()
    todo = [jobs_mod.find(repo, job_id)] if job_id else jobs_mod.unsettled(repo)
    done = [jobs_mod.wait(j, timeout) for j in todo]
    if as_json:
        emit_json([j.as_json() for j in done])
    else:
        for j in done:
            click.echo(job_line(j))
        if not done:
            click.echo("no job is running")
    if any(j.state != "done" for j in done):
        raise SystemExit(1)


@jobs.command("logs", context_settings=CONTEXT)
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the job, its log's path and its text as JSON.")
def jobs_logs(job_id: str | None, as_json: bool) -> None:
    """Print a job's log (default: the newest job).

    \b
    Examples:
      git bake jobs logs | tail
      git bake jobs logs --json | jq -r .log
    """
    from gitbake.workflow import jobs as jobs_mod

    job = jobs_mod.find(repository(), job_id)
    try:
        text: str | None = job.log_path.read_text(errors="replace")
    except FileNotFoundError:
        text = None
    if as_json:
        emit_json({**job.as_json(), "log_path": str(job.log_path), "log": text})
    else:
        click.echo("(no log)" if text is None else text, nl=text is None)


@jobs.command("cancel", context_settings=CONTEXT)
@click.argument("job_id", required=False)
def jobs_cancel(job_id: str | None) -> None:
    """Stop a running or queued job (default: the running one). Nothing is stored or committed.

    \b
    Example:
      git bake jobs cancel
    """
    from gitbake.workflow import jobs as jobs_mod

    job = jobs_mod.cancel_job(repository(), job_id)
    if job is None:
        click.echo("no job is running")
        return
    click.echo(f"job {job.id}: {job.state}")


@click.command(context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Take it even if the branch's model changed since it was baked.")
@click.option(
    "--drop", is_flag=True, help="Discard the waiting results instead (their adapters stay in the store until gc)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fetch(force: bool, drop: bool, as_json: bool) -> None:
    """Take a finished background bake whose branch had moved on (kept under refs/bake/).

    The bake's .bread and recipe.yml become a bake commit on top of the current branch; input.yml is
    commented out only if it is still the one that was baked.

    \b
    Example:
      git bake fetch
      git bake fetch --drop     # a later bake made it moot
    """
    from gitbake.workflow.run import fetch as do_fetch

    def took(ref: str, result: CommitResult) -> None:
        if not as_json:
            click.echo(f"took {ref}: bake commit {result.commit[:12]}")

    out = do_fetch(repository(), force=force, drop=drop, on_take=took)
    if out.state in ("nothing", "running"):
        j = out.running
        msg = (
            f"job {j.id} is still {j.state}: `git bake jobs wait`, then fetch"
            if j
            else "no bake result is waiting for this branch"
        )
        if as_json:
            emit_json({"taken": [], "message": msg})
        else:
            click.echo(msg)
    elif out.state == "dropped":
        if as_json:
            emit_json({"dropped": out.dropped})
        else:
            click.echo(f"dropped {', '.join(out.dropped)}")
    elif as_json:
        emit_json({"taken": [r.as_json() for r in out.taken]})
