"""`git bake init`: a new directory, an existing repository, a bgit repository; re-running is safe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gitbake.contract import bread, config, recipe
from gitbake.errors import UsageError
from gitbake.workflow.init import init, template_input

from helpers import git, invoke, make_bgit_repo

FILES = {".bread", "recipe.yml", "input.yml", ".gitignore", ".gitattributes"}


def snapshot(root: Path) -> dict[str, bytes]:
    files = (p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != ".git")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_new_directory(tmp_path: Path) -> None:
    report = init(tmp_path / "my-model", base_model="tiny")
    root = tmp_path / "my-model"
    assert report.created_repo and report.committed and set(report.written) == FILES
    assert git(root, "status", "--porcelain") == ""  # everything committed
    assert git(root, "log", "--format=%s").strip() == "Initialise model repository my-model (git bake init)"
    assert set(git(root, "ls-files").split()) == FILES
    b = bread.read(root)
    assert b is not None and b.repo_name == "my-model" and b.base_model == "tiny" and b.parent_adapters == []
    r = recipe.read(root)
    assert r is not None and r.base_model == "tiny" and r.steps == []
    # input.yml is the documented example with its sections commented out: the first commit runs nothing
    loaded = config.load_input(root / "input.yml", root)
    assert loaded.config.is_empty
    assert ".bake/" in (root / ".gitignore").read_text().split()
    attrs = (root / ".gitattributes").read_text()
    assert ".bread merge=bake-theirs" in attrs and "recipe.yml merge=bake-theirs" in attrs
    assert git(root, "config", "merge.bake-theirs.driver").strip() == "git bake merge-driver lineage %O %A %B %P"


def test_template_example_is_valid_for_tiny_once_uncommented(tmp_path: Path) -> None:
    text = re.sub(r"(?m)^# ", "", template_input())
    loaded = config.parse_input(text, tmp_path)
    assert loaded.config.BAKE and loaded.config.TARGET and loaded.config.PROMPT
    assert loaded.warnings == []


def test_rerun_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "m"
    init(root, base_model="tiny")
    before = snapshot(root)
    head = git(root, "rev-parse", "HEAD")
    report = init(root)
    assert report.written == [] and not report.created_repo and report.committed is None
    assert snapshot(root) == before and git(root, "rev-parse", "HEAD") == head


def test_existing_git_repository_keeps_user_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / ".gitignore").write_text("*.log\n")
    (root / "notes.txt").write_text("mine\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "user commit")
    report = init(root, base_model="tiny", name="renamed")
    assert not report.created_repo and report.committed is None
    assert (root / ".gitignore").read_text() == "*.log\n.bake/\n"
    assert (root / "notes.txt").read_text() == "mine\n"
    staged = set(git(root, "diff", "--cached", "--name-only").split())
    assert staged == FILES
    assert bread.read(root).repo_name == "renamed"  # type: ignore[union-attr]


def test_bgit_repository(tmp_path: Path) -> None:
    root = make_bgit_repo(tmp_path / "baked_thinking")
    before = {n: (root / n).read_bytes() for n in ("input.yml", "recipe.yml")}
    old_bread = (root / ".bread").read_text()
    report = init(root, download=False)  # its base model is Qwen/Qwen3-32B
    assert report.bgit_repo and not report.created_repo
    # input.yml and recipe.yml are kept as they are
    assert {n: (root / n).read_bytes() for n in before} == before
    # .bread keeps everything bgit wrote, plus our base model (from bgit's [RECIPE] section)
    b = bread.read(root)
    assert b is not None and b.base_model == "Qwen/Qwen3-32B" and b.repo_name == "baked_thinking"
    for line in old_bread.splitlines():
        assert line in (root / ".bread").read_text().splitlines()
    # the cloud parent is not here: said plainly
    assert any("Bread's cloud" in n and "restarts from the base model" in n for n in report.notes)
    # keepTheirs (which kept ours) is replaced by a driver that takes theirs
    assert git(root, "config", "--get-regexp", "merge\\..*").count("keepTheirs") == 0
    assert "keepTheirs" not in (root / ".gitattributes").read_text()
    assert ".bake/" in (root / ".gitignore").read_text().split()
    # bgit's hooks need Bread's cloud; they are set aside, not deleted
    hooks = root / ".git" / "hooks"
    assert (hooks / "pre-commit.bgit").exists() and "gitbake hook shim" in (hooks / "pre-commit").read_text()
    assert (hooks / "post-merge.bgit").exists()
    # a commit now works (bgit's pre-commit would have failed without bgit installed)
    git(root, "commit", "-q", "-m", "adopt gitbake")


def test_bgit_repository_with_explicit_base_model(tmp_path: Path) -> None:
    root = make_bgit_repo(tmp_path / "b")
    report = init(root, base_model="tiny")
    assert report.base_model == "tiny" and bread.read(root).base_model == "tiny"  # type: ignore[union-attr]


def test_merge_driver_really_takes_the_incoming_lineage(tmp_path: Path) -> None:
    root = tmp_path / "m"
    init(root, base_model="tiny")
    git(root, "switch", "-q", "-c", "formal")
    b = bread.read(root)
    assert b is not None
    b.set("BAKE", "bake_name", "formal_bake_aaaaaaaaaaaa")
    b.set("BAKE", "hash", "a" * 64)
    bread.write(root, b)
    git(root, "commit", "-q", "-am", "formal bake")
    git(root, "switch", "-q", "main")
    b2 = bread.read(root)
    assert b2 is not None
    b2.set("BAKE", "bake_name", "casual_bake_bbbbbbbbbbbb")
    b2.set("BAKE", "hash", "b" * 64)
    bread.write(root, b2)
    git(root, "commit", "-q", "-am", "casual bake")
    git(root, "merge", "-q", "--no-edit", "formal")
    merged = bread.read(root)
    assert merged is not None and merged.bake is not None and merged.bake.name == "formal_bake_aaaaaaaaaaaa"


@pytest.mark.parametrize("base", ["not a model", "foo", "./missing-dir"])
def test_bad_base_model_is_exit_2_and_creates_nothing(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "new-model", "--base-model", base)
    assert result.exit_code == 2, result.output
    assert "--base-model" in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "new-model").exists()


def test_bad_name_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "m", "--name", "has space")
    assert result.exit_code == 2 and not (tmp_path / "m").exists()


def test_inside_another_repository_is_refused(tmp_path: Path) -> None:
    init(tmp_path / "outer")
    with pytest.raises(UsageError):
        init(tmp_path / "outer" / "sub")


def test_changing_base_model_after_bakes_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "m"
    init(root, base_model="tiny")
    b = bread.read(root)
    assert b is not None
    b.set("PARENT_MODEL", "adapters", '["' + "a" * 64 + '"]')
    bread.write(root, b)
    with pytest.raises(UsageError) as exc:
        init(root, base_model="org/model", download=False)
    assert exc.value.exit_code == 2


def test_local_directory_base_model(tmp_path: Path) -> None:
    model = tmp_path / "weights"
    model.mkdir()
    (model / "config.json").write_text("{}")
    report = init(tmp_path / "m", base_model=str(model))
    assert report.base_model == str(model)


def test_cli_init_prints_next_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "m")
    assert result.exit_code == 0
    assert "Created model repository m" in result.stdout and "Next:" in result.stdout
    again = invoke("init", "m", "--json")
    assert again.exit_code == 0 and '"created_repo": false' in again.stdout


def test_base_model_directory_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "models" / "mymodel"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    report = init(tmp_path / "deep" / "m", base_model="models/mymodel")  # no ./, from the cwd
    assert report.base_model == str(weights)
    from gitbake.contract import identity

    assert identity.base_identity(report.base_model, report.root)["digest"] != "missing"
    inside = init(tmp_path / "m2")
    (inside.root / "weights").mkdir()
    (inside.root / "weights" / "config.json").write_text("{}")
    monkeypatch.chdir(inside.root)
    assert init(inside.root, base_model="./weights").base_model == "weights"  # recorded relative: clones find it


def test_empty_base_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke("init", "m", "--base-model", "").exit_code == 2 and not (tmp_path / "m").exists()


def test_first_commit_is_made_on_rerun_after_it_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-identity"))
    (tmp_path / "no-identity").write_text("[user]\n\tuseConfigOnly = true\n")
    monkeypatch.setenv("EMAIL", "")
    monkeypatch.chdir(tmp_path)
    first = invoke("init", "m")
    assert first.exit_code == 1
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "ok"))
    (tmp_path / "ok").write_text("[user]\n\tname = A\n\temail = a@b.c\n")
    again = invoke("init", "m")
    assert again.exit_code == 0, again.output
    assert git(tmp_path / "m", "log", "--format=%s").strip() == "Initialise model repository m (git bake init)"


def test_rerun_with_new_options(tmp_path: Path) -> None:
    root = tmp_path / "m"
    init(root)
    report = init(root, base_model="org/model", name="other", download=False)
    assert recipe.read(root).base_model == "org/model"  # type: ignore[union-attr]
    assert any("kept the name `m`" in n for n in report.notes)


def test_bgit_target_only_input_uses_bgits_recorded_prompts(tmp_path: Path) -> None:
    from gitbake.repo.repo import open_repo

    root = make_bgit_repo(tmp_path / "b")
    init(root, base_model="tiny")
    (root / "input.yml").write_text("TARGET:\n  name: again\n  generators: [{type: hardcoded, questions: ['hi?']}]\n")
    plan = open_repo(root).plan()
    assert plan.prompts["teacher"].source == "recipe.yml"
    assert plan.prompts["teacher"].config["messages"][0]["content"].startswith("Think about your own thinking")
