"""`git bake run` as a commit sees it: run the stages of a commit's input.yml, then make the bake commit
and bring `.bake/model` up to date. The post-commit hook and background jobs call this too.

Nothing user-visible changes until every stage has succeeded: a failed bake leaves input.yml, .bread and
recipe.yml exactly as they were (the adapter is only stored after training, eval and the checks pass).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gitbake import destination, git, hub
from gitbake.contract import bread as bread_mod
from gitbake.contract import identity
from gitbake.contract.config import INPUT_FILE
from gitbake.contract.yamlio import decode_text
from gitbake.errors import GitbakeError
from gitbake.repo import pendingrefs, revfiles
from gitbake.repo.plan import Plan
from gitbake.repo.repo import ModelRepo
from gitbake.reporter import Reporter
from gitbake.store.objects import Store
from gitbake.workflow import bakecommit

if TYPE_CHECKING:
    from gitbake.repo.modeldir import Materialised, Refreshed
    from gitbake.workflow import jobs


@dataclass(frozen=True)
class RefreshFailed:
    """The bake commit stands but `.bake/model` could not be made: `git bake checkout` makes it again."""

    error: str
    fix: str = "git bake checkout"
    state: Literal["error"] = "error"

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "fix": self.fix}


@dataclass
class RunReport:
    trigger: str
    results: list[Any]  # pipeline.StageResult
    notes: list[str] = field(default_factory=list)
    commit: bakecommit.CommitResult | None = None
    model: Refreshed | RefreshFailed | None = None  # what .bake/model became, or why it did not

    def outcome(self) -> list[str]:
        """What became of the bake commit and .bake/model, in lines for the CLI, the hook and a job's log."""
        c = self.commit
        lines: list[str] = []
        if c is None:
            return lines
        if c.warning:
            lines.append(f"warning: {c.warning}")
        if c.ref is not None:
            lines.append(
                f"bake commit {c.commit[:12]} on {c.ref.removeprefix('refs/heads/')}: .bread, recipe.yml and input.yml "
                "(commented out)"
            )
            if c.kept:
                lines.append(f"note: left your uncommitted changes to {', '.join(c.kept)} as they are")
        else:
            lines.append(
                f"the branch moved on while baking: the bake commit is kept as {c.pending}; take it with `git bake "
                "fetch`"
            )
        m = self.model
        if m is not None and m.state == "missing":
            lines.append(f"note: .bake/model needs {len(m.missing)} object(s) that are not here: run `git bake pull`")
        elif isinstance(m, RefreshFailed):
            lines.append(f"note: .bake/model could not be updated ({m.error}): run `{m.fix}`")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "stages": [r.as_json() for r in self.results],
            "notes": self.notes,
            "commit": self.commit.as_json() if self.commit else None,
            "model": self.model.as_json() if self.model is not None else None,
        }


def run_and_commit(
    repo: ModelRepo,
    stages: list[str] | None = None,
    force: bool = False,
    rev: str | None = None,
    branch_ref: str | None = None,
    reporter: Reporter | None = None,
    launcher: str | None = None,
) -> RunReport:
    """Run `stages` of the input.yml committed at `rev` (default HEAD, whose input.yml must match the
    working tree); when the bake ran, commit its result on top of `rev` and move `branch_ref` there.
    With `launcher`, the bake stage runs under it, in as many processes as it starts (workflow/launch.py)."""
    from gitbake.workflow import pipeline

    reporter = reporter or Reporter()
    trigger = git.rev_parse(repo.root, rev or "HEAD")
    if trigger is None:
        raise GitbakeError("the repository has no commits yet", "commit input.yml first")
    if rev is None:
        branch_ref = git.symbolic_head(repo.root)
        pinned = repo.at(trigger)
        pinned.rev = None  # the working tree's input.yml is checked against HEAD ...
        with reporter.collecting() as notes:
            loaded = pipeline.committed_input(pinned, reporter)
        pinned.rev = trigger  # ... and everything else is read from the commit
    else:
        pinned = repo.at(trigger)
        with reporter.collecting() as notes:
            loaded = pipeline.committed_input(pinned, reporter)
    ensure_base_model(pinned, reporter)  # before the plan: a hub model's identity is its downloaded commit
    plan = pinned.plan(loaded)
    if launcher is not None and plan.bake is not None and (stages is None or "bake" in stages):
        return _run_launched(repo, pinned, plan, loaded, launcher, force, trigger, branch_ref, notes, reporter)
    with bake_lock(pinned.store, plan, reporter):
        # under the lock: a second run of the same bake finds the first one's results cached here
        results = pipeline.execute(pinned, plan, loaded, stages, force, reporter)
        return _commit(repo, pinned, plan, RunReport(trigger, results, notes), branch_ref)


