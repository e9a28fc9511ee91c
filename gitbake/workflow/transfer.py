"""`git bake push` and `git bake pull`: which objects the revisions' models need, the transfer, and
`.bake/model` after a pull of HEAD's model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gitbake import git
from gitbake.errors import GitbakeError
from gitbake.repo import reach
from gitbake.repo.repo import ModelRepo
from gitbake.store import remote as remote_mod

if TYPE_CHECKING:
    from gitbake.repo.modeldir import Refreshed


@dataclass
class Transfer:
    verb: Literal["push", "pull"]
    remote: remote_mod.Remote
    revs: tuple[str, ...]  # as the command meant them (a first argument that is a revision included)
    report: remote_mod.TransferReport
    repo: ModelRepo

    def refresh_model(self) -> Refreshed | None:
        """After a pull for HEAD (no REV, or HEAD among them), what was pulled is HEAD's model: put it in
        place as `.bake/model`. None when there is nothing to refresh (a push, or other revisions)."""
        if self.verb != "pull" or (self.revs and "HEAD" not in self.revs):
            return None
        from gitbake.workflow.run import refresh_model

        return refresh_model(self.repo, fetch=False)


def remote_and_revs(root: Path, name: str | None, revs: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """`git bake push REV` with no remote name: a first argument that is no remote, no URL and no path but
    names a revision is the first revision, and the default remote is meant."""
    if (
        name is not None
        and name not in remote_mod.list_remotes(root)
        and "://" not in name
        and not name.startswith(("/", ".", "~"))
    ):
        if git.rev_parse(root, name) is not None:
            return None, (name, *revs)
    return name, revs


def _transfer(
    verb: Literal["push", "pull"],
    repo: ModelRepo,
    name: str | None,
    revs: tuple[str, ...],
    jobs: int,
    progress: Callable[[remote_mod.Remote], remote_mod.Progress | None],
    force: bool = False,
) -> Transfer:
    name, revs = remote_and_revs(repo.root, name, revs)
    target = remote_mod.resolve(repo.root, name)
    roots = reach.needed_by(repo.root, list(revs) or ["HEAD"])
    if verb == "push":
        report = remote_mod.push(repo.store, target, roots, jobs=jobs, progress=progress(target), force=force)
    else:
        report = remote_mod.pull(repo.store, target, roots, jobs=jobs, progress=progress(target))
    return Transfer(verb, target, revs, report, repo)


def push(
    repo: ModelRepo,
    name: str | None,
    revs: tuple[str, ...],
    jobs: int,
    progress: Callable[[remote_mod.Remote], remote_mod.Progress | None],
    force: bool = False,
) -> Transfer:
    """`git bake push [REMOTE] [REV]...`: upload what the models of REV... (default HEAD) need. Problems are
    in the report (`report.raise_for_problems("push")`), so the caller can show what moved first."""
    return _transfer("push", repo, name, revs, jobs, progress, force)


def pull(
    repo: ModelRepo,
    name: str | None,
    revs: tuple[str, ...],
    jobs: int,
    progress: Callable[[remote_mod.Remote], remote_mod.Progress | None],
) -> Transfer:
    """`git bake pull [REMOTE] [REV]...`: download what the models of REV... (default HEAD) need; then, once
    the report has no problems, `Transfer.refresh_model()` puts HEAD's model in place."""
    return _transfer("pull", repo, name, revs, jobs, progress)


def push_bake(repo: ModelRepo, commit: str, ref: str | None, jobs: int = 8) -> Transfer:
    """`git bake run --push`: the objects the bake commit's model needs to the bake remote first, then the
    commit to the branch's git remote, so whoever pulls the commit finds its model there."""
    if ref is None:
        raise GitbakeError(
            "the bake commit is not on a branch (the branch moved on while it baked): nothing was pushed",
            "take it with `git bake fetch`, then push with `git bake push && git push`",
        )
    done = push(repo, None, (commit,), jobs, lambda _target: None)
    done.report.raise_for_problems("push")
    branch = ref.removeprefix("refs/heads/")
    remote = git.config_get(repo.root, f"branch.{branch}.remote") or "origin"
    try:
        git.run(repo.root, "push", remote, f"{commit}:{ref}")
    except GitbakeError as exc:
        raise GitbakeError(
            f"the model's objects are on the bake remote, but `git push {remote} {branch}` failed: {exc.message}",
            f"pull and push again (`git pull --rebase && git push {remote} {branch}`): the objects need no second "
            "upload",
        ) from None
    return done
