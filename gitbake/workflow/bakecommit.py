"""The bake commit: one commit holding the new `.bread`, the new `recipe.yml` and `input.yml` with its
sections commented out, so the working tree is clean after a bake (bgit leaves two of the three
uncommitted: bgit.md §7.2).

The commit is built from the commit that triggered the bake, in a private index (`git.commit_files`), and
the branch moves only if it still points at that commit (compare-and-swap). Otherwise the commit is kept
under `refs/bake/` and `git bake fetch` takes it. Working-tree files move only where the user has not
changed them since the trigger.

A bake commit never names an object that is not in the store: what it adds is checked, and the ref moved,
under the store's shared lock, so gc (which takes it exclusively) runs either before the check (and the
bake's lease kept the data) or after the ref names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import identity
from gitbake.contract import recipe as recipe_mod
from gitbake.contract.files import INPUT_FILE
from gitbake.contract.inputtext import comment_out
from gitbake.contract.recipe import BakeResource, Recipe, Step
from gitbake.errors import GitbakeError, StoreCorruptError
from gitbake.hub import COMMIT
from gitbake.repo import leases, reach, revfiles
from gitbake.repo.pendingrefs import PENDING_PREFIX
from gitbake.repo.plan import Plan
from gitbake.repo.storepath import store_root
from gitbake.store.objects import Store

TRAILER = recipe_mod.TRAILER


def model_name(repo_name: str, bake_name: str, steps: int) -> str:
    """bgit's `<user>/<repo>/<bake>/<checkpoint>` with the user `local`: usable wherever bgit takes one."""
    return f"local/{repo_name}/{bake_name}/{steps}"


@dataclass
class Outputs:
    """What the stages produced for one bake (manifest digests in the store)."""

    adapter: str
    report: str | None
    metrics: dict[str, Any]
    stim: str | None = None
    rollout: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)  # training step -> adapter manifest


