"""`git bake run`, and the viewers of its stage outputs: `stim` and `rollout`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import bake_phases, emit_json
from gitbake.reporter import Reporter


@click.command(context_settings=CONTEXT)
@click.argument("stages", nargs=-1, type=click.Choice(["stim", "rollout", "bake"], case_sensitive=False))
@click.option("--force", is_flag=True, help="Run the stages even when their results are in the store.")
@click.option(
    "--detach", "-d", is_flag=True, help="Run in the background; `git bake jobs wait` / `git bake fetch` collect it."
)
@click.option(
    "--launcher",
    metavar="CMD",
    help="Run the bake stage under CMD, e.g. 'torchrun --nproc_per_node 2' (default: git config bake.launcher).",
)
@click.option(
    "--push",
    "push",
    is_flag=True,
    help="After the bake commit: upload its model to the bake remote, then git push the commit (a GPU machine "
    "baking for a laptop).",
)
@click.option("--at", "at", hidden=True)  # a launched rank: the commit the starting process bakes
@click.option("--branch", "branch", hidden=True)  # ... and the branch it moves
@click.option("--json", "as_json", is_flag=True, help="Print what ran as JSON.")
def run(
    stages: tuple[str, ...],
    force: bool,
    detach: bool,
    launcher: str | None,
    push: bool,
    at: str | None,
    branch: str | None,
    as_json: bool,
) -> None:
    """Run the committed input.yml: stim (questions), rollout (teacher answers), bake (train + eval).

    Stages run in pipeline order whatever the order given; with none, every stage input.yml has runs.
    A stage whose key is already in the store is a cache hit and does not run again (--force reruns
    it). rollout runs a missing stim first; bake runs missing stim and rollout first, then evaluates
    the adapter on held-out questions (gap_closed).

    When the bake ran, one bake commit follows holding the new .bread, the new recipe.yml and input.yml
    with its sections commented out, and .bake/model becomes the new model. input.yml must be
    committed: that commit is what the model is the model of. (After a commit of input.yml the
    post-commit hook does all this by itself.)

    \b
    With a launcher (--launcher, or `git config bake.launcher "torchrun --nproc_per_node 2"`), stim
    and rollout run here and the bake stage runs data-parallel in the processes the launcher starts;
    every rank's output is shown prefixed by its rank, and rank 0 makes the bake commit.

    \b
    Examples:
      git bake run
      git bake run stim
      git bake run bake --force
      git bake run --detach && git bake jobs wait
      git bake run --launcher "torchrun --nproc_per_node 2"
      git pull && git bake run --push          # on a GPU machine, for a laptop's commit
    """
    from gitbake.workflow import launch

    repo = repository()
    wanted = [s.lower() for s in stages] or None
    if detach and push:
        raise click.UsageError("--push cannot go with --detach: run in the foreground to push its result")
    if push:
        from gitbake.store.remote import resolve as bake_remote

        bake_remote(repo.root, None)  # no bake remote: said now, before hours of baking
    if detach and launcher is not None:
        raise click.UsageError("--launcher cannot go with --detach: set `git config bake.launcher CMD`, which jobs use")
    if detach:
        from gitbake.workflow.run import run_detached

        started = run_detached(repo, wanted, force)
        job = started.job
        if as_json:
            emit_json(job.as_json())
            return
        click.echo(
            f"started job {job.id} in the background (log: {job.log_path})"
            + (f"; it is queued behind job {started.queued_behind}" if started.queued_behind else "")
        )
        click.echo(
            "`git bake status` shows its progress; `git bake jobs wait` waits for it; `git bake jobs cancel` stops it"
        )
        return
    from gitbake.workflow.run import run_and_commit

    if launch.launched():  # a rank the launcher started: rank 0 publishes progress and hands back its report
        report = run_and_commit(
            repo, wanted, force, rev=at, branch_ref=branch, reporter=Reporter(sink=launch.progress_sink())
        )
        launch.record_report(report.as_json())
        from gitbake.engine.parallel import is_rank0

        if not is_rank0():  # rank 0 reports for all of them
            n = report.results[-1].count if report.results else 0
            click.echo(f"trained this rank's share of the bake ({n} trajectories in all)")
            return
    else:
        chosen = launch.configured(repo, launcher)
        report = run_and_commit(repo, wanted, force=force, reporter=Reporter(), launcher=chosen)
    pushed = None
    if push and report.commit is not None:
        from gitbake.workflow.transfer import push_bake

        pushed = push_bake(repo, report.commit.commit, report.commit.ref)
    elif push:
        click.echo("note: --push: no bake commit was made, so nothing was pushed", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        emit_json({**report.as_json(), "pushed": pushed.report.as_json() if pushed is not None else None})
        return
    for r in report.results:
        how = "cached" if r.cached else f"ran in {r.seconds:.1f}s"
        unit = "questions" if r.stage == "stim" else "trajectories"
        click.echo(f"{r.stage:<8} {how:<14} {r.count} {unit}  key {r.key[:12]}  -> {r.manifest[:12]}")
        if r.stage == "bake" and r.extra.get("gap_closed") is not None:
            e = r.extra
            click.echo(
                f"         eval: gap_closed {e['gap_closed']:.3f} (KL {e['d_before']:.4f} -> {e['d_after']:.4f} "
                "nats/token)" + (f", final loss {e['final_loss']:.4f}" if e.get("final_loss") is not None else "")
            )
            if not r.cached and e.get("train_seconds") is not None:  # where a bake's time went
                click.echo(f"         time: {bake_phases(e)}")
        for note in r.notes:
            click.echo(f"         note: {note}")
    for line in report.outcome():
        click.echo(line, err=line.startswith(("warning:", "note:")))
    if pushed is not None and report.commit is not None:
        n = len(pushed.report.transferred)
        click.echo(
            f"pushed the model ({n} object{'s' if n != 1 else ''} to bake remote {pushed.remote.name}) and then "
            f"{report.commit.commit[:12]} to git; `git pull` on the other machine brings both"
        )


def _view(
    stage: str, target_name: str | None, limit: int, offset: int, count: bool, jsonl: Path | None, as_json: bool
) -> None:
    import itertools

    from gitbake.workflow.pipeline import export_records, find_stage_output, read_records

    repo = repository()
    if jsonl is not None and not count:
        done = export_records(repo, stage, target_name, jsonl)
        click.echo(f"wrote {done.count} {stage} records of {done.target} to {done.path}")
        return
    name, key, manifest = find_stage_output(repo, stage, target_name)
    records = read_records(repo.store, manifest, stage)
    if count:
        n = sum(1 for _ in records)
        click.echo(json.dumps({"target": name, "count": n}) if as_json else str(n))
        return
    page = list(itertools.islice(records, offset, offset + limit))
    if as_json:
        emit_json({"target": name, "key": key, "offset": offset, "records": page})
        return
    click.echo(f"# {stage} of {name} (key {key[:12]}), records {offset}..{offset + len(page) - 1}")
    for rec in page:
        shown = {k: v for k, v in rec.items() if not k.endswith("_ids")}  # token ids: use --json / --jsonl
        click.echo(json.dumps(shown, ensure_ascii=False, indent=2))


def _viewer_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print the page as JSON (token ids included).")(f)
    f = click.option(
        "--jsonl", type=click.Path(dir_okay=False, path_type=Path), help="Export every record to FILE as JSON lines."
    )(f)
    f = click.option("-c", "--count", is_flag=True, help="Only print how many records there are.")(f)
    f = click.option(
        "--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Skip this many records."
    )(f)
    f = click.option(
        "-l",
        "--limit",
        default=10,
        show_default=True,
        type=click.IntRange(min=1),
        help="Show at most this many records.",
    )(f)
    f = click.option(
        "--target",
        "target_name",
        metavar="NAME",
        help="A target by plain or hashed name (default: input.yml's, else the newest).",
    )(f)
    return f


@click.command(context_settings=CONTEXT)
@_viewer_options
def stim(target_name: str | None, limit: int, offset: int, count: bool, jsonl: Path | None, as_json: bool) -> None:
    """Show the questions of a target (its stim output), page by page; every record, not just 100.

    \b
    Examples:
      git bake stim -l 5
      git bake stim --offset 100 --limit 50
      git bake stim --jsonl questions.jsonl
    """
    _view("stim", target_name, limit, offset, count, jsonl, as_json)


@click.command(context_settings=CONTEXT)
@_viewer_options
def rollout(target_name: str | None, limit: int, offset: int, count: bool, jsonl: Path | None, as_json: bool) -> None:
    """Show the teacher's answers of a target (its rollout output), page by page.

    \b
    Examples:
      git bake rollout -c
      git bake rollout --target yoda_target --jsonl trajectories.jsonl
    """
    _view("rollout", target_name, limit, offset, count, jsonl, as_json)
