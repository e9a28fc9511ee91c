"""`git bake checkout`, `log`, `tree`, `show`, `models` and `eval`: the model versions in git."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import emit_json, metrics_text
from gitbake.errors import EXIT_SKIP
from gitbake.reporter import Reporter

if TYPE_CHECKING:
    from gitbake.workflow.behaviourcheck import Request


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

    REV is any model address: a revision, a bake name (plain or hashed), a model name
    local/<repo>/<bake>/<step>, or one of those followed by @checkpoint-STEP.

    \b
    Examples:
      git bake show
      git bake show HEAD~2 --json
      git bake show yoda_bake@checkpoint-40
    """
    from gitbake.repo.history import version_at_address

    repo = repository()
    v, step = version_at_address(repo, rev)
    local = {a: repo.store.has(a) for a in v.adapters}
    if as_json:
        emit_json({**v.as_json(), "checkpoint": step, "local": local})
        return
    click.echo(f"commit:     {v.commit}")
    if step is not None:
        click.echo(f"checkpoint: step {step} of the last bake (its adapter is the last one below)")
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
@click.option("--expect", metavar="REGEX", help="The behaviour: answers in which this regular expression is found.")
@click.option("--lang", metavar="CODE", help="The behaviour: answers in this language (needs gitbake[lang]).")
@click.option("--min", "min_rate", type=float, metavar="RATE", help="Exit 0 if REV's rate >= RATE, else 1.")
@click.option("--max", "max_rate", type=float, metavar="RATE", help="Exit 0 if REV's rate <= RATE, else 1.")
@click.option(
    "--questions", "questions_from", metavar="REV2", help="Ask the held-out questions of REV2's bake instead."
)
@click.option("--json", "as_json", is_flag=True, help="Print the eval as JSON.")
def eval_cmd(
    rev: str,
    expect: str | None,
    lang: str | None,
    min_rate: float | None,
    max_rate: float | None,
    questions_from: str | None,
    as_json: bool,
) -> None:
    """Recompute the eval of REV's model: KL to the teacher on held-out questions, before and after.

    The result is stored beside the adapter; the model's identity does not change.

    With --expect and/or --lang, measure a behaviour instead: the share of held-out answers that show
    it, greedy, without the prompt, for the parent and for REV's model, with the teacher (the parent
    with the prompt) beside them as the ceiling. --min/--max make it a verdict for `git bisect run`:
    exit 0 (pass) or 1 (fail), and 125 (skip) for a commit with no model to measure.

    \b
    Examples:
      git bake eval
      git bake eval HEAD~2 --json
      git bake eval --lang fr
      git bake eval --expect '(?i)\\barr+\\b' --json
      git bisect run git bake eval --lang fr --min 0.8 --questions main
    """
    from gitbake.workflow.behaviourcheck import request

    wanted = request(expect, lang, min_rate, max_rate, questions_from)
    if wanted.behaviour is not None:
        _behaviour(rev, wanted, as_json)
        return
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


def _behaviour(rev: str, wanted: Request, as_json: bool) -> None:
    """The behaviour check: rates, and with --min/--max the verdict as the exit code (bisect's 0/1/125)."""
    from gitbake.workflow.behaviourcheck import behaviour_rates
    from gitbake.workflow.heldout import Unmeasurable

    ctx = click.get_current_context()
    try:
        rates = behaviour_rates(repository(), rev, wanted, Reporter())
    except Unmeasurable as exc:
        if wanted.thresholds is None:
            raise
        click.echo(f"skip: {exc.render()}\n(exit 125: git bisect run skips this commit)", err=True)
        ctx.exit(EXIT_SKIP)
    passed = wanted.thresholds.passes(rates.model.rate) if wanted.thresholds is not None else None
    if as_json:
        emit_json({**rates.as_json(), "passed": passed})
    else:
        click.echo(
            f"{rates.bake} ({rates.rev[:10]}): {rates.behaviour.describe()}, on {rates.questions} held-out "
            f"question(s), greedy, at most {rates.max_tokens} tokens"
        )
        if rates.note:
            click.echo(f"  note: {rates.note}")
        for label, rate in (
            ("teacher (parent + prompt, the ceiling)", rates.teacher),
            ("parent, no prompt", rates.parent),
            (f"{rev}, no prompt", rates.model),
        ):
            click.echo(f"  {label:<40} {rate.shown:>4}/{rate.total:<4} {rate.rate:.2f}")
        if wanted.thresholds is not None:
            verdict = "pass" if passed else "fail"
            click.echo(f"{verdict}: {rev}'s rate {rates.model.rate:.2f}, wanted {wanted.thresholds.describe()}")
    if passed is False:
        ctx.exit(1)
