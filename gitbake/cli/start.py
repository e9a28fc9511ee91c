"""`git bake init`, `validate`, `status` and `target`: making a model repository and reading its input.yml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json, warn


@click.command(context_settings=CONTEXT)
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--base-model",
    "base_model",
    metavar="MODEL",
    help="`tiny` (built in, offline), a Hugging Face id (org/name[@REV]), a model directory or a GGUF file. "
    "Default: tiny.",
)
@click.option("--name", metavar="NAME", help="Repository name recorded in .bread. Default: the directory name.")
@click.option(
    "--no-download",
    "no_download",
    is_flag=True,
    help="A Hugging Face model: do not download it now (the first bake does).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(directory: Path | None, base_model: str | None, name: str | None, no_download: bool, as_json: bool) -> None:
    """Create a model repository, or make an existing git or bgit repository one.

    Writes input.yml (a commented example: the first commit runs nothing), .bread, recipe.yml,
    .gitignore and .gitattributes, and makes the first commit when it created the repository.
    Safe to re-run; in a bgit repository it keeps input.yml, .bread and recipe.yml.

    A Hugging Face model is downloaded into the Hugging Face cache (HF_HOME, HF_ENDPOINT, HF_TOKEN,
    HF_HUB_OFFLINE are honoured), with progress, and .bread pins the commit its branch or tag resolved
    to (`base_revision`), so every commit of the lineage names the weights it was baked on. Run again,
    init downloads the pinned commit when it is missing (a clone on another machine); run again with
    --base-model naming the same model, it picks up a branch that moved and pins its new commit.

    \b
    Examples:
      git bake init my-model --base-model tiny
      git bake init . --base-model Qwen/Qwen2.5-0.5B-Instruct    # in an existing repository
    """
    from gitbake.workflow.init import init as do_init

    report = do_init(directory or Path.cwd(), base_model=base_model, name=name, download=not no_download)
    if as_json:
        emit_json(report.as_json())
        return
    where = report.root
    if report.created_repo:
        click.echo(f"Created model repository {report.name} in {where} (base model: {report.base_model})")
    elif report.written:
        click.echo(
            f"Initialised {report.name} in {where} (base model: {report.base_model}): wrote {', '.join(report.written)}"
        )
    else:
        click.echo(
            f"{where} is already a gitbake model repository ({report.name}, base model {report.base_model}); nothing "
            "to do"
        )
    if report.downloaded:
        click.echo(f"{report.base_model} is in the Hugging Face cache at commit {report.downloaded[:12]}")
    for note in report.notes:
        click.echo(f"note: {note}")
    cd = "" if Path.cwd().resolve() == where else f"cd {where} && "
    if report.created_repo:
        click.echo(
            f"\nNext: {cd}$EDITOR input.yml   (uncomment the example), then `git bake status` and `git commit -am "
            "'first bake'`"
        )
    elif report.written:
        click.echo(f"\nNext: {cd}git commit -m 'git bake init'   (the new files are staged)")


# ------------------------------------------------------------------------------------------ validate


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config, names and keys as JSON.")
def validate(as_json: bool) -> None:
    """Check input.yml and print it resolved: every default filled in, every name and key.

    Reports every error at once, each with file:line:column, the field and the fix (exit 2).

    \b
    Example:
      git bake validate && git commit -am "bake it"
    """
    import yaml

    from gitbake.workflow.status import validate as do_validate

    repo = repository()
    loaded, plan = do_validate(repo)
    warn(loaded.warnings + plan.warnings)
    if as_json:
        emit_json({"valid": True, **plan.as_json()})
        return
    if loaded.config.is_empty:
        click.echo("input.yml is valid and has nothing to run (every section is commented out).")
        return
    resolved: dict[str, Any] = {}
    if plan.prompts:
        resolved["PROMPT"] = {ref: p.config for ref, p in plan.prompts.items()}
    if plan.target:
        resolved["TARGET"] = plan.target.config
    if plan.bake:
        resolved["BAKE"] = plan.bake.config
    click.echo("# input.yml is valid. Resolved, with every default filled in:")
    click.echo(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=100).rstrip())
    click.echo("\n# Names and keys:")
    for ref, p in plan.prompts.items():
        click.echo(f"#   prompt {ref}: {p.name}  {p.key}")
    if plan.target:
        click.echo(f"#   target {plan.target.plain}: {plan.target.name}  {plan.target.key}")
    if plan.bake:
        click.echo(f"#   bake   {plan.bake.plain}: {plan.bake.name}  {plan.bake.key}")


# -------------------------------------------------------------------------------------------- status

_STATE_COLOUR = {"new": "green", "changed": "yellow", "unchanged": None}


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Show what input.yml would run: which prompts, target and bake are new or changed, with names and keys.

    \b
    Example:
      git bake status --json | jq .would_run
    """
    from gitbake.workflow.status import status as do_status

    report = do_status(repository())
    if as_json:
        emit_json(report.as_json())
        return
    warn(report.warnings)
    p = report.plan.parent
    head = f"On branch {report.branch}" if report.branch else "HEAD detached"
    base = p.identity.get("base") or {}
    where, shown = "", p.base_model
    if base.get("kind") == "hub":
        rev = str(base.get("revision"))
        from gitbake import hub
        from gitbake.contract.identity import UNCACHED, unpinned

        shown = unpinned(shown)  # pinned by .bread: the commit is said once, below
        if rev == UNCACHED:
            where = " (not downloaded yet: the first bake downloads it)"
        elif hub.cached_commit(str(base.get("id")), rev) is None:  # pinned, on a machine without it (a clone)
            where = f" at {rev[:12]} (not downloaded yet: `git bake init` or the first bake downloads it)"
        else:
            where = f" at {rev[:12]}"
    click.echo(f"{head} · model repository {report.repo_name} · base model {shown}{where}")
    if p.foreign:
        click.echo(f"Parent model: base model ({p.model_name} is in Bread's cloud, not on this machine)")
    elif p.adapters:
        click.echo(
            f"Parent model: {p.model_name or 'previous bake'} ({len(p.adapters)} "
            f"adapter{'s' if len(p.adapters) != 1 else ''})"
        )
    else:
        click.echo("Parent model: the base model (no bakes yet)")
    if report.changes:
        click.echo("\ninput.yml:")
        w_ref = max(len(c.ref) for c in report.changes)
        w_name = max(len(c.name) for c in report.changes)
        for c in report.changes:
            state = click.style(c.state, fg=_STATE_COLOUR.get(c.state))
            implied = (
                "  (implied: empty student prompt)"
                if c.kind == "prompt" and report.plan.prompts[c.ref].source == "implied"
                else ""
            )
            click.echo(f"  {c.kind:<7} {c.ref:<{w_ref}}  {c.name:<{w_name}}  {state}{implied}")
    if report.stages:
        click.echo("\nStages:")
        for row in report.stages:
            detail = ""
            if row.count is not None:
                detail = f"{row.count} {'questions' if row.stage == 'stim' else 'trajectories'}"
            ev = row.eval or {}
            if ev.get("gap_closed") is not None:
                detail = f"gap_closed {ev['gap_closed']:.3f} (KL {ev['d_before']:.4f} -> {ev['d_after']:.4f})"
            if row.progress:
                pr = row.progress
                detail = f"{pr['done']}/{pr['total']} {pr['unit']}, ETA {pr['eta_s']:.0f}s"
            click.echo(f"  {row.stage:<8} {row.state:<8} {detail}")
    for j in report.jobs:
        click.echo(
            f"\nJob {j.id}: {j.state}"
            + (f" — {j.error.splitlines()[0]}" if j.error and j.state != "done" else "")
            + (
                "  (see `git bake jobs logs`)"
                if j.state in ("failed", "died")
                else "  (`git bake jobs wait` waits for it)"
            )
        )
    for ref, info in report.pending.items():
        if info.superseded:
            click.echo(
                f"\nA finished bake waits as {ref}, but a later bake has landed since: `git bake fetch --force` takes "
                "it "
                "anyway (replacing that lineage), `git bake fetch --drop` discards it"
            )
        else:
            click.echo(
                f"\nA finished bake is waiting as {ref} (the branch moved on while it ran): take it with `git bake "
                "fetch`"
            )
    m = report.model
    if m is not None and m.state in ("stale", "absent"):
        click.echo(
            click.style("\nwarning: ", fg="yellow")
            + f".bake/model is not the model of HEAD ({m.model.model_name or 'base model'}); fix: {m.fix}",
            err=True,
        )
    if report.commented_out:
        click.echo(f"\nCommented out: {', '.join(report.commented_out)}")
    if report.elsewhere:
        click.echo(
            "\nbake.hookMode is off: the bake of this commit is expected elsewhere (a machine that runs `git bake "
            "run --push` on it); `git pull` then brings its model here. To bake here instead: git bake run"
        )
    elif report.would_run and report.baking:
        click.echo(f"\nBaking now: {' -> '.join(report.would_run)}")
    elif report.would_run:
        click.echo(f"\nA commit of input.yml would run: {' -> '.join(report.would_run)}")
    else:
        click.echo(
            "\nNothing to run: input.yml has no PROMPT, TARGET or BAKE. Uncomment or write a section, then commit."
        )


