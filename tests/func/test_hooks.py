"""Hooks with the real git binary: install / uninstall, the user's own hooks, bgit's hooks, core.hooksPath,
pre-commit validation, silence where there is nothing to do, pre-push, and no ML imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gitbake.store.remote import Remote
from gitbake.workflow import hooks

from helpers import YODA_SMALL, bake_git, copy_baked, git, make_bgit_repo


def commit(root: Path, msg: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "commit", "-q", "-m", msg, *args], cwd=root, capture_output=True, text=True)


def test_init_installs_every_hook(model_repo: Path) -> None:
    d = model_repo / ".git" / "hooks"
    for name in hooks.HOOKS:
        text = (d / name).read_text()
        assert hooks.SHIM_MARK in text and 'git bake hook "$hook"' in text and (d / name).stat().st_mode & 0o111
    # the shipped shims are the source of truth: installed = packaged, with this interpreter as fallback
    src = Path(__file__).parent.parent.parent / "gitbake" / "resources" / "hooks" / "post-commit"
    package = Path(hooks.__file__).resolve().parents[1]
    assert (d / "post-commit").read_text() == src.read_text().replace("@PYTHON@", f"'{sys.executable}'").replace(
        "@PACKAGE@", f"'{package}'"
    )


def test_existing_user_hook_is_kept_and_still_runs(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", str(root))
    hook = root / ".git" / "hooks" / "post-commit"
    hook.write_text('#!/bin/sh\necho ran >> "$(git rev-parse --show-toplevel)/.mine"\n')
    hook.chmod(0o755)
    assert bake_git(root, "init", "--base-model", "tiny").returncode == 0
    assert (root / ".git/hooks/post-commit.legacy").exists()
    runs = (root / ".mine").read_text().count("ran")  # init's own first commit ran it too
    (root / "notes.txt").write_text("x")
    git(root, "add", "notes.txt")
    assert commit(root, "notes").returncode == 0
    assert (root / ".mine").read_text().count("ran") == runs + 1
    # uninstall puts it back
    assert bake_git(root, "hooks", "uninstall").returncode == 0
    assert hook.read_text().startswith("#!/bin/sh\necho ran") and not (root / ".git/hooks/post-commit.legacy").exists()


def test_failing_user_pre_commit_still_stops_the_commit(model_repo: Path) -> None:
    legacy = model_repo / ".git/hooks/pre-commit.legacy"
    legacy.write_text("#!/bin/sh\necho 'no commits on Fridays' >&2\nexit 1\n")
    legacy.chmod(0o755)
    (model_repo / "x.txt").write_text("x")
    git(model_repo, "add", "x.txt")
    out = commit(model_repo, "x")
    assert out.returncode != 0 and "Fridays" in out.stderr


def test_bgit_hooks_are_replaced(tmp_path: Path) -> None:
    root = make_bgit_repo(tmp_path / "bgit")
    out = bake_git(root, "init", "--no-download")  # its base model is Qwen/Qwen3-32B
    assert out.returncode == 0 and "bgit" in out.stdout
    d = root / ".git/hooks"
    assert hooks.SHIM_MARK in (d / "pre-commit").read_text() and hooks.SHIM_MARK in (d / "post-merge").read_text()
    assert "update-bread" in (d / "pre-commit.bgit").read_text()
    assert not (d / "pre-commit.legacy").exists()  # bgit's hook is not chained: it would rewrite .bread
    assert "keepTheirs" not in git(root, "config", "--local", "--list")


def test_core_hooks_path_is_respected(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", str(root))
    git(root, "config", "core.hooksPath", "githooks")
    assert bake_git(root, "init", "--base-model", "tiny").returncode == 0
    assert hooks.SHIM_MARK in (root / "githooks/post-commit").read_text()
    assert not (root / ".git/hooks/post-commit").exists()


def test_hooks_are_silent_in_a_plain_repository(tmp_path: Path) -> None:
    shared = tmp_path / "shared-hooks"
    shared.mkdir()
    for name in hooks.HOOKS:
        (shared / name).write_text(hooks.shim_text(name))
        (shared / name).chmod(0o755)
    root = tmp_path / "plain"
    git(tmp_path, "init", "-q", str(root))
    git(root, "config", "core.hooksPath", str(shared))
    (root / "input.yml").write_text("PROMPT: {}\n")  # even a file named input.yml: no .bread, not ours
    git(root, "add", "input.yml")
    out = commit(root, "plain")
    assert out.returncode == 0 and out.stderr == "" and out.stdout == ""
    co = subprocess.run(["git", "checkout", "-q", "-b", "other"], cwd=root, capture_output=True, text=True)
    assert co.returncode == 0 and co.stderr == ""


def test_pre_commit_rejects_an_invalid_staged_input(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL.replace("epochs: 1", "epochs: 1\n  epoch: 3"))
    git(model_repo, "add", "input.yml")
    out = commit(model_repo, "typo")
    assert out.returncode == 1
    assert "input.yml:" in out.stderr and "epoch" in out.stderr and "epochs" in out.stderr  # line, field, did-you-mean
    assert "--no-verify" in out.stderr
    assert git(model_repo, "log", "--format=%s", "-1").strip().startswith("Initialise")  # nothing committed
    assert "epoch: 3" in (model_repo / "input.yml").read_text()  # and nothing lost
    # only the staged version counts: fixing the working tree without staging still fails
    (model_repo / "input.yml").write_text(YODA_SMALL)
    assert commit(model_repo, "typo").returncode == 1


def test_pre_commit_rejects_an_unknown_dataset_target(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL.replace("- target: yoda_target", "- target: yoda_targte"))
    git(model_repo, "add", "input.yml")
    out = commit(model_repo, "typo")
    assert out.returncode == 1 and "yoda_targte" in out.stderr and "did you mean `yoda_target`" in out.stderr


def test_nothing_happens_during_a_rebase(model_repo: Path) -> None:
    git(model_repo, "config", "bake.hookMode", "off")
    git(model_repo, "checkout", "-q", "-b", "feature")
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "commit", "-qam", "yoda")
    git(model_repo, "checkout", "-q", "main")
    (model_repo / "other.txt").write_text("x")
    git(model_repo, "add", "other.txt")
    git(model_repo, "commit", "-qm", "other")
    git(model_repo, "config", "bake.hookMode", "foreground")  # a bake would now run inline, if one started
    git(model_repo, "checkout", "-q", "feature")
    out = subprocess.run(["git", "rebase", "-q", "main"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "baking" not in out.stderr
    assert git(model_repo, "log", "--format=%s", "-1").strip() == "yoda"  # no bake commit followed
    picked = subprocess.run(
        ["git", "cherry-pick", "--allow-empty", "HEAD"], cwd=model_repo, capture_output=True, text=True
    )
    assert "baking" not in picked.stderr


def test_internal_error_warns_and_git_goes_on(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    (root / ".bread").write_text((root / ".bread").read_text().replace("adapters=", "adapters=broken"))
    out = subprocess.run(
        ["git", "bake", "hook", "post-checkout", "a", "b", "1"], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0 and "gitbake" in out.stderr and "PARENT_MODEL.adapters" in out.stderr


def test_a_hook_with_nothing_to_do_imports_no_ml_library(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    code = (
        "import sys, runpy\nsys.argv = ['git-bake', 'hook', '{}', 'x', 'y', '1']\n"
        "try:\n    runpy.run_module('gitbake', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'deepspeed', 'click') if m in sys.modules]\nprint(bad)\n"
    )
    for name in ("post-checkout", "post-merge", "post-commit", "pre-commit"):
        out = subprocess.run([sys.executable, "-c", code.format(name)], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "[]", (name, out.stdout, out.stderr)


def test_pre_push_uploads_models_when_auto_push_is_on(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(root, "remote", "add", "origin", str(bare))
    store_remote = tmp_path / "models"
    assert bake_git(root, "remote", "add", "models", str(store_remote)).returncode == 0
    out = subprocess.run(["git", "push", "-q", "origin", "main"], cwd=root, capture_output=True, text=True)
    adapters = json.loads(bake_git(root, "show", "--json").stdout)["adapters"]
    remote = Remote("models", str(store_remote))
    assert out.returncode == 0 and not any(remote.has(a) for a in adapters)  # off by default
    git(root, "config", "bake.autoPush", "true")
    out = subprocess.run(["git", "push", "-q", "origin", "main:other"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and "uploaded" in out.stderr
    assert adapters and all(remote.has(a) for a in adapters)


def test_pre_commit_checks_the_index_being_committed(model_repo: Path) -> None:
    # `git commit -a` commits a temporary index: an invalid input.yml in it is refused ...
    (model_repo / "input.yml").write_text("BAKE:\n  epochs: bogus\n")
    out = subprocess.run(["git", "commit", "-qam", "x"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 1 and "epochs" in out.stderr
    out = subprocess.run(["git", "commit", "-qm", "x", "input.yml"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 1 and "epochs" in out.stderr
    # ... and a commit of another path is not refused for an input.yml it does not commit
    git(model_repo, "add", "input.yml")
    (model_repo / "other.txt").write_text("x")
    git(model_repo, "add", "other.txt")
    out = subprocess.run(["git", "commit", "-qm", "other", "other.txt"], cwd=model_repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_husky_hooks_are_left_in_place_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", str(root))
    hook = root / ".git/hooks/pre-commit"
    hook.write_text('#!/usr/bin/env sh\n. "$(dirname "$0")/_/husky.sh"\nnpx lint-staged\n')
    hook.chmod(0o755)
    out = bake_git(root, "init", "--base-model", "tiny")
    assert out.returncode == 0 and "husky" in out.stdout and 'git bake hook pre-commit "$@"' in out.stdout
    assert "lint-staged" in hook.read_text() and not (root / ".git/hooks/pre-commit.legacy").exists()
    assert hooks.SHIM_MARK in (root / ".git/hooks/post-commit").read_text()


def test_rebase_refreshes_the_model_at_its_end(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    git(root, "checkout", "-q", "-b", "side", baked_repo["first"])
    (root / "side.txt").write_text("x")
    git(root, "add", "side.txt")
    git(root, "commit", "-qm", "side work")
    assert len(json.loads((root / ".bake/model/model.json").read_text())["adapters"]) == 1
    out = subprocess.run(["git", "rebase", "-q", "main"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (
        len(json.loads((root / ".bake/model/model.json").read_text())["adapters"]) == 2
    )  # main's model, via post-rewrite
    assert json.loads(bake_git(root, "status", "--json").stdout)["model"]["state"] == "current"


def test_shim_runs_the_installing_interpreter_before_path(model_repo: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git-bake").write_text("#!/bin/sh\necho stale-global-install >&2\nexit 1\n")
    (fake / "git-bake").chmod(0o755)
    import os

    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    (model_repo / "x.txt").write_text("x")
    git(model_repo, "add", "x.txt")
    out = subprocess.run(["git", "commit", "-qm", "x"], cwd=model_repo, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "stale-global-install" not in out.stderr


# ------------------------------------------------------ pre-commit holds the index to `validate` (issue 14.10)


def test_pre_commit_fails_closed_on_an_internal_error(model_repo: Path, tmp_path: Path) -> None:
    """A crash inside the hook used to let the commit through: now nothing unchecked is committed."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    # the hook's interpreter imports this at start-up: checking input.yml then fails like a bug would
    (site / "sitecustomize.py").write_text(
        "from gitbake.repo import repo\n"
        "def broken(self, loaded=None):\n    raise RuntimeError('simulated bug')\n"
        "repo.ModelRepo.plan = broken\n"
    )
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "add", "input.yml")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(["git", "commit", "-q", "-m", "bake"], cwd=model_repo, capture_output=True, text=True, env=env)
    assert out.returncode == 1, out.stderr
    assert "internal error" in out.stderr and "simulated bug" in out.stderr and "git commit --no-verify" in out.stderr
    assert git(model_repo, "log", "--format=%s", "-1").strip().startswith("Initialise")
    assert subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "bake"], cwd=model_repo, env=env).returncode == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"PROMPT:\n  teacher:\n    messages: []\n\x00\n",
        b"TARGET:\n  generators:\n    - type: hardcoded\n      questions: [" + b"q" * 5_000_000 + b"]\n",
        b"BAKE:\n  name: \xff\n",
    ],
    ids=["NUL byte", "5 MB question", "not UTF-8"],
)
def test_pre_commit_runs_exactly_what_validate_runs_on_the_staged_blob(raw: bytes, model_repo: Path) -> None:
    (model_repo / "input.yml").write_bytes(raw)
    expected = bake_git(model_repo, "validate")
    assert expected.returncode == 2
    error = expected.stderr.splitlines()[1].strip()  # e.g. `input.yml:4: this is a binary file (it contains NUL bytes)`
    git(model_repo, "add", "input.yml")
    (model_repo / "input.yml").write_text(YODA_SMALL)  # the working tree is fine now: the index is what counts
    out = commit(model_repo, "bad")
    assert out.returncode == 1 and error in out.stderr and "--no-verify" in out.stderr, out.stderr
    assert git(model_repo, "log", "--format=%s", "-1").strip().startswith("Initialise")


