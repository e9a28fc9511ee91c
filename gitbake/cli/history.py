"""`git bake checkout`, `log`, `tree`, `show`, `models` and `eval`: the model versions in git."""

from __future__ import annotations

from pathlib import Path

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json, metrics_text
from gitbake.reporter import Reporter


@click.command(context_settings=CONTEXT)
@click.argument("rev", default="HEAD")
@click.option(
    "--to", "dest", type=click.Path(file_okay=False, path_type=Path), help="Materialise here instead of .bake/model."
)
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
    from gitbake.workflow.run import checkout as do_checkout

    out = do_checkout(repository(), rev, dest)
    if as_json:
        emit_json(out.as_json())
        return
    model = out.model.spec
    n = len(model.adapters)
    hows = sorted(set(out.model.methods.values()))
    click.echo(
        f"{out.model.dest}: {model.model_name or 'the base model'} of {rev} ({out.commit[:12]}), base "
        f"{model.base_model}, "
        f"{n} adapter{'s' if n != 1 else ''}" + (f" ({', '.join(hows)})" if hows else "")
    )


@click.command("log", context_settings=CONTEXT)
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

    versions = log(repository().root, rev)
    if as_json:
        emit_json([v.as_json() for v in versions])
        return
    if not versions:
        click.echo("No model versions yet: commit an input.yml with a BAKE section.")
    for v in versions:
        date = datetime.datetime.fromtimestamp(v.time).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{v.commit[:10]}  {date}  {v.bake_name or '?':<36} {metrics_text(v.metrics)}")


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def tree(as_json: bool) -> None:
    """The lineage of every model on every branch: each bake under the model it was baked on.

    \b
    Example:
      git bake tree
    """
    from gitbake.repo.history import TreeNode
    from gitbake.repo.history import tree as do_tree

    roots = do_tree(repository().root)
    if as_json:
        emit_json([r.as_json() for r in roots])
        return
    if not roots:
        click.echo("No model versions yet.")

    def walk(node: TreeNode, prefix: str, last: bool, top: bool) -> None:
        v = node.version
        extra = ""
        if v is not None:
            extra = "  " + "  ".join(
                x for x in (metrics_text(v.metrics), f"[{', '.join(v.refs)}]" if v.refs else "", v.commit[:10]) if x
            )
        click.echo(("" if top else prefix + ("└── " if last else "├── ")) + node.label + extra)
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        for i, c in enumerate(node.children):
            walk(c, child_prefix, i == len(node.children) - 1, False)

    for r in roots:
        walk(r, "", True, True)


@click.command(context_settings=CONTEXT)
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

    repo = repository()
    v = version_at(repo.root, rev)
    local = {a: repo.store.has(a) for a in v.adapters}
    if as_json:
        emit_json({**v.as_json(), "local": local})
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


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(as_json: bool) -> None:
    """Every model version on every branch, and whether its adapters are in the local store.

    \b
    Example:
      git bake models --json | jq -r '.[] | select(.local | not) | .commit'
    """
    from gitbake.repo.history import models as do_models

    repo = repository()
    rows = do_models(repo.root, repo.store.has)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No model versions yet.")
    for r in rows:
        where = f"[{', '.join(r['refs'])}]" if r["refs"] else ""
        click.echo(
            f"{r['commit'][:10]}  {r['bake_name'] or '?':<36} {len(r['adapters'])} adapter(s)  "
            f"{'local' if r['local'] else 'not local'}  {where}"
        )


@click.command("eval", context_settings=CONTEXT)
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

    report = reevaluate(repository(), rev, Reporter())
    if as_json:
        emit_json(report.as_json())
        return
    click.echo(
        f"{report.bake}: gap_closed {report.gap_closed:.3f} (KL {report.d_before:.4f} -> "
        f"{report.d_after:.4f} nats/token) "
        f"on {report.questions} held-out question(s)"
    )