# -------------------------------------------------------------------------------------------- target


class _TargetGroup(click.Group):
    """`git bake target NAME` (bgit's form) is `git bake target show NAME`."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_TargetGroup, context_settings=CONTEXT)
def target() -> None:
    """List and show the targets of this lineage (TARGET sections of input.yml and earlier bakes).

    \b
    Examples:
      git bake target ls
      git bake target show yoda_target          # by plain name: the newest one
      git bake target yoda_target_3f2a9c1d04be  # by hashed name (bgit's form)
    """


@target.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def target_ls(as_json: bool) -> None:
    """List targets, newest first: hashed name, plain name, where it is recorded.

    \b
    Example:
      git bake target ls --json | jq -r '.[].name'
    """
    from gitbake.repo.targets import list_targets

    entries = list_targets(repository())
    if as_json:
        emit_json([e.as_json() for e in entries])
        return
    if not entries:
        click.echo("No targets yet. Define one in the TARGET section of input.yml.")
        return
    for e in entries:
        t = e.target
        where = (
            "input.yml (not baked yet)"
            if e.in_input
            else f"{t.source} @ {t.commit[:10] if t.commit else 'working tree'}"
        )
        flag = "  [bgit cloud: data not local]" if t.foreign else ""
        click.echo(f"{t.name:<40} {t.plain:<24} {where}{flag}")


target.add_command(target_ls, "list")


@target.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the target as JSON.")
def target_show(name: str, as_json: bool) -> None:
    """Show one target by plain or hashed name: its key, where it is recorded, and its config.

    \b
    Examples:
      git bake target show yoda_target
      git bake target show yoda_target_3f2a9c1d04be --json
    """
    import yaml

    from gitbake.repo.targets import show_target

    entry = show_target(repository(), name)
    if as_json:
        emit_json(entry.as_json())
        return
    t = entry.target
    click.echo(f"target:  {t.name}")
    click.echo(f"plain:   {t.plain}")
    if t.key:
        click.echo(f"key:     {t.key}")
    if t.stim_key:
        click.echo(f"stim:    {t.stim_key}")
    click.echo(
        f"from:    {'input.yml (not baked yet)' if entry.in_input else t.source + ' @ ' + (t.commit or 'working tree')}"
    )
    if t.foreign:
        click.echo("note:    made by bgit in Bread's cloud; its questions and answers are not on this machine")
    if t.config:
        click.echo("config:")
        click.echo(
            "  "
            + yaml.safe_dump(t.config, sort_keys=False, allow_unicode=True, width=100).rstrip().replace("\n", "\n  ")
        )