def compose(
    plan: Plan, old_bread: bread_mod.Bread, old_recipe: Recipe | None, out: Outputs
) -> tuple[bread_mod.Bread, Recipe]:
    """The `.bread` and `recipe.yml` of the model this bake made, from the trigger commit's."""
    assert plan.bake is not None
    b = bread_mod.parse(bread_mod.dumps(old_bread))  # a copy: the caller's stays as it was
    r = (
        Recipe.model_validate(old_recipe.model_dump())
        if old_recipe is not None
        else recipe_mod.new(plan.parent.base_model)
    )
    r.base_model = r.base_model or plan.parent.base_model
    r.format = recipe_mod.FORMAT
    repo_name = b.repo_name or "model"
    steps = int(out.metrics.get("steps") or 0)
    name = model_name(repo_name, plan.bake.name, steps)
    parent_bake = old_bread.bake.name if old_bread.bake is not None and plan.parent.adapters else None

    prompts = dict(b.prompts)
    for ref, p in plan.prompts.items():
        prompts[ref] = bread_mod.Named(p.key, p.name)
        if not any(
            s.action == "create_prompt" and s.key == p.key and (s.model_extra or {}).get("ref") == ref for s in r.steps
        ):
            _add(
                r,
                _step(
                    action="create_prompt",
                    resource_type="prompt",
                    resource_name=p.name,
                    config=p.config,
                    key=p.key,
                    ref=ref,
                ),
            )
            if p.name not in r.resources.prompts:
                r.resources.prompts.append(p.name)
    b.set_prompts(prompts)

    t = plan.target
    if t is not None:
        b.sections["TARGET"] = {"hash": t.key, "target_name": t.name}
        if not any(s.action == "create_target" and s.key == t.key for s in r.steps):
            deps = [f"prompt:{plan.prompts[t.teacher].name}", f"prompt:{plan.prompts[t.student].name}"]
            _add(
                r,
                _step(
                    action="create_target",
                    resource_type="target",
                    resource_name=t.name,
                    dependencies=deps,
                    config=t.config,
                    key=t.key,
                    stim_key=t.stim_key,
                ),
            )
            _add(
                r,
                _step(
                    action="run_stim",
                    resource_type="target",
                    resource_name=t.name,
                    dependencies=[f"target:{t.name}"],
                    key=t.stim_key,
                    outputs={"manifest": out.stim} if out.stim else None,
                ),
            )
            _add(
                r,
                _step(
                    action="run_rollout",
                    resource_type="target",
                    resource_name=t.name,
                    dependencies=[f"target:{t.name}:stim_complete"],
                    key=t.key,
                    outputs={"manifest": out.rollout} if out.rollout else None,
                ),
            )
            if t.name not in r.resources.targets:
                r.resources.targets.append(t.name)

    bk = plan.bake
    b.sections["BAKE"] = {"hash": bk.key, "bake_name": bk.name}
    deps = [f"target:{d.name}:rollout_complete" for d in bk.datasets] + ([f"bake:{parent_bake}"] if parent_bake else [])
    inputs = [{"target": d.name, "key": d.key, "weight": d.weight} for d in bk.datasets]
    _add(
        r,
        _step(
            action="create_bake",
            resource_type="bake",
            resource_name=bk.name,
            dependencies=deps,
            config=bk.config,
            key=bk.key,
            datasets=inputs,
            parent={"model_name": plan.parent.model_name, "adapters": list(plan.parent.adapters)},
        ),
    )
    outputs = {"adapter": out.adapter} | ({"report": out.report} if out.report else {})
    outputs |= {
        f"checkpoint_{step}": digest for step, digest in sorted(out.checkpoints.items(), key=lambda kv: int(kv[0]))
    }
    _add(
        r,
        _step(
            action="run_bake",
            resource_type="bake",
            resource_name=bk.name,
            dependencies=[f"bake:{bk.name}"],
            key=bk.key,
            outputs=outputs,
        ),
    )
    r.resources.bakes.append(
        BakeResource(
            bake_name=bk.name,
            model_names=[name],
            key=bk.key,
            adapter=out.adapter,
            parent=parent_bake,
            metrics=out.metrics,
        )
    )

    chain = list(plan.parent.adapters) + [out.adapter]
    b.sections["PARENT_MODEL"] = {"model_name": name, "adapters": json.dumps(chain)}
    b.set("REPO", "base_model", b.base_model or plan.parent.base_model)
    b.set("REPO", "base_revision", pinned_revision(b, plan.parent.identity.get("base") or {}))
    b.sections["RECIPE"] = {
        "base_model": r.base_model or plan.parent.base_model,
        "total_steps": str(len(r.steps)),
        "recipe_file": recipe_mod.RECIPE_FILE,
    }
    b.sections[f"RECIPE.BAKES.{bk.name}"] = {"model_names": json.dumps([name])}
    return b, r


def pinned_revision(b: bread_mod.Bread, base: dict[str, Any]) -> str | None:
    """`[REPO] base_revision` for a bake commit: the commit the bake's Hugging Face base model was (its
    identity's), so checking the commit out later loads those weights even after the branch has moved;
    kept when .bread has one, and none for other base models or an id that names its commit itself."""
    if base.get("kind") != "hub":
        return None  # a pin left over from a hub model this lineage no longer bakes on
    if b.base_revision is not None:
        return b.base_revision
    revision, written = str(base.get("revision")), b.base_model
    if written is None or not COMMIT.fullmatch(revision):
        return None
    return revision if identity.pinned(written, revision) != written else None


def _step(**fields: Any) -> Step:
    # our extra fields (ref, stim_key, datasets, parent) are kept by the tolerant record model
    return Step.model_validate({"step": 0, **fields})


def _add(r: Recipe, step: Step) -> None:
    step.step = len(r.steps) + 1
    r.steps.append(step)


