"""`git bake status` and `git bake validate`: what input.yml means and what a commit of it would run.

Compared against `.bread`, which records the prompts, target and bake of the last bake: a key that
differs there is `changed`, one not there is `new`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gitbake import git
from gitbake.contract import inputtext
from gitbake.contract.inputtext import INPUT_FILE
from gitbake.contract.inputtext import has_sections as has_sections  # re-exported for its importers
from gitbake.errors import Issue
from gitbake.repo import plancache
from gitbake.repo.plan import Plan
from gitbake.repo.repo import ModelRepo

if TYPE_CHECKING:
    from gitbake.contract.config import LoadedInput
    from gitbake.repo.modelversion import ModelVersion
    from gitbake.workflow.jobs import Job


@dataclass
class Change:
    kind: Literal["prompt", "target", "bake"]
    ref: str  # PROMPT key, or the plain target / bake name
    name: str
    key: str
    state: Literal["new", "changed", "unchanged"]

    def as_json(self) -> dict[str, str]:
        return dict(self.__dict__)


EVAL_FIELDS = ("gap_closed", "d_before", "d_after", "final_loss")


@dataclass
class StageState:
    """One stage of the plan against the store: cached (a commit would reuse it), or missing, or the
    queued or running work of a background job for HEAD."""

    stage: Literal["stim", "rollout", "bake"]
    key: str
    state: Literal["cached", "missing", "queued", "running"]
    count: int | None = None  # questions (stim) or trajectories (rollout) stored
    eval: dict[str, float | None] | None = None  # a stored bake's EVAL_FIELDS
    progress: dict[str, Any] | None = None  # the running job's progress, as its process publishes it

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "key": self.key, "state": self.state}
        for name in ("count", "eval", "progress"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class PendingBake:
    """A finished bake kept under refs/bake/ for this branch; `superseded` when a later bake has landed."""

    commit: str
    superseded: bool

    def as_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "superseded": self.superseded}


@dataclass(frozen=True)
class ModelState:
    """Whether `.bake/model` is HEAD's model: current, none (nothing baked yet, nothing to materialise),
    stale (another model is there) or absent; `fix` says how to bring it up to date."""

    state: Literal["current", "none", "stale", "absent"]
    model: ModelVersion
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, **self.model.as_json(), **({"fix": self.fix} if self.fix else {})}


@dataclass
class StatusReport:
    root: Path
    repo_name: str | None
    branch: str | None
    plan: Plan
    changes: list[Change] = field(default_factory=list)
    commented_out: list[str] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    stages: list[StageState] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)  # running / queued jobs, and the last one if it failed
    pending: dict[str, PendingBake] = field(default_factory=dict)  # refs/bake/ results for this branch, by ref
    model: ModelState | None = None  # None without a .bread
    # bake.hookMode is off and HEAD's committed input.yml has a bake not in the store: another machine
    # (`git bake run --push`) is expected to bake it, and `git pull` to bring its model here
    elsewhere: bool = False

    @property
    def baking(self) -> bool:
        return any(j.state in ("running", "queued") for j in self.jobs)

    @property
    def would_run(self) -> list[str]:
        return self.plan.stages

    def as_json(self) -> dict[str, Any]:
        p = self.plan.parent
        return {
            "root": str(self.root),
            "repo": self.repo_name,
            "branch": self.branch,
            "base_model": p.base_model,
            "base_identity": p.identity.get("base"),  # a hub model: the commit the local cache holds
            "parent": {"model_name": p.model_name, "adapters": p.adapters, "foreign": p.foreign},
            "changes": [c.as_json() for c in self.changes],
            "commented_out": self.commented_out,
            "would_run": self.would_run,
            "stages": [s.as_json() for s in self.stages],
            "jobs": [j.as_json() for j in self.jobs],
            "pending": {ref: p.as_json() for ref, p in self.pending.items()},
            "model": self.model.as_json() if self.model else {},
            "warnings": [w.render() for w in self.warnings],
            "expected_elsewhere": self.elsewhere,
        }


def status(repo: ModelRepo) -> StatusReport:
    input_warnings, plan = plancache.cached(repo.root, lambda: _validated(repo))
    report = StatusReport(
        repo.root,
        repo.bread.repo_name if repo.bread else None,
        git.current_branch(repo.root),
        plan,
        commented_out=commented_sections(repo.root),
        warnings=input_warnings + plan.warnings,
    )
    bread = repo.bread
    known_prompts = bread.prompts if bread else {}
    for ref, p in plan.prompts.items():
        old = known_prompts.get(ref)
        report.changes.append(Change("prompt", ref, p.name, p.key, _state(old.hash if old else None, p.key)))
    if plan.target is not None:
        old_t = bread.target if bread else None
        report.changes.append(
            Change(
                "target",
                plan.target.plain,
                plan.target.name,
                plan.target.key,
                _state(old_t.hash if old_t else None, plan.target.key),
            )
        )
    if plan.bake is not None:
        old_b = bread.bake if bread else None
        report.changes.append(
            Change(
                "bake",
                plan.bake.plain,
                plan.bake.name,
                plan.bake.key,
                _state(old_b.hash if old_b else None, plan.bake.key),
            )
        )
    report.stages = stage_states(repo, plan)
    _jobs_and_model(repo, report)
    report.elsewhere = _expected_elsewhere(repo, report)
    return report


def _expected_elsewhere(repo: ModelRepo, report: StatusReport) -> bool:
    """No hook bakes here (bake.hookMode off), HEAD's input.yml is committed as it is, and its bake is
    neither stored nor running: the bake is another machine's to do."""
    from gitbake.contract.files import INPUT_FILE

    if (git.config_get(repo.root, "bake.hookMode") or "").lower() != "off" or report.jobs:
        return False
    if not any(s.stage == "bake" and s.state == "missing" for s in report.stages):
        return False
    committed = git.show(repo.root, "HEAD", INPUT_FILE)
    path = repo.root / INPUT_FILE
    return committed is not None and path.is_file() and path.read_bytes() == committed