def _run_launched(
    repo: ModelRepo,
    pinned: ModelRepo,
    plan: Plan,
    loaded: Any,
    launcher: str,
    force: bool,
    trigger: str,
    branch_ref: str | None,
    notes: list[str],
    reporter: Reporter,
) -> RunReport:
    """stim and rollout here, then the bake stage under `launcher`, whose rank 0 makes the bake commit."""
    from gitbake.workflow import launch, pipeline

    launch.command(launcher, force)  # a launcher that cannot start is refused before any stage runs
    results: list[Any] = []
    if plan.target is not None:  # every rank must find them cached; they run once, here
        results = pipeline.execute(pinned, plan, loaded, ["stim", "rollout"], force, reporter)
    done = launch.run_bake(repo, launcher, force, trigger, branch_ref, reporter)
    report = RunReport(trigger, results, notes)
    if done.report is not None:
        report.results += [pipeline.StageResult(**r) for r in done.report["stages"] if r["stage"] == "bake"]
        report.notes += done.report.get("notes") or []
        if done.report.get("commit"):
            report.commit = bakecommit.CommitResult(**done.report["commit"])
            report.model = refresh_model(repo)  # rank 0 made it; here it is found current (or fetched)
    return report


def ensure_base_model(repo: ModelRepo, reporter: Reporter) -> None:
    """Download a Hugging Face base model that is not in the local cache yet (none other needs it): its
    identity, and so every key, is the commit the download resolves to."""
    base = repo.bread.pinned_base_model if repo.bread else None
    if base and identity.classify(base, repo.root) == "hub":
        repo_id, _, ref = base.partition("@")
        hub.ensure(repo_id, ref or "main", reporter)


def _commit(repo: ModelRepo, pinned: ModelRepo, plan: Plan, report: RunReport, branch_ref: str | None) -> RunReport:
    """Make the bake commit of `report`'s bake on top of its trigger, and bring .bake/model up to date."""
    trigger, results = report.trigger, report.results
    baked = next((r for r in results if r.stage == "bake"), None)
    if baked is None or plan.bake is None:
        return report  # stim / rollout only: they are cached in the store; only a bake makes a commit
    if os.environ.get("RANK", "0") != "0":
        return report  # under the deepspeed launcher only rank 0 writes (the store, and so the commit)

    store = pinned.store
    t = plan.target
    metrics = {
        k: baked.extra.get(k) for k in ("gap_closed", "d_before", "d_after", "final_loss", "steps", "train_seconds")
    }
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
    landed = _landed(repo.root, trigger, branch_ref, new_bread.parent_adapters or [])
    if landed is not None:
        # another run of this bake (which we waited for) has committed it: a second commit of the same
        # model would only be kept aside as a "superseded" result
        from gitbake.repo import leases

        leases.release(store.root, leases.bake_owner(trigger))
        report.commit = bakecommit.CommitResult(landed, trigger, branch_ref)
        report.notes.append(
            f"another run had already baked and committed this: {landed[:12]}; nothing new was committed"
        )
        return report
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
                report.model = RefreshFailed(exc.message)
    return report