@dataclass
class CommitResult:
    commit: str
    trigger: str
    ref: str | None  # the branch moved (refs/heads/...), or None
    pending: str | None = None  # refs/bake/... when the branch had moved on
    updated: list[str] = field(default_factory=list)  # working-tree files brought up to date
    kept: list[str] = field(default_factory=list)  # working-tree files the user had changed (left alone)
    warning: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def message(plan: Plan, trigger: str, subject: str, metrics: dict[str, Any]) -> str:
    assert plan.bake is not None
    lines = [f"bake: {plan.bake.name}", ""]
    if metrics.get("gap_closed") is not None:
        lines.append(
            f"gap_closed {metrics['gap_closed']:.3f} (KL {metrics['d_before']:.4f} -> {metrics['d_after']:.4f} "
            "nats/token)"
        )
    if metrics.get("final_loss") is not None:
        lines.append(f"final loss {metrics['final_loss']:.4f} after {metrics.get('steps')} steps")
    lines += [f"Baked from input.yml of {trigger[:12]} ({subject}).", "", f"{TRAILER}: {trigger}", ""]
    return "\n".join(lines)


def make_commit(root: Path, trigger: str, branch_ref: str | None, files: dict[str, bytes], msg: str) -> CommitResult:
    """Commit `files` on top of `trigger`; move `branch_ref` (or a detached HEAD) only if it is still there."""
    store = Store(store_root(root))
    try:
        with store.writing():
            check_present(store, root, trigger, files)
            new = git.commit_files(root, trigger, files, msg)
            moved = _move(root, trigger, branch_ref, new, msg)
            if not moved:
                where = (branch_ref or "HEAD").removeprefix("refs/heads/")
                pending = f"{PENDING_PREFIX}{where}/{trigger[:12]}"
                git.update_ref(root, pending, new, None, msg.splitlines()[0])
    finally:
        store.close()
    leases.release(store.root, leases.bake_owner(trigger))  # a ref names the bake's results now
    if not moved:
        return CommitResult(new, trigger, None, pending)
    result = CommitResult(new, trigger, branch_ref or "HEAD")
    if git.symbolic_head(root) == branch_ref or (branch_ref is None and git.rev_parse(root, "HEAD") == new):
        try:
            sync_worktree(root, trigger, new, files, result)
        except GitbakeError as exc:  # the commit stands; say what is left to do
            result.warning = (
                f"the bake commit is made, but the working tree could not be updated ({exc.message}); "
                "run `git reset --keep HEAD` to bring it up to date"
            )
    return result


def _move(root: Path, trigger: str, branch_ref: str | None, new: str, msg: str) -> bool:
    """Compare-and-swap the branch (or a detached HEAD) from `trigger` to `new`."""
    # moving the branch under a rebase, merge or cherry-pick would break it; a detached bake must not
    # move a HEAD that has since been put on a branch
    blocked = git.operation_in_progress(root) is not None or (
        branch_ref is None and git.symbolic_head(root) is not None
    )
    return not blocked and git.update_ref(root, branch_ref or "HEAD", new, trigger, msg.splitlines()[0])


def check_present(store: Store, root: Path, trigger: str, files: dict[str, bytes]) -> None:
    """Refuse a bake commit that would name an object the store does not hold (nor every file of a
    manifest it names), or record a stim / rollout step without its output (its key was gone when the
    commit was composed, so there is no digest to check). Only what the commit adds is checked: what
    `trigger` already named may live on a remote (a clone that pulled only the adapters still bakes)."""
    added: set[str] = set()
    for path, data in files.items():
        if path in reach.LINEAGE_FILES:
            added |= reach.digests_in(path, data) - reach.digests_in(path, git.show(root, trigger, path) or b"")
    missing = sorted(d for d in added if not store.has(d))
    for digest in sorted(added - set(missing)):
        if store.is_manifest(digest):
            missing += [
                f"{e.digest} ({rel} of {digest[:12]})"
                for rel, e in sorted(store.read_manifest(digest).files.items())
                if not store.has(e.digest)
            ]
    unrecorded = _unrecorded(root, trigger, files)
    if missing or unrecorded:
        what = (
            [f"{len(missing)} object(s) that are no longer in the store ({store.root}): " + ", ".join(missing)]
            if missing
            else []
        )
        what += (
            [f"no questions / answers for {', '.join(unrecorded)}: their stage keys are gone from the store"]
            if unrecorded
            else []
        )
        rerun = (
            "run `git bake run stim rollout` (it makes again only what is gone), then `git bake run`"
            if unrecorded
            else "run `git bake run` again"
        )
        raise StoreCorruptError(
            "the bake commit would record " + "; and ".join(what) + "; nothing was committed",
            "something deleted them during the bake (a `git bake store gc` of an older gitbake, or by hand): "
            f"{rerun}; whatever is still stored is reused",
        )


