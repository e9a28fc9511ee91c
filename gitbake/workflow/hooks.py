"""git hooks: installing the shims, and what each hook does (docs/workflow.md).

The shims (`gitbake/resources/hooks/` in the source tree, shipped in the package) exec `git bake hook NAME`; the logic
is here, so upgrading gitbake upgrades every repository's hooks. A shim answers in shell only where the
answer is sure to be "nothing to do" (no input.yml staged or committed; `.bake/model` already checked
against `.bread` and neither rewritten since: VERIFIED), so a commit that does not touch input.yml
starts no Python.

A hook never breaks git: outside a gitbake repository, during a rebase or cherry-pick it does nothing,
and an internal error is a warning (exit 0) — except `pre-commit`, which always checks a staged
input.yml (a rebase included) and fails closed (an input.yml it could not check is not committed;
`git commit --no-verify` is the way around), and `pre-push`, which stops a push whose models could not be
uploaded (as git-lfs does).

This module is on the hot path of every commit and checkout: it imports nothing heavy at module level.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gitbake import git
from gitbake.errors import ConfigError, GitbakeError
from gitbake.reporter import Reporter

HOOKS = ("pre-commit", "post-commit", "post-checkout", "post-merge", "post-rewrite", "pre-push")
SHIM_MARK = "gitbake hook shim"
MODE_CONFIG = "bake.hookMode"  # background (default) | foreground | off
AUTOPUSH_CONFIG = "bake.autoPush"
BREAD = ".bread"
INPUT = "input.yml"
RECIPE = "recipe.yml"
VERIFIED = ".bake/model.verified"  # the shims' record that .bake/model is .bread's model (_mark_verified)


# ------------------------------------------------------------------------------------ installing


def shim_text(name: str) -> str:
    from importlib import resources  # only installing needs it: not imported on every hook run

    text = resources.files("gitbake").joinpath(f"resources/hooks/{name}").read_text(encoding="utf-8")
    # the interpreter (and package) that installed the hook run it, as long as they exist (pre-commit's way)
    package = str(Path(__file__).resolve().parents[1])  # gitbake/, above workflow/
    return text.replace("@PYTHON@", _sh_quote(sys.executable)).replace("@PACKAGE@", _sh_quote(package))


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def is_bgit_hook(text: str) -> bool:
    """bgit's hooks call `bgit update-bread` (or npx @aibread/bgit) or copy HEAD^2's .bread: they would
    rewrite .bread behind our back, so they are set aside rather than chained."""
    return "update-bread" in text or "@aibread/bgit" in text or ("bgit" in text and "HEAD^2:.bread" in text)


def install(root: Path) -> list[str]:
    """Install (or update) the shims; returns notes about hooks that were there before."""
    notes = []
    d = git.hooks_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    for name in HOOKS:
        path = d / name
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
        if text is not None and SHIM_MARK not in text and "husky" in text:
            # husky's hooks find their script by their own file name: renamed to .legacy they would silently
            # do nothing. Leave them, and say how to chain ours.
            notes.append(
                f'your {name} hook is husky\'s: left as it is; add the line `git bake hook {name} "$@"` to '
                f".husky/{name}"
            )
            continue
        if text is not None and SHIM_MARK not in text:
            if is_bgit_hook(text):
                path.replace(d / f"{name}.bgit")
                notes.append(
                    f"set bgit's {name} hook aside as {name}.bgit (it calls `bgit update-bread`, which needs Bread's "
                    "cloud)"
                )
            else:
                legacy = d / f"{name}.legacy"
                if legacy.exists():
                    legacy.replace(d / f"{name}.legacy.old")
                path.replace(legacy)
                notes.append(f"kept your {name} hook as {name}.legacy; it still runs, before gitbake's")
        _write_executable(path, shim_text(name))
    return notes


def uninstall(root: Path) -> list[str]:
    """Remove our shims; a hook we had kept as .legacy goes back in its place."""
    notes = []
    d = git.hooks_dir(root)
    for name in HOOKS:
        path = d / name
        if path.is_file() and SHIM_MARK in path.read_text(encoding="utf-8", errors="replace"):
            path.unlink()
            legacy = d / f"{name}.legacy"
            if legacy.exists():
                legacy.replace(path)
                notes.append(f"restored your {name} hook")
    return notes


def installed(root: Path) -> dict[str, str]:
    """name -> state (gitbake | other | missing) of each hook."""
    d = git.hooks_dir(root)
    out = {}
    for name in HOOKS:
        path = d / name
        if not path.is_file():
            out[name] = "missing"
        else:
            out[name] = "gitbake" if SHIM_MARK in path.read_text(encoding="utf-8", errors="replace") else "other"
    return out


def _write_executable(path: Path, text: str) -> None:
    from gitbake.fsutil import write_atomic

    write_atomic(path, text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --------------------------------------------------------------------------------------- running


# what a hook says goes to git's stderr, marked as ours among git's own lines
REPORTER = Reporter(prefix="gitbake: ")
say = REPORTER.say


def busy(root: Path) -> bool:
    """A rebase, cherry-pick, revert or am is in progress: hooks stay out of its way."""
    marker = git.operation_in_progress(root)
    if marker is not None and marker != "MERGE_HEAD":  # a merge's own commit is not a rebase: post-merge must run
        return True
    action = os.environ.get("GIT_REFLOG_ACTION", "")
    return action.startswith(("rebase", "cherry-pick", "revert", "am"))


def main(name: str, args: list[str]) -> int:
    """`git bake hook NAME ARGS...`: the exit status git sees."""
    handler = _HANDLERS.get(name)
    if handler is None:
        say(f"unknown hook `{name}` (known: {', '.join(HOOKS)}); doing nothing")
        return 0
    if name == "pre-commit":
        return _fail_closed(lambda: _dispatch(name, handler, args))
    try:
        return _dispatch(name, handler, args)
    except ConfigError as exc:
        say(f"{name}: {exc.render()}")
        return 0
    except GitbakeError as exc:
        say(f"{name}: {exc.render()}")
        return 1 if name == "pre-push" else 0
    except Exception as exc:  # a hook must never break git
        say(f"internal error in the {name} hook ({type(exc).__name__}: {exc}); git goes on. Please report it.")
        return 0


def _dispatch(name: str, handler: Callable[[Path, list[str]], int], args: list[str]) -> int:
    root = git.find_root(Path.cwd())
    if root is None or not (root / BREAD).is_file():
        return 0  # not a model repository: stay silent
    # git is in the middle of a rebase or cherry-pick: post-rewrite catches up at its end. pre-commit is
    # not skipped: what gets committed is checked however it is committed (a NUL byte staged during a
    # rebase, or with GIT_REFLOG_ACTION=rebase in the environment, must not slip through)
    if busy(root) and name not in ("post-rewrite", "pre-commit"):
        return 0
    return handler(root, args)


def _fail_closed(check: Callable[[], int]) -> int:
    """pre-commit's exit status: an input.yml that is invalid, or that could not be checked at all (an
    internal error), is not committed. The guide promises the check; letting a commit through because
    the checker broke would break that promise silently."""
    way_around = "skip this check with `git commit --no-verify`"
    try:
        return check()
    except GitbakeError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        say(f"commit stopped: fix input.yml and commit again (or {way_around})")
        return 1
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
        say(
            f"internal error in the pre-commit hook ({type(exc).__name__}: {exc}): input.yml could not be checked, "
            f"so the commit is stopped. Run `git bake validate` to see the problem, or {way_around}; please report it."
        )
        return 1


def pre_commit(root: Path, args: list[str]) -> int:
    """Refuse a commit whose staged input.yml is invalid, naming the field, line and fix: the staged blob
    gets exactly the checks `git bake validate` runs (status.validate)."""
    # `git commit -a` and `git commit PATH` commit a temporary index that git names in GIT_INDEX_FILE:
    # that one, not .git/index, is what is being committed
    index = os.environ.get("GIT_INDEX_FILE")
    env = {"GIT_INDEX_FILE": str((Path.cwd() / index).resolve())} if index else None
    # T: a file that became a symbolic link (or back) is a change to check too
    staged = git.run(root, "diff", "--cached", "--name-only", "-z", "--diff-filter=ACMRT", env=env).split("\0")
    if INPUT not in staged:
        return 0
    entry = git.run(root, "ls-files", "--stage", "-z", "--", INPUT, env=env).split("\0")[0]
    mode, sha = entry.split()[:2]  # "<mode> <sha> <stage>\t<path>"
    from gitbake.repo.repo import open_repo
    from gitbake.workflow.status import validate

    data = git.blob(root, sha)  # the exact bytes that will be committed
    if data is None:
        raise GitbakeError(f"{INPUT} in the index is not a file ({mode} {sha})", "stage it again: git add input.yml")
    validate(open_repo(root), (mode, data))
    return 0


def should_bake(root: Path, commit: str) -> str | None:
    """Why this commit must not start a bake (None: it should): "merge", "no input change", "revert" or
    "lineage". Only a commit that changed input.yml itself bakes; a bake commit, a revert of one (it
    brings the previous model back: bgit users undo a bake that way), merges, cherry-picks and rebases
    never do."""
    if len(git.parents(root, commit)) > 1:
        return "merge"
    changed = git.changed_files(root, commit)
    if INPUT not in changed:
        return "no input change"
    if "This reverts commit" in git.commit_message(root, commit):
        return "revert"
    if BREAD in changed or RECIPE in changed:
        return "lineage"  # a bake commit, or a commit that edits the lineage by hand
    return None


def post_commit(root: Path, args: list[str]) -> int:
    from gitbake.contract.inputtext import has_sections

    head = git.rev_parse(root, "HEAD")
    if head is None:
        return 0
    why = should_bake(root, head)
    if why is not None:
        if why in ("revert", "lineage") and has_sections(git.show(root, head, INPUT) or b""):
            say(
                "a revert: nothing to bake; .bake/model follows the reverted .bread"
                if why == "revert"
                else "not baking: this commit changes .bread or recipe.yml as well as input.yml "
                "(commit input.yml on its own to bake it, or run `git bake run`)"
            )
        # a revert of a bake commit (or any commit that changes .bread) brings another model: follow it
        return _refresh(root)
    if not has_sections(git.show(root, head, INPUT) or b""):
        return 0  # a fully commented input.yml means "nothing to run"
    mode = (git.config_get(root, MODE_CONFIG) or "background").lower()
    if mode == "off":
        return 0
    from gitbake.repo.repo import open_repo

    repo = open_repo(root)
    branch = git.symbolic_head(root)
    if mode == "foreground":
        from gitbake.workflow.run import run_and_commit

        say("baking (bake.hookMode = foreground) ...")
        try:
            from gitbake.workflow.launch import configured

            report = run_and_commit(
                repo, rev=head, branch_ref=branch, reporter=REPORTER, launcher=configured(repo, None)
            )
        except GitbakeError as exc:
            say(f"the bake failed: {exc.render()}")
            say("input.yml, .bread and recipe.yml are unchanged; fix the cause and run `git bake run`")
            return 0
        for line in report.outcome() or ["the stages ran; no bake in this input.yml, so no bake commit"]:
            say(line)
        return 0
    from gitbake.workflow import jobs

    ahead = jobs.active(repo)
    job = jobs.start(repo, head, branch)
    if ahead:
        say(
            f"another bake is running (job {ahead[0].id}); this commit's bake is queued behind it as job {job.id}. "
            f"`git bake jobs` lists them; `git bake jobs cancel {job.id}` drops this one."
        )
    else:
        say(
            f"baking in the background (job {job.id}). `git bake status` shows progress; `git bake jobs wait` waits "
            "for it."
        )
    return 0


def post_checkout(root: Path, args: list[str]) -> int:
    if len(args) >= 3 and args[2] == "0":
        return 0  # a file checkout (git checkout -- FILE): HEAD did not move
    return _refresh(root)


def post_merge(root: Path, args: list[str]) -> int:
    return _refresh(root)


def post_rewrite(root: Path, args: list[str]) -> int:
    """After a rebase (or `git pull --rebase`) or an amend: the checkouts on the way were skipped. After a
    rebase, also say what is left to make the lineage whole (git gives the rewritten commits on stdin)."""
    if args[:1] == ["rebase"]:
        rewritten = [line.split()[1] for line in sys.stdin.read().splitlines() if len(line.split()) >= 2]
        _check_rebased(root, rewritten)
    return _refresh(root)


def _check_rebased(root: Path, rewritten: list[str]) -> None:
    """A bake commit replayed onto another model (a stale lineage: the merge driver stops the rebase on
    it, but an older driver or a hand resolution lets it through) is named with the commands that fix
    it; a rebased commit of input.yml left without its bake is named with the command that bakes it."""
    from gitbake.contract.inputtext import has_sections
    from gitbake.repo.lineage import stale_bakes

    head = git.rev_parse(root, "HEAD")
    for stale in stale_bakes(root, rewritten):
        c = stale.commit[:12]
        left_out = (
            f"; its model leaves out {len(stale.left_out)} adapter(s) of its new parent's" if stale.left_out else ""
        )
        fix = (
            f"`git reset --keep {c}~1 && git bake run`"
            if stale.commit == head
            else f"`git rebase -i {c}~1` (delete its line), then `git bake run` on its parent"
        )
        say(
            f"warning: bake commit {c} was rebased onto another model than the one it was baked on{left_out}. "
            f"Drop it and bake its input.yml again on the new base: {fix}; or undo the rebase: `git reset --keep "
            "ORIG_HEAD`"
        )
    if head in rewritten and should_bake(root, head) is None and has_sections(git.show(root, head, INPUT) or b""):
        say(
            f"the rebased commit {head[:12]} changes input.yml and its bake is not on this branch: "
            "`git bake run` bakes it on the new base"
        )


def _refresh(root: Path) -> int:
    # this path runs on every checkout: it opens the store without loading the config models (`repo`)
    from gitbake.contract import bread as bread_mod
    from gitbake.repo import modeldir

    read_at = time.time()  # before .bread is read: a .bread written after this is never taken as verified
    b = bread_mod.read(root)
    if b is None:
        return 0
    if modeldir.is_current(root, modeldir.spec_of(b)):
        _mark_verified(root, read_at)
        return 0  # the common case, answered without opening the store
    from gitbake.repo.storepath import open_store

    def fetch(roots: set[str]) -> int:
        from gitbake.workflow.run import fetch_objects

        return fetch_objects(root, store, roots)

    store = open_store(root)
    state = modeldir.refresh(root, store, fetch, git.rev_parse(root, "HEAD"))
    if state.state == "missing":
        say(
            f".bake/model is stale: the model of this commit needs {len(state.missing)} object(s) that are not in "
            "the store "
            f"({', '.join(d[:12] for d in state.missing[:3])}); fetch them with `git bake pull`"
        )
    elif state.state == "updated":
        n = len(state.adapters)
        say(f".bake/model is now {state.model_name or 'the base model'} ({n} adapter{'s' if n != 1 else ''})")
    if state.state in ("current", "updated"):
        _mark_verified(root, read_at)  # dated before the new model.json: the next hook checks it once more
    return 0


def _mark_verified(root: Path, read_at: float) -> None:
    """Leave `.bake/model.verified`, dated `read_at`: the shims answer "nothing to refresh" in shell while
    it is newer than both `.bread` and `.bake/model/model.json`, whatever rewrites either (a checkout, a
    bake, `git bake checkout REV`, an edit) sends the next hook to Python again. Best effort: without it,
    the shims only ever ask Python."""
    path = root / VERIFIED
    try:
        if path.parent.is_dir():
            path.touch()
            os.utime(path, (read_at, read_at))
    except OSError:
        pass


def pre_push(root: Path, args: list[str]) -> int:
    """With `bake.autoPush true`, upload the models the pushed commits need before git pushes them."""
    if (git.config_get(root, AUTOPUSH_CONFIG) or "").lower() not in ("true", "1", "yes", "on"):
        return 0
    from gitbake.repo import reach
    from gitbake.repo.repo import open_repo
    from gitbake.store import remote

    name = remote.default_remote(root)
    if name is None:
        say(
            "bake.autoPush is on but no bake remote is configured (git bake remote add NAME URL); pushing without "
            "models"
        )
        return 0
    shas = []
    for line in sys.stdin.read().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].strip("0"):
            shas.append(parts[1])
    if not shas:
        return 0
    roots = reach.needed_by(root, shas)
    target = remote.resolve(root, name)
    report = remote.push(open_repo(root).store, target, roots)
    report.raise_for_problems("push")
    if report.transferred:
        say(f"uploaded {len(report.transferred)} object(s) to bake remote {name} before the push")
    return 0


_HANDLERS: dict[str, Callable[[Path, list[str]], int]] = {
    "pre-commit": pre_commit,
    "post-commit": post_commit,
    "post-checkout": post_checkout,
    "post-merge": post_merge,
    "post-rewrite": post_rewrite,
    "pre-push": pre_push,
}