@contextmanager
def bake_lock(store: Store, plan: Plan, reporter: Reporter) -> Iterator[None]:
    """One run of a bake at a time, across processes and the clones that share this store: a second
    `git bake run` (or job, or hook) of the same bake waits for the first, then finds its results cached
    instead of training again. Keyed by what the run makes: its bake, else its target."""
    from gitbake.store.locks import FileLock, LockTimeout

    what = plan.bake or plan.target
    if what is None or os.environ.get("RANK", "0") != "0":
        yield  # nothing to make; or a deepspeed rank other than 0, which must train beside rank 0, not after it
        return
    path = store.locks / f"bake-{what.key[:32]}"
    lock = FileLock(path, timeout=0, what=f"bake {what.name}")
    try:
        lock.acquire()
    except LockTimeout:
        holder = path.read_text(errors="replace").strip() if path.exists() else ""
        reporter.say(
            f"another process is running {what.name}{f' ({holder})' if holder else ''}: "
            "waiting for it, then using its result"
        )
        lock = FileLock(path, timeout=7 * 86400, what=f"bake {what.name}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _landed(root: Path, trigger: str, branch_ref: str | None, adapters: list[str]) -> str | None:
    """The bake commit on `branch_ref`, made on top of `trigger`, whose model is `adapters` (None: none)."""
    tip = git.rev_parse(root, branch_ref) if branch_ref else None
    if tip is None or tip == trigger:
        return None
    for sha in git.run(root, "rev-list", "--first-parent", f"{trigger}..{tip}", check=False).split():
        if git.parents(root, sha)[:1] == [trigger]:
            try:
                b = revfiles.bread_at(root, sha)
            except revfiles.DAMAGED:
                return None  # not this bake's commit: whoever made it, a damaged .bread names no model
            return sha if b is not None and b.parent_adapters == adapters else None
    return None


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


def refresh_model(repo: ModelRepo, fetch: bool = True) -> Refreshed:
    """Make `.bake/model` the model of the working tree's `.bread` (HEAD's), from the store; missing
    objects come from the default remote when one is configured, else they are named."""
    from gitbake.repo import modeldir

    return modeldir.refresh(
        repo.root,
        repo.store,
        (lambda roots: fetch_objects(repo.root, repo.store, roots)) if fetch else None,
        git.rev_parse(repo.root, "HEAD"),
    )


def fetch_objects(root: Path, store: Store, roots: set[str]) -> int:
    """Pull `roots` from the default bake remote, if there is one; how many objects arrived."""
    from gitbake.store import remote

    name = remote.default_remote(root)
    if name is None:
        return 0
    report = remote.pull(store, remote.resolve(root, name), roots)
    return len(report.transferred)


@dataclass(frozen=True)
class CheckedOut:
    """What `git bake checkout` did: REV as given, the commit it names, and the model materialised."""

    rev: str
    commit: str
    model: Materialised

    def as_json(self) -> dict[str, Any]:
        return {"rev": self.rev, "commit": self.commit, **self.model.as_json()}


def checkout(repo: ModelRepo, rev: str, dest: Path | None = None, fetch: bool = True) -> CheckedOut:
    """Materialise the model of `rev` into `dest` (default `.bake/model`) without moving HEAD."""
    from gitbake.repo import checkpoints, modeldir
    from gitbake.repo.address import split_checkpoint

    rev, step = split_checkpoint(rev)  # a model address: REV@checkpoint-STEP puts that checkpoint there
    other = repo.at(rev)
    if other.bread is None:
        raise GitbakeError(
            f"{rev} has no .bread: not a commit of this model repository", "pick another revision (see `git bake log`)"
        )
    spec = modeldir.spec_of(other.bread)
    if step is not None:
        spec = checkpoints.at_step(repo, rev, spec, step)
    target = dest if dest is not None else repo.root / modeldir.MODEL_DIR
    protected = repo.never_replaced()
    if dest is not None:
        destination.check(dest, protected=protected, what="the model")  # before any fetch: refuse at once
    if fetch and modeldir.missing(repo.store, spec):
        fetch_objects(repo.root, repo.store, set(spec.adapters))
    done = modeldir.materialise(repo.store, spec, target, other.rev, protected=protected, reserved=dest is None)
    return CheckedOut(rev, other.rev or "", done)


@dataclass(frozen=True)
class Detached:
    """A bake started in the background by `git bake run --detach`."""

    job: jobs.Job
    queued_behind: str | None  # the id of the job it waits for, if another is running or queued


def run_detached(repo: ModelRepo, stages: list[str] | None = None, force: bool = False) -> Detached:
    """`git bake run --detach`: refuse uncommitted changes and what cannot run (limits, model shape) now,
    not in the background; then start a job for HEAD and say which job, if any, it queues behind."""
    from gitbake.workflow import jobs
    from gitbake.workflow.pipeline import committed_input

    repo.plan(committed_input(repo))
    head = git.rev_parse(repo.root, "HEAD") or ""
    job = jobs.start(repo, head, git.symbolic_head(repo.root), stages, force)
    ahead = [j for j in jobs.active(repo) if j.id != job.id]
    return Detached(job, ahead[0].id if ahead else None)


@dataclass
class Fetched:
    """What `git bake fetch` did with the finished bakes kept under refs/bake/ for this branch."""

    state: Literal["nothing", "running", "dropped", "taken"]
    running: jobs.Job | None = None  # state "running": the job still baking (nothing waits yet)
    dropped: list[str] = field(default_factory=list)
    taken: list[bakecommit.CommitResult] = field(default_factory=list)


def fetch(
    repo: ModelRepo,
    force: bool = False,
    drop: bool = False,
    on_take: Callable[[str, bakecommit.CommitResult], None] | None = None,
) -> Fetched:
    """`git bake fetch [--force] [--drop]`: make each waiting bake result a bake commit on top of the current
    branch (then `.bake/model` follows), or with `drop` delete their refs (the adapters stay until gc).
    `on_take(ref, result)` hears of each one as it is taken."""
    from gitbake.workflow import jobs

    waiting = sorted(pendingrefs.pending(repo.root, git.symbolic_head(repo.root)))
    if not waiting:
        running = jobs.active(repo)
        return Fetched("running", running[0]) if running else Fetched("nothing")
    if drop:
        for ref in waiting:
            git.delete_ref(repo.root, ref)
        return Fetched("dropped", dropped=waiting)
    out = Fetched("taken")
    for ref in waiting:
        result = bakecommit.take_pending(repo.root, ref, force=force)
        out.taken.append(result)
        if on_take is not None:
            on_take(ref, result)
    refresh_model(repo)
    return out
