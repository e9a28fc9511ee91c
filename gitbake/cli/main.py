"""`git bake` command line. click lives here only: parse, call one core function, render.

Every command accepts -h; read-only ones accept --json for scripts. Errors map to exit codes in one
place (`main`): 1 failed, 2 bad usage or input, 3 not a gitbake repository, 4 store corruption, 130 ^C.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gitbake import __version__
from gitbake.errors import EXIT_INTERRUPTED, GitbakeError, Issue

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _warn(issues: list[Issue]) -> None:
    for w in issues:
        click.echo(click.style("warning: ", fg="yellow") + w.render(), err=True)


class _BakeGroup(click.Group):
    """Maps gitbake's errors to exit codes inside click, so CliRunner and `git bake` behave alike."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GitbakeError as exc:
            click.echo(click.style("error: ", fg="red") + exc.render(), err=True)
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


# ---------------------------------------------------------------------------------------------- init


@cli.command(context_settings=CONTEXT)
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base-model", "base_model", metavar="MODEL", help="`tiny` (built in, offline), a Hugging Face id, or a model directory. Default: tiny.")
@click.option("--name", metavar="NAME", help="Repository name recorded in .bread. Default: the directory name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(directory: Path | None, base_model: str | None, name: str | None, as_json: bool) -> None:
    """Create a model repository, or make an existing git or bgit repository one.

    Writes input.yml (a commented example: the first commit runs nothing), .bread, recipe.yml,
    .gitignore and .gitattributes, and makes the first commit when it created the repository.
    Safe to re-run; in a bgit repository it keeps input.yml, .bread and recipe.yml.

    \b
    Examples:
      git bake init my-model --base-model tiny
      git bake init . --base-model Qwen/Qwen2.5-0.5B-Instruct    # in an existing repository
    """
    from gitbake.workflow.init import init as do_init

    report = do_init(directory or Path.cwd(), base_model=base_model, name=name)
    if as_json:
        _emit_json(report.as_json())
        return
    where = report.root
    if report.created_repo:
        click.echo(f"Created model repository {report.name} in {where} (base model: {report.base_model})")
    elif report.written:
        click.echo(f"Initialised {report.name} in {where} (base model: {report.base_model}): wrote {', '.join(report.written)}")
    else:
        click.echo(f"{where} is already a gitbake model repository ({report.name}, base model {report.base_model}); nothing to do")
    for note in report.notes:
        click.echo(f"note: {note}")
    cd = "" if Path.cwd().resolve() == where else f"cd {where} && "
    if report.created_repo:
        click.echo(f"\nNext: {cd}$EDITOR input.yml   (uncomment the example), then `git bake status` and `git commit -am 'first bake'`")
    elif report.written:
        click.echo(f"\nNext: {cd}git commit -m 'git bake init'   (the new files are staged)")


# ------------------------------------------------------------------------------------------ validate


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config, names and keys as JSON.")
def validate(as_json: bool) -> None:
    """Check input.yml and print it resolved: every default filled in, every name and key.

    Reports every error at once, each with file:line:column, the field and the fix (exit 2).

    \b
    Example:
      git bake validate && git commit -am "bake it"
    """
    import yaml

    from gitbake.repo.repo import open_repo
    from gitbake.workflow.status import validate as do_validate

    repo = open_repo(Path.cwd())
    loaded, plan = do_validate(repo)
    _warn(loaded.warnings + plan.warnings)
    if as_json:
        _emit_json({"valid": True, **plan.as_json()})
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


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Show what input.yml would run: which prompts, target and bake are new or changed, with names and keys.

    \b
    Example:
      git bake status --json | jq .would_run
    """
    from gitbake.repo.repo import open_repo
    from gitbake.workflow.status import status as do_status

    report = do_status(open_repo(Path.cwd()))
    if as_json:
        _emit_json(report.as_json())
        return
    _warn(report.warnings)
    p = report.plan.parent
    head = f"On branch {report.branch}" if report.branch else "HEAD detached"
    click.echo(f"{head} · model repository {report.repo_name} · base model {p.base_model}")
    if p.foreign:
        click.echo(f"Parent model: base model ({p.model_name} is in Bread's cloud, not on this machine)")
    elif p.adapters:
        click.echo(f"Parent model: {p.model_name or 'previous bake'} ({len(p.adapters)} adapter{'s' if len(p.adapters) != 1 else ''})")
    else:
        click.echo("Parent model: the base model (no bakes yet)")
    if report.changes:
        click.echo("\ninput.yml:")
        w_ref = max(len(c.ref) for c in report.changes)
        w_name = max(len(c.name) for c in report.changes)
        for c in report.changes:
            state = click.style(c.state, fg=_STATE_COLOUR.get(c.state))
            implied = "  (implied: empty student prompt)" if c.kind == "prompt" and report.plan.prompts[c.ref].source == "implied" else ""
            click.echo(f"  {c.kind:<7} {c.ref:<{w_ref}}  {c.name:<{w_name}}  {state}{implied}")
    if report.stages:
        click.echo("\nStages:")
        for row in report.stages:
            detail = ""
            if row.get("count") is not None:
                detail = f"{row['count']} {'questions' if row['stage'] == 'stim' else 'trajectories'}"
            ev = row.get("eval") or {}
            if ev.get("gap_closed") is not None:
                detail = f"gap_closed {ev['gap_closed']:.3f} (KL {ev['d_before']:.4f} -> {ev['d_after']:.4f})"
            if row.get("progress"):
                pr = row["progress"]
                detail = f"{pr['done']}/{pr['total']} {pr['unit']}, ETA {pr['eta_s']:.0f}s"
            click.echo(f"  {row['stage']:<8} {row['state']:<8} {detail}")
    for j in report.jobs:
        click.echo(f"\nJob {j['id']}: {j['state']}" + (f" — {j['error'].splitlines()[0]}" if j.get("error") and j["state"] != "done" else "")
                   + ("  (see `git bake jobs logs`)" if j["state"] in ("failed", "died") else "  (`git bake jobs wait` waits for it)"))
    for ref, info in report.pending.items():
        if info.get("superseded"):
            click.echo(f"\nA finished bake waits as {ref}, but a later bake has landed since: `git bake fetch --force` takes it "
                       "anyway (replacing that lineage), `git bake fetch --drop` discards it")
        else:
            click.echo(f"\nA finished bake is waiting as {ref} (the branch moved on while it ran): take it with `git bake fetch`")
    m = report.model
    if m.get("state") in ("stale", "absent"):
        click.echo(click.style("\nwarning: ", fg="yellow") + f".bake/model is not the model of HEAD ({m.get('model_name') or 'base model'}); "
                   f"fix: {m['fix']}", err=True)
    if report.commented_out:
        click.echo(f"\nCommented out: {', '.join(report.commented_out)}")
    baking = any(j["state"] in ("running", "queued") for j in report.jobs)
    if report.would_run and baking:
        click.echo(f"\nBaking now: {' -> '.join(report.would_run)}")
    elif report.would_run:
        click.echo(f"\nA commit of input.yml would run: {' -> '.join(report.would_run)}")
    else:
        click.echo("\nNothing to run: input.yml has no PROMPT, TARGET or BAKE. Uncomment or write a section, then commit.")


# -------------------------------------------------------------------------------------------- target


class _TargetGroup(click.Group):
    """`git bake target NAME` (bgit's form) is `git bake target show NAME`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


@cli.group(cls=_TargetGroup, context_settings=CONTEXT)
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
    from gitbake.repo.repo import open_repo
    from gitbake.repo.targets import list_targets

    entries = list_targets(open_repo(Path.cwd()))
    if as_json:
        _emit_json([e.as_json() for e in entries])
        return
    if not entries:
        click.echo("No targets yet. Define one in the TARGET section of input.yml.")
        return
    for e in entries:
        t = e.target
        where = "input.yml (not baked yet)" if e.in_input else f"{t.source} @ {t.commit[:10] if t.commit else 'working tree'}"
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

    from gitbake.repo.repo import open_repo
    from gitbake.repo.targets import show_target

    entry = show_target(open_repo(Path.cwd()), name)
    if as_json:
        _emit_json(entry.as_json())
        return
    t = entry.target
    click.echo(f"target:  {t.name}")
    click.echo(f"plain:   {t.plain}")
    if t.key:
        click.echo(f"key:     {t.key}")
    if t.stim_key:
        click.echo(f"stim:    {t.stim_key}")
    click.echo(f"from:    {'input.yml (not baked yet)' if entry.in_input else t.source + ' @ ' + (t.commit or 'working tree')}")
    if t.foreign:
        click.echo("note:    made by bgit in Bread's cloud; its questions and answers are not on this machine")
    if t.config:
        click.echo("config:")
        click.echo("  " + yaml.safe_dump(t.config, sort_keys=False, allow_unicode=True, width=100).rstrip().replace("\n", "\n  "))


# ----------------------------------------------------------------------------------------------- run


@cli.command(context_settings=CONTEXT)
@click.argument("stages", nargs=-1, type=click.Choice(["stim", "rollout", "bake"], case_sensitive=False))
@click.option("--force", is_flag=True, help="Run the stages even when their results are in the store.")
@click.option("--detach", "-d", is_flag=True, help="Run in the background; `git bake jobs wait` / `git bake fetch` collect it.")
@click.option("--json", "as_json", is_flag=True, help="Print what ran as JSON.")
def run(stages: tuple[str, ...], force: bool, detach: bool, as_json: bool) -> None:
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
    Examples:
      git bake run
      git bake run stim
      git bake run bake --force
      git bake run --detach && git bake jobs wait
    """
    from gitbake import git
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    wanted = [s.lower() for s in stages] or None
    if detach:
        from gitbake.workflow import jobs
        from gitbake.workflow.pipeline import committed_input

        # refuse uncommitted changes and what cannot run (limits, model shape) now, not in the background
        repo.plan(committed_input(repo)[0])
        head = git.rev_parse(repo.root, "HEAD") or ""
        job = jobs.start(repo, head, git.symbolic_head(repo.root), wanted, force)
        if as_json:
            _emit_json(job.as_json())
            return
        ahead = [j for j in jobs.active(repo) if j.id != job.id]
        click.echo(f"started job {job.id} in the background (log: {job.log_path})"
                   + (f"; it is queued behind job {ahead[0].id}" if ahead else ""))
        click.echo("`git bake status` shows its progress; `git bake jobs wait` waits for it; `git bake jobs cancel` stops it")
        return
    from gitbake.workflow.run import run_and_commit

    report = run_and_commit(repo, wanted, force=force, say=lambda m: click.echo(m, err=True))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        _emit_json(report.as_json())
        return
    for r in report.results:
        how = "cached" if r.cached else f"ran in {r.seconds:.1f}s"
        unit = "questions" if r.stage == "stim" else "trajectories"
        click.echo(f"{r.stage:<8} {how:<14} {r.count} {unit}  key {r.key[:12]}  -> {r.manifest[:12]}")
        if r.stage == "bake" and r.extra.get("gap_closed") is not None:
            e = r.extra
            click.echo(f"         eval: gap_closed {e['gap_closed']:.3f} (KL {e['d_before']:.4f} -> {e['d_after']:.4f} nats/token)"
                       + (f", final loss {e['final_loss']:.4f}" if e.get("final_loss") is not None else ""))
        for note in r.notes:
            click.echo(f"         note: {note}")
    for line in report.outcome():
        click.echo(line, err=line.startswith(("warning:", "note:")))


def _view(stage: str, target_name: str | None, limit: int, offset: int, count: bool, jsonl: Path | None, as_json: bool) -> None:
    import itertools

    from gitbake.workflow.pipeline import find_stage_output, read_records
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    name, key, manifest = find_stage_output(repo, stage, target_name)
    records = read_records(repo.store, manifest, stage)
    if count:
        n = sum(1 for _ in records)
        click.echo(json.dumps({"target": name, "count": n}) if as_json else str(n))
        return
    if jsonl is not None:
        n = 0
        with open(jsonl, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        click.echo(f"wrote {n} {stage} records of {name} to {jsonl}")
        return
    page = list(itertools.islice(records, offset, offset + limit))
    if as_json:
        _emit_json({"target": name, "key": key, "offset": offset, "records": page})
        return
    click.echo(f"# {stage} of {name} (key {key[:12]}), records {offset}..{offset + len(page) - 1}")
    for rec in page:
        shown = {k: v for k, v in rec.items() if not k.endswith("_ids")}  # token ids: use --json / --jsonl
        click.echo(json.dumps(shown, ensure_ascii=False, indent=2))


def _viewer_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print the page as JSON (token ids included).")(f)
    f = click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), help="Export every record to FILE as JSON lines.")(f)
    f = click.option("-c", "--count", is_flag=True, help="Only print how many records there are.")(f)
    f = click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Skip this many records.")(f)
    f = click.option("-l", "--limit", default=10, show_default=True, type=click.IntRange(min=1), help="Show at most this many records.")(f)
    f = click.option("--target", "target_name", metavar="NAME", help="A target by plain or hashed name (default: input.yml's, else the newest).")(f)
    return f


@cli.command(context_settings=CONTEXT)
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


@cli.command(context_settings=CONTEXT)
@_viewer_options
def rollout(target_name: str | None, limit: int, offset: int, count: bool, jsonl: Path | None, as_json: bool) -> None:
    """Show the teacher's answers of a target (its rollout output), page by page.

    \b
    Examples:
      git bake rollout -c
      git bake rollout --target yoda_target --jsonl trajectories.jsonl
    """
    _view("rollout", target_name, limit, offset, count, jsonl, as_json)


# --------------------------------------------------------------------------------------------- store


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _progress(label: str) -> Any:
    """A one-line progress report on stderr when it is a terminal; silent otherwise (scripts, tests)."""
    import sys

    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int, nbytes: int = 0) -> None:
        extra = f", {_human(nbytes)}" if nbytes else ""
        click.echo(f"\r{label}: {done}/{total}{extra}", err=True, nl=done == total)

    return report


@cli.group(context_settings=CONTEXT)
def store() -> None:
    """Inspect and maintain the content-addressed store of adapters and datasets.

    The store lives in <git-common-dir>/bake, or where `git config bake.storePath DIR` says (a store
    may be shared by several clones). Format: docs/store-format.md.

    \b
    Examples:
      git bake store du
      git bake store fsck
      git bake store gc --dry-run
    """


@store.command("fsck", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_fsck(as_json: bool) -> None:
    """Re-hash every object; check every manifest and what HEAD's model needs; name what is wrong (exit 4).

    Corrupt objects (and anything in objects/ that is not a regular file) move to quarantine/.
    Leftovers in tmp/ are removed (folders only when no other process uses the store).

    \b
    Example:
      git bake store fsck || git bake pull     # re-fetch what was quarantined
    """
    from gitbake.errors import EXIT_CORRUPT
    from gitbake.repo.fsck import check_head, fsck
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    report = fsck(repo.store, progress=_progress("checking objects"), head=check_head(repo.root))
    if as_json:
        _emit_json(report.as_json())
    else:
        click.echo(f"checked {report.checked} objects ({_human(report.bytes)}); removed {report.tmp_removed} leftover(s) from tmp/")
        if report.tmp_kept:
            click.echo(f"kept {report.tmp_kept} folder(s) in tmp/: another process is using the store (run fsck again when it is done)")
        for digest, actual in report.corrupt.items():
            click.echo(f"corrupt: {digest} (hashes to {actual}); moved to quarantine/", err=True)
        for digest, what in report.not_files.items():
            click.echo(f"corrupt: {digest} is {what}, not a file; moved to quarantine/", err=True)
        for digest, why in report.bad_manifests.items():
            click.echo(f"bad manifest: {digest}: {why}", err=True)
        for manifest, missing in report.missing_in_manifests.items():
            click.echo(f"incomplete: manifest {digest_short(manifest)} names {len(missing)} missing object(s): {', '.join(missing)}", err=True)
        for digest, who in report.missing_needed.items():
            click.echo(f"missing: {digest}, which {who} names", err=True)
        for who, why in report.head_problems.items():
            click.echo(f"damaged: {who}: {why}", err=True)
        if report.dangling_keys:
            click.echo(f"{len(report.dangling_keys)} stage key(s) point at missing objects (they count as not cached)")
        if report.ok:
            click.echo("store OK")
        else:
            click.echo("hint: `git bake pull` fetches good copies from the default remote", err=True)
    if not report.ok:
        raise SystemExit(EXIT_CORRUPT)


def digest_short(d: str) -> str:
    return d[:12]


@store.command("gc", context_settings=CONTEXT)
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be deleted.")
@click.option("--grace", default="14d", show_default=True, metavar="AGE", help="Keep objects and keys younger than this (30m, 12h, 14d, 0).")
@click.option("--force", is_flag=True, help="Also delete unreachable objects that no remote has (they may be the only copy).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_gc(dry_run: bool, grace: str, force: bool, as_json: bool) -> None:
    """Delete objects that no ref, reflog entry or recent key reaches.

    Counts the refs of every clone registered with the store. When remotes are configured, an
    unreachable object that no remote has is kept (it may be the only copy) unless --force.

    \b
    Examples:
      git bake store gc --dry-run
      git bake store gc --grace 0 --force      # everything unreachable, now
    """
    from gitbake.store import remote as remote_mod
    from gitbake.errors import GitbakeError
    from gitbake.repo.gc import gc, parse_grace
    from gitbake.repo.repo import open_repo
    from gitbake.repo.storepath import forget_clones, registered_clones

    grace_s = parse_grace(grace)
    repo = open_repo(Path.cwd())
    st = repo.store
    clones, missing, removed = registered_clones(st)
    if removed and not dry_run:
        forget_clones(st, removed)  # worktrees git has removed: nothing of theirs is left to keep
    if missing and not force:
        raise GitbakeError(
            "clones registered with this store are missing, so their models cannot be told apart from garbage: "
            + ", ".join(map(str, missing)),
            "mount or move them back; if they were deleted, run `git bake store gc --force` to forget them",
        )
    if missing and not dry_run:
        forget_clones(st, missing)
    remotes = [remote_mod.Remote(n, u) for n, u in remote_mod.list_remotes(repo.root).items()]
    report = gc(st, clones, grace_s, dry_run=dry_run, force=force, remote_has=remote_mod.have_any(remotes) if remotes else None)
    if as_json:
        _emit_json(report.as_json())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{report.live} live object(s) across {len(clones)} clone(s); {verb} {len(report.deleted)} ({_human(report.deleted_bytes)})")
    if report.keys_deleted:
        click.echo(f"{verb} {len(report.keys_deleted)} stage key(s) whose result is gone")
    if report.kept_unpushed:
        click.echo(f"kept {len(report.kept_unpushed)} unreachable object(s) that no remote has: `git bake push` them, or use --force")
    if report.leases:
        click.echo(f"kept what {len(report.leases)} running bake(s) read or stored")
    if report.tmp_removed:
        click.echo(f"removed {report.tmp_removed} leftover(s) from tmp/")


@store.command("du", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_du(as_json: bool) -> None:
    """Show where the store is and what it holds.

    \b
    Example:
      git bake store du --json | jq .bytes
    """
    from gitbake.repo.fsck import du
    from gitbake.repo.repo import open_repo

    report = du(open_repo(Path.cwd()).store)
    if as_json:
        _emit_json(report.as_json())
        return
    click.echo(f"store: {report.root}")
    click.echo(f"objects: {report.objects} ({_human(report.bytes)}), of which {report.manifests} manifest(s)")
    keys = ", ".join(f"{k} {v}" for k, v in sorted(report.keys.items())) or "none"
    click.echo(f"stage keys: {keys}")
    if report.tmp_bytes or report.quarantine_bytes:
        click.echo(f"tmp/: {_human(report.tmp_bytes)}; quarantine/: {_human(report.quarantine_bytes)}")


# -------------------------------------------------------------------------------------------- remote


@cli.group(context_settings=CONTEXT)
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
    from gitbake.repo.repo import open_repo

    root = open_repo(Path.cwd()).root
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
    from gitbake.repo.repo import open_repo

    root = open_repo(Path.cwd()).root
    remotes, default = remote_mod.list_remotes(root), remote_mod.default_remote(root)
    if as_json:
        _emit_json({"default": default, "remotes": remotes})
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
    from gitbake.repo.repo import open_repo

    remote_mod.remove_remote(open_repo(Path.cwd()).root, name)
    click.echo(f"removed remote {name}")


def _transfer(verb: str, name: str | None, revs: tuple[str, ...], jobs: int, as_json: bool, force: bool = False) -> None:
    from gitbake.repo import reach
    from gitbake.store import remote as remote_mod
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    # `git bake push REV` with no remote name: a first argument that is a revision, not a remote
    if name is not None and name not in remote_mod.list_remotes(repo.root) and "://" not in name and not name.startswith(("/", ".", "~")):
        from gitbake import git

        if git.rev_parse(repo.root, name) is not None:
            revs, name = (name, *revs), None
    target = remote_mod.resolve(repo.root, name)
    roots = reach.needed_by(repo.root, list(revs) or ["HEAD"])
    progress = _progress(f"{verb} {target.name}")
    if verb == "push":
        report = remote_mod.push(repo.store, target, roots, jobs=jobs, progress=progress, force=force)
    else:
        report = remote_mod.pull(repo.store, target, roots, jobs=jobs, progress=progress)
    if as_json:
        _emit_json(report.as_json())
    else:
        moved = "uploaded" if verb == "push" else "downloaded"
        click.echo(f"{verb} {target.name} ({target.url}): {report.needed} object(s) needed, {len(report.transferred)} {moved} "
                   f"({_human(report.bytes)}), {report.skipped} already there")
    report.raise_for_problems(verb)
    if verb == "pull" and (not revs or "HEAD" in revs):
        from gitbake.workflow.run import refresh_model

        state = refresh_model(repo, fetch=False)  # what was pulled for HEAD is HEAD's model: put it in place
        if state["state"] == "updated" and not as_json:
            click.echo(f".bake/model is now {state.get('model_name') or 'the base model'}")


@cli.command(context_settings=CONTEXT)
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


@cli.command(context_settings=CONTEXT)
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


# --------------------------------------------------------------------------------------- hooks, jobs


@cli.command("hook", hidden=True, context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(name: str, args: tuple[str, ...]) -> None:
    """Run a git hook (the shims in .git/hooks call this)."""
    from gitbake.workflow.hooks import main as hook_main

    raise SystemExit(hook_main(name, list(args)))


@cli.command("merge-driver", hidden=True, context_settings=CONTEXT)
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


@cli.group(context_settings=CONTEXT)
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
    from gitbake.repo.repo import open_repo

    root = open_repo(Path.cwd()).root
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
    from gitbake.repo.repo import open_repo

    for note in uninstall(open_repo(Path.cwd()).root):
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
    from gitbake.repo.repo import open_repo

    states = installed(open_repo(Path.cwd()).root)
    if as_json:
        _emit_json(states)
        return
    for name, state in states.items():
        click.echo(f"{name:<14} {state}")


def _ago(t: float | None) -> str:
    import time as _time

    if not t:
        return "-"
    s = max(0, int(_time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _job_line(j: Any) -> str:
    p = j.progress() if j.state == "running" else None
    detail = ""
    if p:
        detail = f"  {p['label']}: {p['done']}/{p['total']} {p['unit']}, ETA {p['eta_s']:.0f}s"
    elif j.error and j.state != "done":
        detail = f"  {j.error.splitlines()[0][:100]}"
    elif j.result and (j.result.get("commit") or {}).get("commit"):
        c = j.result["commit"]
        detail = f"  -> {c['commit'][:12]}" + (f" (kept as {c['pending']})" if c.get("pending") else "")
    return f"{j.id}  {j.state:<9} {j.trigger[:10]}  {_ago(j.created):<8}{detail}"


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """Background bake jobs of this repository (started by commits and `git bake run --detach`).

    \b
    Examples:
      git bake jobs                # = jobs ls
      git bake jobs wait           # until the running and queued jobs finish; exit 1 if one failed
      git bake jobs logs           # the newest job's log
      git bake jobs cancel         # stop the running job (nothing is stored or committed)
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(jobs_ls)


@jobs.command("ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def jobs_ls(as_json: bool) -> None:
    """List jobs, newest first: id, state, the commit baked, age, progress or result.

    \b
    Example:
      git bake jobs ls --json | jq '.[0].state'
    """
    from gitbake.workflow import jobs as jobs_mod
    from gitbake.repo.repo import open_repo

    found = jobs_mod.list_jobs(open_repo(Path.cwd()))
    if as_json:
        _emit_json([j.as_json() for j in found])
        return
    if not found:
        click.echo("No bake jobs yet. A commit that changes input.yml starts one.")
    for j in found:
        click.echo(_job_line(j))


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
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    todo = [jobs_mod.find(repo, job_id)] if job_id else jobs_mod.unsettled(repo)
    done = [jobs_mod.wait(j, timeout) for j in todo]
    if as_json:
        _emit_json([j.as_json() for j in done])
    else:
        for j in done:
            click.echo(_job_line(j))
        if not done:
            click.echo("no job is running")
    if any(j.state != "done" for j in done):
        raise SystemExit(1)


@jobs.command("logs", context_settings=CONTEXT)
@click.argument("job_id", required=False)
def jobs_logs(job_id: str | None) -> None:
    """Print a job's log (default: the newest job).

    \b
    Example:
      git bake jobs logs | tail
    """
    from gitbake.workflow import jobs as jobs_mod
    from gitbake.repo.repo import open_repo

    job = jobs_mod.find(open_repo(Path.cwd()), job_id)
    try:
        click.echo(job.log_path.read_text(errors="replace"), nl=False)
    except FileNotFoundError:
        click.echo("(no log)")


@jobs.command("cancel", context_settings=CONTEXT)
@click.argument("job_id", required=False)
def jobs_cancel(job_id: str | None) -> None:
    """Stop a running or queued job (default: the running one). Nothing is stored or committed.

    \b
    Example:
      git bake jobs cancel
    """
    from gitbake.workflow import jobs as jobs_mod
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    live = jobs_mod.active(repo)  # the running one first, then the newest queued
    job = jobs_mod.find(repo, job_id) if job_id else next(iter(sorted(live, key=lambda j: j.state != "running")), None)
    if job is None:
        click.echo("no job is running")
        return
    job = jobs_mod.cancel(job)
    click.echo(f"job {job.id}: {job.state}")


@cli.command(context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Take it even if the branch's model changed since it was baked.")
@click.option("--drop", is_flag=True, help="Discard the waiting results instead (their adapters stay in the store until gc).")
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
    from gitbake.workflow import bakecommit, jobs as jobs_mod
    from gitbake import git
    from gitbake.repo.repo import open_repo
    from gitbake.workflow.run import refresh_model

    repo = open_repo(Path.cwd())
    waiting = bakecommit.pending(repo.root, git.symbolic_head(repo.root))
    if not waiting:
        running = jobs_mod.active(repo)
        msg = f"job {running[0].id} is still {running[0].state}: `git bake jobs wait`, then fetch" if running else "no bake result is waiting for this branch"
        if as_json:
            _emit_json({"taken": [], "message": msg})
        else:
            click.echo(msg)
        return
    if drop:
        for ref in sorted(waiting):
            git.delete_ref(repo.root, ref)
        if as_json:
            _emit_json({"dropped": sorted(waiting)})
        else:
            click.echo(f"dropped {', '.join(sorted(waiting))}")
        return
    taken = []
    for ref in sorted(waiting):
        result = bakecommit.take_pending(repo.root, ref, force=force)
        taken.append(result.as_json())
        if not as_json:
            click.echo(f"took {ref}: bake commit {result.commit[:12]}")
    refresh_model(repo)
    if as_json:
        _emit_json({"taken": taken})


# ------------------------------------------------------------------------------------- model views


@cli.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path), help="Materialise here instead of .bake/model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def checkout(rev: str, dest: Path | None, as_json: bool) -> None:
    """Materialise the model of REV (default HEAD) without moving HEAD: .bake/model, or --to DIR.

    Files are linked from the store (reflink or hardlink, read-only), so this takes milliseconds
    whatever the model's size. Missing objects come from the bake remote when one is configured.

    \b
    Examples:
      git bake checkout                 # after a `git reset`: .bake/model follows HEAD again
      git bake checkout HEAD~2 --to /tmp/older-model
    """
    from gitbake.repo.repo import open_repo
    from gitbake.workflow.run import checkout as do_checkout

    out = do_checkout(open_repo(Path.cwd()), rev, dest)
    if as_json:
        _emit_json(out)
        return
    n = len(out["adapters"])
    hows = sorted(set(out["methods"].values()))
    click.echo(f"{out['dest']}: {out.get('model_name') or 'the base model'} of {rev} ({out['commit'][:12]}), base {out['base_model']}, "
               f"{n} adapter{'s' if n != 1 else ''}" + (f" ({', '.join(hows)})" if hows else ""))


def _metrics_text(m: dict[str, Any]) -> str:
    parts = []
    if m.get("final_loss") is not None:
        parts.append(f"loss {m['final_loss']:.4f}")
    if m.get("gap_closed") is not None:
        parts.append(f"gap_closed {m['gap_closed']:.3f}")
    return ", ".join(parts)


@cli.command("log", context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def log_cmd(rev: str, as_json: bool) -> None:
    """Model versions on this branch (or REV), newest first: commit, date, bake, loss, gap_closed.

    \b
    Example:
      git bake log --json | jq '.[0].metrics.gap_closed'
    """
    import datetime

    from gitbake.repo.history import log
    from gitbake.repo.repo import open_repo

    versions = log(open_repo(Path.cwd()).root, rev)
    if as_json:
        _emit_json([v.as_json() for v in versions])
        return
    if not versions:
        click.echo("No model versions yet: commit an input.yml with a BAKE section.")
    for v in versions:
        date = datetime.datetime.fromtimestamp(v.time).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{v.commit[:10]}  {date}  {v.bake_name or '?':<36} {_metrics_text(v.metrics)}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def tree(as_json: bool) -> None:
    """The lineage of every model on every branch: each bake under the model it was baked on.

    \b
    Example:
      git bake tree
    """
    from gitbake.repo.history import TreeNode, tree as do_tree
    from gitbake.repo.repo import open_repo

    roots = do_tree(open_repo(Path.cwd()).root)
    if as_json:
        _emit_json([r.as_json() for r in roots])
        return
    if not roots:
        click.echo("No model versions yet.")

    def walk(node: TreeNode, prefix: str, last: bool, top: bool) -> None:
        v = node.version
        extra = ""
        if v is not None:
            extra = "  " + "  ".join(x for x in (_metrics_text(v.metrics), f"[{', '.join(v.refs)}]" if v.refs else "", v.commit[:10]) if x)
        click.echo(("" if top else prefix + ("└── " if last else "├── ")) + node.label + extra)
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        for i, c in enumerate(node.children):
            walk(c, child_prefix, i == len(node.children) - 1, False)

    for r in roots:
        walk(r, "", True, True)


@cli.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(rev: str, as_json: bool) -> None:
    """The model of REV: base model, adapter chain, bake, metrics, and whether it is in the local store.

    \b
    Examples:
      git bake show
      git bake show HEAD~2 --json
    """
    from gitbake.repo.history import version_at
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    v = version_at(repo.root, rev)
    local = {a: repo.store.has(a) for a in v.adapters}
    if as_json:
        _emit_json({**v.as_json(), "local": local})
        return
    click.echo(f"commit:     {v.commit}")
    click.echo(f"model:      {v.model_name or 'the base model (nothing baked yet)'}")
    click.echo(f"base model: {v.base_model}")
    if v.bake_name:
        click.echo(f"bake:       {v.bake_name}" + (f" (on top of {v.parent_bake})" if v.parent_bake else ""))
    for i, a in enumerate(v.adapters):
        click.echo(f"adapter {i}:  {a}" + ("" if local[a] else "  (not in the local store: git bake pull)"))
    for k, val in v.metrics.items():
        click.echo(f"  {k}: {val}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(as_json: bool) -> None:
    """Every model version on every branch, and whether its adapters are in the local store.

    \b
    Example:
      git bake models --json | jq -r '.[] | select(.local | not) | .commit'
    """
    from gitbake.repo.history import models as do_models
    from gitbake.repo.repo import open_repo

    repo = open_repo(Path.cwd())
    rows = do_models(repo.root, repo.store.has)
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("No model versions yet.")
    for r in rows:
        where = f"[{', '.join(r['refs'])}]" if r["refs"] else ""
        click.echo(f"{r['commit'][:10]}  {r['bake_name'] or '?':<36} {len(r['adapters'])} adapter(s)  "
                   f"{'local' if r['local'] else 'not local'}  {where}")


@cli.command("eval", context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print the eval as JSON.")
def eval_cmd(rev: str, as_json: bool) -> None:
    """Recompute the eval of REV's model: KL to the teacher on held-out questions, before and after.

    The result is stored beside the adapter; the model's identity does not change.

    \b
    Examples:
      git bake eval
      git bake eval HEAD~2 --json
    """
    from gitbake.workflow.pipeline import reevaluate
    from gitbake.repo.repo import open_repo

    report = reevaluate(open_repo(Path.cwd()), rev, say=lambda m: click.echo(m, err=True))
    if as_json:
        _emit_json(report)
        return
    click.echo(f"{report['bake']}: gap_closed {report['gap_closed']:.3f} (KL {report['d_before']:.4f} -> {report['d_after']:.4f} nats/token) "
               f"on {report['questions']} held-out question(s)")



# ------------------------------------------------------------------------------------ using models


@cli.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("-p", "--prompt", "prompt", metavar="TEXT", help="Answer TEXT once and exit (no REPL).")
@click.option("--system", metavar="TEXT", help="A system prompt to start with (in the REPL: /system TEXT).")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256, show_default=True)
@click.option("--checkpoint", type=int, metavar="STEP", help="Use the last bake's checkpoint saved at training step STEP.")
def chat(rev: str, prompt: str | None, system: str | None, temperature: float, max_tokens: int, checkpoint: int | None) -> None:
    """Talk to the model of REV (default HEAD): answers stream as they are generated.

    \b
    In the REPL: /system TEXT, /clear, /status, /compare [TEXT] (the base model's answer beside this
    version's), /help, /quit. Line editing and history work as in a shell.

    \b
    Examples:
      git bake chat
      git bake chat HEAD~2 -p "What is the capital of France?" --temperature 0
      git bake chat --checkpoint 200
    """
    import sys

    from gitbake.use.chat import handle, open_session, repl
    from gitbake.repo.repo import open_repo

    session = open_session(open_repo(Path.cwd()), rev, temperature, max_tokens, checkpoint, system)

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if prompt is not None:
        session.ask(prompt, out)
        out("\n")
        return
    if not sys.stdin.isatty():  # piped input: each line is a turn or a command
        for line in sys.stdin:
            if not handle(session, line, out):
                break
        return
    repl(session, input, out)


@cli.command(context_settings=CONTEXT)
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--api-key", envvar="GITBAKE_API_KEY", metavar="KEY",
              help="Require `Authorization: Bearer KEY`. Prefer env GITBAKE_API_KEY or --api-key-file: `ps` shows arguments.")
@click.option("--api-key-file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help="Read the API key from FILE's first line.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also accept requests whose Host header is NAME (by default only the bound address and localhost).")
@click.option("--max-batch", type=click.IntRange(1, 256), default=16, show_default=True, help="Concurrent requests decoded together.")
@click.option("--max-prompt-tokens", type=click.IntRange(1), metavar="N",
              help="Refuse longer prompts with 400 (default: the model's context minus the request's max_tokens).")
def serve(revs: tuple[str, ...], host: str, port: int, api_key: str | None, api_key_file: Path | None, allow_hosts: tuple[str, ...],
          max_batch: int, max_prompt_tokens: int | None) -> None:
    """Serve the models of REV... (default HEAD) over an OpenAI-compatible HTTP API.

    GET /v1/models lists them, each named by its bake name; POST /v1/chat/completions answers, streamed
    with "stream": true. Concurrent requests are batched into shared forward passes.

    \b
    Examples:
      git bake serve
      GITBAKE_API_KEY=secret git bake serve main formal --port 8080
      curl -s localhost:8000/v1/models
    """
    from gitbake.repo.repo import open_repo
    from gitbake.use.serve import Server, is_loopback, load_served, read_api_key

    key = read_api_key(api_key, api_key_file)
    if api_key is not None and click.get_current_context().get_parameter_source("api_key") == click.core.ParameterSource.COMMANDLINE:
        click.echo("warning: --api-key is visible to other users of this machine (ps); use GITBAKE_API_KEY or --api-key-file", err=True)
    if key is None and not is_loopback(host):
        click.echo(f"warning: listening on {host} without an API key: anyone who can reach this machine can use these models; "
                   "set GITBAKE_API_KEY or --api-key-file", err=True)
    models = load_served(open_repo(Path.cwd()), list(revs), max_batch)
    server = Server(models, host, port, key, max_prompt_tokens, allow_hosts)
    click.echo(f"serving {', '.join(models)} at {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.close()


@cli.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), help="Write the adapter chain (PEFT format) here.")
@click.option("--merged", "merged_dir", type=click.Path(path_type=Path), help="Write a full model with the adapters merged here.")
@click.option("--force", is_flag=True, help="Replace a non-empty destination.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(rev: str, adapter_dir: Path | None, merged_dir: Path | None, force: bool, as_json: bool) -> None:
    """Export the model of REV: its adapter chain (--adapter DIR) or a merged model (--merged DIR).

    A merged directory loads with AutoModelForCausalLM.from_pretrained(DIR), without gitbake or PEFT.

    \b
    Examples:
      git bake export HEAD --merged ./yoda-merged
      git bake export v1 --adapter ./yoda-adapters
    """
    from gitbake.errors import UsageError
    from gitbake.repo.repo import open_repo

    if (adapter_dir is None) == (merged_dir is None):
        raise UsageError("say what to export: --adapter DIR or --merged DIR (one of them)", "e.g. git bake export HEAD --merged ./out")
    repo = open_repo(Path.cwd())
    if adapter_dir is not None:
        from gitbake.use.export import export_adapters

        out = export_adapters(repo, rev, adapter_dir, force)
    else:
        from gitbake.use.export import export_merged

        out = export_merged(repo, rev, merged_dir or Path("."), force)
    if as_json:
        _emit_json(out)
        return
    n = len(out["adapters"])
    click.echo(f"exported {out.get('model_name') or out['base_model']} ({n} adapter{'s' if n != 1 else ''}, {out['kind']}) to {out['dest']}")


@cli.command(context_settings=CONTEXT)
@click.argument("bake", required=False)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the curve to a PNG (needs matplotlib).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the metrics as CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics and eval as JSON.")
def metrics(bake: str | None, png: Path | None, as_csv: bool, as_json: bool) -> None:
    """The loss curve of BAKE (a bake name or a revision; default: HEAD's last bake) and its eval.

    \b
    Examples:
      git bake metrics
      git bake metrics yoda_bake --png loss.png
      git bake metrics HEAD~2 --csv > loss.csv
    """
    from gitbake.use.metrics import chart, find, to_csv, to_png
    from gitbake.repo.repo import open_repo

    m = find(open_repo(Path.cwd()), bake)
    if png is not None:
        to_png(m, png)
    if as_json:
        _emit_json(m.as_json())
        return
    if as_csv:
        click.echo(to_csv(m.rows), nl=False)
        return
    click.echo(f"{m.bake} ({m.commit[:12]}): {len(m.rows)} steps")
    click.echo(chart([float(r.get("loss", 0.0)) for r in m.rows]))
    e = m.eval
    if e.get("gap_closed") is not None:
        click.echo(f"eval: gap_closed {e['gap_closed']:.3f} (KL {e['d_before']:.4f} -> {e['d_after']:.4f} nats/token) "
                   f"on {e.get('questions')} question(s)" + (f"; {e['note']}" if e.get("note") else ""))
    losses = [float(r.get("loss", "nan")) for r in m.rows]
    if finite := [x for x in losses if x == x and abs(x) != float("inf")]:
        click.echo(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}, min {min(finite):.4f}")
    if png is not None:
        click.echo(f"wrote {png}")


@cli.command(context_settings=CONTEXT)
@click.argument("rev1")
@click.argument("rev2", required=False)
@click.option("--questions", "questions_file", type=click.Path(dir_okay=False, path_type=Path), help="Questions to ask (.txt: one per line; .jsonl).")
@click.option("--samples", type=click.IntRange(1, 64), default=2, show_default=True, help="Answers sampled per question.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--top", type=int, default=5, show_default=True, help="How many of the most different questions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def diff(rev1: str, rev2: str | None, questions_file: Path | None, samples: int, max_tokens: int, top: int, as_json: bool) -> None:
    """How the models of REV1 and REV2 differ in behaviour (with one REV: it against its parent model).

    Mean per-token KL(REV1 || REV2) on answers REV1's model gives to the held-out questions of their
    lineages (or --questions FILE), the questions where they differ most, and both answers.

    \b
    Examples:
      git bake diff HEAD              # what the last bake changed
      git bake diff main formal --json
    """
    from gitbake.use.chat import side_by_side
    from gitbake.use.diff import diff as do_diff
    from gitbake.repo.repo import open_repo

    out = do_diff(open_repo(Path.cwd()), rev1, rev2, questions_file, samples, max_tokens, top)
    if as_json:
        _emit_json(out)
        return
    click.echo(f"{out['a']['name']} ({rev1}) vs {out['b']['name']} ({rev2 or 'its parent model'}): "
               f"mean KL {out['mean_kl']:.4f} nats/token over {out['tokens']} tokens, {out['asked']} question(s)")
    if out.get("note"):
        click.echo(f"note: {out['note']}")
    for q in out["questions"]:
        click.echo(f"\n{q['question']}   (KL {q['kl']:.4f})")
        click.echo(side_by_side(out["a"]["name"], q["answer_a"], out["b"]["name"], q["answer_b"]))



# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`git-bake`, which git runs as `git bake`)."""
    cli.main(args=argv, prog_name="git bake")