def test_a_symlinked_input_yml_is_refused(model_repo: Path) -> None:
    (model_repo / "real.yml").write_text("BAKE:\n  epochs: true\n")
    (model_repo / "input.yml").unlink()
    (model_repo / "input.yml").symlink_to("real.yml")
    assert "symbolic link" in bake_git(model_repo, "validate").stderr
    git(model_repo, "add", "-A")
    out = commit(model_repo, "link")  # input.yml changes type (file -> link): it used to skip the check
    assert (
        out.returncode == 1
        and "input.yml: input.yml is a symbolic link" in out.stderr
        and "cp --remove-destination" in out.stderr
    )
    assert git(model_repo, "log", "--format=%s", "-1").strip().startswith("Initialise")


def test_without_gitbake_the_shim_stops_only_commits_of_input_yml(model_repo: Path, tmp_path: Path) -> None:
    import os
    import shutil

    hook = model_repo / ".git/hooks/pre-commit"
    hook.write_text(hooks.shim_text("pre-commit").replace(sys.executable, str(tmp_path / "gone/python")))
    bindir = tmp_path / "bin"  # git alone on PATH: no git-bake
    bindir.mkdir()
    os.symlink(shutil.which("git") or "git", bindir / "git")
    env = {**os.environ, "PATH": f"{bindir}:/bin"}
    (model_repo / "notes.txt").write_text("x")
    git(model_repo, "add", "notes.txt")
    out = subprocess.run(
        ["git", "commit", "-q", "-m", "notes"], cwd=model_repo, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "not installed" in out.stderr
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "add", "input.yml")
    out = subprocess.run(["git", "commit", "-q", "-m", "bake"], cwd=model_repo, capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "commit stopped" in out.stderr and "git commit --no-verify" in out.stderr


def test_pre_commit_validates_during_a_rebase_and_under_its_env_var(model_repo: Path) -> None:
    """The other hooks stay out of a rebase's way, but pre-commit used to as well: a NUL byte in input.yml
    got committed during a conflicted rebase, or by any commit with GIT_REFLOG_ACTION=rebase set."""
    import os

    git(model_repo, "config", "bake.hookMode", "off")
    with open(model_repo / "input.yml", "ab") as fh:
        fh.write(b"\0")
    env = {**os.environ, "GIT_REFLOG_ACTION": "rebase"}
    out = subprocess.run(["git", "commit", "-qam", "nul"], cwd=model_repo, capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "NUL" in out.stderr and "--no-verify" in out.stderr, out.stderr
    assert git(model_repo, "log", "--format=%s", "-1").strip().startswith("Initialise")
    git(model_repo, "checkout", "-q", "--", "input.yml")
    # a real rebase, stopped on a conflict (in another file): a `git commit` made meanwhile is checked
    git(model_repo, "checkout", "-q", "-b", "feature")
    (model_repo / "notes.txt").write_text("feature\n")
    git(model_repo, "add", "notes.txt")
    git(model_repo, "commit", "-qm", "feature notes")
    git(model_repo, "checkout", "-q", "main")
    (model_repo / "notes.txt").write_text("main\n")
    git(model_repo, "add", "notes.txt")
    git(model_repo, "commit", "-qm", "main notes")
    git(model_repo, "checkout", "-q", "feature")
    stopped = subprocess.run(["git", "rebase", "-q", "main"], cwd=model_repo, capture_output=True, text=True)
    assert stopped.returncode != 0 and (model_repo / ".git" / "rebase-merge").is_dir(), stopped.stderr
    assert hooks.busy(model_repo)
    (model_repo / "notes.txt").write_text("both\n")
    with open(model_repo / "input.yml", "ab") as fh:
        fh.write(b"\0")
    git(model_repo, "add", "notes.txt", "input.yml")
    head = git(model_repo, "rev-parse", "HEAD")
    out = commit(model_repo, "nul during a rebase")
    assert out.returncode == 1 and "NUL" in out.stderr, out.stderr
    assert git(model_repo, "rev-parse", "HEAD") == head
    # the other hooks still stay out of the way: a valid resolution commits and the rebase goes on
    git(model_repo, "checkout", "-q", "HEAD", "--", "input.yml")
    assert commit(model_repo, "resolved").returncode == 0


def test_a_hook_with_nothing_to_do_answers_in_shell(model_repo: Path, tmp_path: Path) -> None:
    """A commit that does not touch input.yml, and a checkout that keeps the model, start no Python (it
    cost 390-450 ms a commit); whatever may need the Python path still gets it."""
    log = tmp_path / "started"
    wrapper = tmp_path / "python"  # the shims' interpreter, noting which hook started it: -m gitbake hook NAME
    wrapper.write_text(f'#!/bin/sh\necho "$4" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    for name in hooks.HOOKS:
        (model_repo / ".git/hooks" / name).write_text(hooks.shim_text(name).replace(sys.executable, str(wrapper)))
    git(model_repo, "config", "bake.hookMode", "off")

    def started() -> list[str]:
        names = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return names

    def commit_notes(text: str) -> None:
        (model_repo / "notes.txt").write_text(text)
        git(model_repo, "add", "notes.txt")
        assert commit(model_repo, "notes").returncode == 0

    commit_notes("1")
    assert started() == ["post-commit"]  # nothing has said yet that .bake/model is .bread's model
    assert (model_repo / hooks.VERIFIED).is_file()
    commit_notes("2")
    git(model_repo, "checkout", "-q", "-b", "side")
    git(model_repo, "commit", "-q", "--amend", "-m", "notes, amended")
    git(model_repo, "checkout", "-q", "main")
    git(model_repo, "merge", "-q", "--no-ff", "-m", "merge", "side")
    assert started() == []
    # .bread rewritten, or .bake/model replaced: only Python can say whether the model still matches
    (model_repo / ".bread").write_bytes((model_repo / ".bread").read_bytes())
    commit_notes("3")
    assert started() == ["post-commit"]
    assert subprocess.run(["git", "bake", "checkout", "HEAD"], cwd=model_repo, capture_output=True).returncode == 0
    git(model_repo, "checkout", "-q", "side")
    assert started() == ["post-checkout"]
    git(model_repo, "checkout", "-q", "main")
    assert started() == []
    # a commit of input.yml is checked and considered for a bake
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "add", "input.yml")
    assert commit(model_repo, "yoda").returncode == 0
    assert started() == ["pre-commit", "post-commit"]