def _unrecorded(root: Path, trigger: str, files: dict[str, bytes]) -> list[str]:
    """The stim / rollout steps the new recipe.yml adds without an output."""
    new = files.get(recipe_mod.RECIPE_FILE)
    if new is None:
        return []
    old = git.show(root, trigger, recipe_mod.RECIPE_FILE)
    try:
        before = set(reach.unrecorded_outputs(revfiles.parse_recipe(old, trigger[:12]))) if old is not None else set()
    except revfiles.DAMAGED:
        before = set()  # the trigger's copy is unreadable: every step of the new one counts as added
    return [s for s in reach.unrecorded_outputs(revfiles.parse_recipe(new, "the bake commit")) if s not in before]


def sync_worktree(root: Path, old: str, new: str, files: dict[str, bytes], result: CommitResult) -> None:
    """Bring `files` in the index and working tree from commit `old` to `new`, leaving alone whatever
    the user changed since `old`: their edits stay, as edits on top of the new commit."""
    for path, data in files.items():
        old_blob = git.tree_blob(root, old, path)
        new_blob = git.tree_blob(root, new, path)
        if old_blob is None or new_blob is None:
            continue
        if git.index_blob(root, path) == old_blob:
            git.set_index_entry(root, path, new_blob)
        wt = root / path
        if wt.is_file() and git.hash_file_blob(wt) == old_blob:
            from gitbake.fsutil import write_atomic

            write_atomic(wt, data.decode("utf-8"))
            result.updated.append(path)
        elif wt.exists() or old_blob != new_blob:
            result.kept.append(path)
    git.refresh_index(root, list(files))


def lineage_files(b: bread_mod.Bread, r: Recipe, input_text: str) -> dict[str, bytes]:
    return {
        bread_mod.BREAD_FILE: bread_mod.dumps(b).encode("utf-8"),
        recipe_mod.RECIPE_FILE: recipe_mod.dumps(r).encode("utf-8"),
        INPUT_FILE: comment_out(input_text).encode("utf-8"),
    }


def take_pending(root: Path, ref: str, force: bool = False) -> CommitResult:
    """`git bake fetch`: put a kept bake result on top of the current branch, as one bake commit.

    Its `.bread` and `recipe.yml` are taken; `input.yml` is commented out only if it is still the one
    that was baked (otherwise the user's newer input.yml stays)."""
    from gitbake.errors import UsageError

    commit = git.rev_parse(root, ref)
    head = git.rev_parse(root, "HEAD")
    if commit is None or head is None:
        raise UsageError(f"no bake result `{ref}`", "see `git bake status` for the results waiting to be taken")
    trigger = git.parents(root, commit)[0]
    here = git.show(root, head, bread_mod.BREAD_FILE)
    if here != git.show(root, trigger, bread_mod.BREAD_FILE) and not force:
        raise UsageError(
            f"this branch has a different model than when {ref} was baked (another bake or a merge landed since)",
            "taking it would replace that lineage: run `git bake fetch --force` to take it anyway, or `git bake run` "
            "to bake again on top",
        )
    files = {p: git.show(root, commit, p) or b"" for p in (bread_mod.BREAD_FILE, recipe_mod.RECIPE_FILE)}
    if git.show(root, head, INPUT_FILE) == git.show(root, trigger, INPUT_FILE):
        files[INPUT_FILE] = git.show(root, commit, INPUT_FILE) or b""
    msg = git.commit_message(root, commit)
    branch = git.symbolic_head(root)
    result = make_commit(root, head, branch, files, msg)
    if result.ref is None:
        git.delete_ref(root, result.pending or "")
        raise UsageError("HEAD moved while taking the bake result", "run `git bake fetch` again")
    git.delete_ref(root, ref)
    return result