def _jobs_and_model(repo: ModelRepo, report: StatusReport) -> None:
    from gitbake import git
    from gitbake.repo import modeldir, pendingrefs
    from gitbake.workflow import jobs

    all_jobs = jobs.list_jobs(repo)
    live = [j for j in all_jobs if j.active]
    report.jobs = list(live)
    if not live and all_jobs and all_jobs[0].state in ("failed", "died"):
        report.jobs.append(all_jobs[0])
    running = next((j for j in live if j.state == "running"), None)
    prog = running.progress() if running else None
    if running is not None:
        head = git.rev_parse(repo.root, "HEAD")
        for row in report.stages:
            if row.state == "missing" and running.trigger == head:
                row.state = "queued"
                if prog and str(prog.get("label", "")).split(" ")[0] == row.stage:
                    row.state, row.progress = "running", prog
    if git.may_have_refs(
        repo.root, pendingrefs.PENDING_PREFIX
    ):  # status runs often: ask git only when there may be some
        branch = git.current_branch(repo.root)
        waiting = pendingrefs.pending(repo.root, f"refs/heads/{branch}" if branch else None)
        here = git.show(repo.root, "HEAD", ".bread")
        for ref, sha in waiting.items():
            trigger = git.parents(repo.root, sha)[0]
            # taking it needs the branch's model to be the one it was baked on: else a later bake landed
            report.pending[ref] = PendingBake(sha, git.show(repo.root, trigger, ".bread") != here)
    if repo.bread is not None:
        spec = modeldir.spec_of(repo.bread)
        current = modeldir.read_current(repo.root)
        if modeldir.is_current(repo.root, spec):
            report.model = ModelState("current", spec)
        elif current is None and not spec.adapters:
            report.model = ModelState("none", spec)  # nothing baked yet: nothing to materialise
        else:
            fix = "git bake checkout" + ("" if not modeldir.missing(repo.store, spec) else "  (after `git bake pull`)")
            report.model = ModelState("stale" if current else "absent", spec, fix)


def stage_states(repo: ModelRepo, plan: Plan) -> list[StageState]:
    """Which stages of this plan the store already holds (a commit would not run them again)."""
    from gitbake.store.reports import bake_report

    keys: list[tuple[Literal["stim", "rollout", "bake"], str]] = []
    if plan.target is not None:
        keys += [("stim", plan.target.stim_key), ("rollout", plan.target.key)]
    if plan.bake is not None:
        keys.append(("bake", plan.bake.key))
    out = []
    for stage, key in keys:
        manifest = repo.store.get_key(stage, key)
        row = StageState(stage, key, "cached" if manifest else "missing")
        if manifest:
            meta = repo.store.read_manifest(manifest).meta
            count = meta.get("count")
            if isinstance(count, int):
                row.count = count
            if stage == "bake":
                report = bake_report(repo.store, key) or {}
                row.eval = {k: report.get(k) for k in EVAL_FIELDS}
        out.append(row)
    return out


def _validated(repo: ModelRepo) -> plancache.Validated:
    loaded, plan = validate(repo)
    return loaded.warnings, plan


def validate(repo: ModelRepo, staged: tuple[str, bytes] | None = None) -> tuple[LoadedInput, Plan]:
    """Every check of `git bake validate`, in one place: the pre-commit hook calls this with `staged`, the
    (git mode, bytes) of input.yml in the index, so it holds the commit to exactly what validate holds
    the working tree to (a link, the size limit, binary or non-UTF-8 bytes, the YAML, the schema, the
    files generators read, unresolved names, the model's bounds and the amount of work)."""
    from gitbake.contract.config import load_input_bytes, symlink_error

    if staged is None:
        loaded = repo.load_input()
    else:
        mode, data = staged
        if mode == SYMLINK_MODE:
            raise symlink_error(INPUT_FILE)
        loaded = load_input_bytes(data, repo.root)
    return loaded, repo.plan(loaded)


SYMLINK_MODE = "120000"  # git's file mode of a symbolic link


def _state(old: str | None, new: str) -> Literal["new", "changed", "unchanged"]:
    if old is None:
        return "new"
    return "unchanged" if old == new else "changed"


def commented_sections(root: Path) -> list[str]:
    path = root / INPUT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return inputtext.commented_sections(text)
