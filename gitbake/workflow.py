"""`git bake run` as a commit sees it: run the stages of a commit's input.yml, then make the bake commit
and bring `.bake/model` up to date. The post-commit hook and background jobs call this too.

Nothing user-visible changes until every stage has succeeded: a failed bake leaves input.yml, .bread and
recipe.yml exactly as they were (the adapter is only stored after training, eval and the checks pass).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gitbake import bakecommit, destination, git
from gitbake import bread as bread_mod
from gitbake.config import INPUT_FILE
from gitbake.errors import GitbakeError
from gitbake.repo import ModelRepo
from gitbake.store import Store
from gitbake.yamlio import decode_text


@dataclass
class RunReport:
    trigger: str
    results: list[Any]  # pipeline.StageResult
    notes: list[str] = field(default_factory=list)
    commit: bakecommit.CommitResult | None = None
    model: dict[str, Any] | None = None  # what .bake/model became, or why it did not

    def outcome(self) -> list[str]:
        """What became of the bake commit and .bake/model, in lines for the CLI, the hook and a job's log."""
        c = self.commit
        lines: list[str] = []
        if c is None:
            return lines
        if c.warning:
            lines.append(f"warning: {c.warning}")
        if c.ref is not None:
            lines.append(f"bake commit {c.commit[:12]} on {c.ref.removeprefix('refs/heads/')}: .bread, recipe.yml and input.yml (commented out)")
            if c.kept:
                lines.append(f"note: left your uncommitted changes to {', '.join(c.kept)} as they are")
        else:
            lines.append(f"the branch moved on while baking: the bake commit is kept as {c.pending}; take it with `git bake fetch`")
        m = self.model or {}
        if m.get("state") == "missing":
            lines.append(f"note: .bake/model needs {len(m['missing'])} object(s) that are not here: run `git bake pull`")
        elif m.get("state") == "error":
            lines.append(f"note: .bake/model could not be updated ({m['error']}): run `{m['fix']}`")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "stages": [r.as_json() for r in self.results],
            "notes": self.notes,
            "commit": self.commit.as_json() if self.commit else None,
            "model": self.model,
        }


def run_and_commit(repo: ModelRepo, stages: list[str] | None = None, force: bool = False, rev: str | None = None,
                   branch_ref: str | None = None, say: Callable[[str], None] | None = None) -> RunReport:
    """Run `stages` of the input.yml committed at `rev` (default HEAD, whose input.yml must match the
    working tree); when the bake ran, commit its result on top of `rev` and move `branch_ref` there."""
    from gitbake import pipeline

    trigger = git.rev_parse(repo.root, rev or "HEAD")
    if trigger is None:
        raise GitbakeError("the repository has no commits yet", "commit input.yml first")
    if rev is None:
        branch_ref = git.symbolic_head(repo.root)
        pinned = repo.at(trigger)
        pinned.rev = None  # the working tree's input.yml is checked against HEAD ...
        loaded, notes = pipeline.committed_input(pinned)
        pinned.rev = trigger  # ... and everything else is read from the commit
    else:
        pinned = repo.at(trigger)
        loaded, notes = pipeline.committed_input(pinned)
    plan = pinned.plan(loaded)
    results = pipeline.execute(pinned, plan, loaded, stages, force, say)
    report = RunReport(trigger, results, notes)
    baked = next((r for r in results if r.stage == "bake"), None)
    if baked is None or plan.bake is None:
        return report  # stim / rollout only: they are cached in the store; only a bake makes a commit
    if os.environ.get("RANK", "0") != "0":
        return report  # under the deepspeed launcher only rank 0 writes (the store, and so the commit)

    store = pinned.store
    t = plan.target
    metrics = {k: baked.extra.get(k) for k in ("gap_closed", "d_before", "d_after", "final_loss", "steps", "train_seconds")}
    metrics["trajectories"] = baked.count
    out = bakecommit.Outputs(
        adapter=baked.manifest,
        report=baked.extra.get("report"),
        metrics={k: v for k, v in metrics.items() if v is not None},
        stim=store.get_key("stim", t.stim_key) if t else None,
        rollout=store.get_key("rollout", t.key) if t else None,
        checkpoints=dict(baked.extra.get("checkpoints") or {}),
    )
    old_bread = pinned.bread or bread_mod.Bread()
    new_bread, new_recipe = bakecommit.compose(plan, old_bread, pinned.recipe, out)
    data = git.show(repo.root, trigger, INPUT_FILE)
    files = bakecommit.lineage_files(new_bread, new_recipe, decode_text(data or b"", INPUT_FILE))
    subject = git.commit_message(repo.root, trigger).splitlines()[0] if data else ""
    msg = bakecommit.message(plan, trigger, subject, out.metrics)
    with uninterruptible():  # a cancel between moving the branch and updating the index would leave them apart
        report.commit = bakecommit.make_commit(repo.root, trigger, branch_ref, files, msg)
        if report.commit.ref is not None and report.commit.updated:
            try:
                report.model = refresh_model(repo)
            except GitbakeError as exc:  # the bake commit stands; .bake/model can be made again
                report.model = {"state": "error", "error": exc.message, "fix": "git bake checkout"}
    return report


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block is done (they are delivered right after)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def refresh_model(repo: ModelRepo, fetch: bool = True) -> dict[str, Any]:
    """Make `.bake/model` the model of the working tree's `.bread` (HEAD's), from the store; missing
    objects come from the default remote when one is configured, else they are named."""
    from gitbake import modeldir

    return modeldir.refresh(repo.root, repo.store, (lambda roots: fetch_objects(repo.root, repo.store, roots)) if fetch else None,
                            git.rev_parse(repo.root, "HEAD"))


def fetch_objects(root: Path, store: Store, roots: set[str]) -> int:
    """Pull `roots` from the default bake remote, if there is one; how many objects arrived."""
    from gitbake import remote

    name = remote.default_remote(root)
    if name is None:
        return 0
    report = remote.pull(store, remote.resolve(root, name), roots)
    return len(report.transferred)


def checkout(repo: ModelRepo, rev: str, dest: Path | None = None, fetch: bool = True) -> dict[str, Any]:
    """Materialise the model of `rev` into `dest` (default `.bake/model`) without moving HEAD."""
    from gitbake import modeldir

    other = repo.at(rev)
    if other.bread is None:
        raise GitbakeError(f"{rev} has no .bread: not a commit of this model repository", "pick another revision (see `git bake log`)")
    spec = modeldir.spec_of(other.bread)
    target = dest if dest is not None else repo.root / modeldir.MODEL_DIR
    protected = repo.never_replaced()
    if dest is not None:
        destination.check(dest, protected=protected, what="the model")  # before any fetch: refuse at once
    if fetch and modeldir.missing(repo.store, spec):
        fetch_objects(repo.root, repo.store, set(spec.adapters))
    done = modeldir.materialise(repo.store, spec, target, other.rev, protected=protected, reserved=dest is None)
    return {"rev": rev, "commit": other.rev, **done.as_json()}
