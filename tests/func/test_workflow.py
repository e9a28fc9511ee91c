"""The git workflow end to end with the real git binary and real bakes on tiny: a commit bakes, the bake
commit is clean, sequential bakes, checkout brings models back, merge, revert, clone + pull, failures."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gitbake.contract import bread as bread_mod
from gitbake.contract import recipe as recipe_mod
from gitbake.contract.inputtext import comment_out
from gitbake.repo.repo import open_repo

from helpers import YODA_SMALL, bake_git, bake_here, copy_baked, git, invoke


def chain(root: Path, rev: str = "HEAD") -> list[str]:
    data = git(root, "show", f"{rev}:.bread")
    return bread_mod.parse(data).parent_adapters or []


def model_files(root: Path) -> dict[str, bytes]:
    d = root / ".bake" / "model"
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def adapter_bytes(root: Path, digest: str) -> dict[str, bytes]:
    s = open_repo(root).store
    return {rel: s.read_bytes(e.digest) for rel, e in s.read_manifest(digest).files.items()}


def test_a_commit_bakes_and_the_bake_commit_is_clean(baked_repo: dict[str, Any]) -> None:
    root, first = baked_repo["root"], baked_repo["first"]
    # the hook's commit of input.yml was followed by exactly one bake commit on top of it
    log = git(root, "log", "--format=%s", "-5").splitlines()
    assert log[:4] == [log[0], "bake yoda again", log[2], "bake yoda"] and log[0].startswith("bake: yoda_bake_")
    assert git(root, "status", "--porcelain") == ""  # clean: .bread, recipe.yml and input.yml are all committed
    files = git(root, "show", "--name-only", "--format=", first).split()
    assert sorted(files) == [".bread", "input.yml", "recipe.yml"]
    text = git(root, "show", f"{first}:input.yml")
    assert "# PROMPT:" in text and "\nPROMPT:" not in "\n" + text
    assert "bake commit" in baked_repo["hook_output"]
    # .bread names the model; recipe.yml records the full lineage with keys and digests
    b = bread_mod.parse(git(root, "show", f"{first}:.bread"))
    assert b.bake is not None and b.bake.name.startswith("yoda_bake_") and len(b.parent_adapters or []) == 1
    r = recipe_mod.parse(git(root, "show", f"{first}:recipe.yml"))
    assert [s.action for s in r.steps] == [
        "create_prompt",
        "create_prompt",
        "create_target",
        "run_stim",
        "run_rollout",
        "create_bake",
        "run_bake",
    ]
    bake = r.resources.bakes[-1]
    assert (
        bake.adapter == b.parent_adapters[-1]
        and bake.metrics
        and "gap_closed" in bake.metrics
        and "final_loss" in bake.metrics
    )
    assert open_repo(root).store.has(bake.adapter)


def test_second_commit_bakes_on_top(baked_repo: dict[str, Any]) -> None:
    root, first, second = baked_repo["root"], baked_repo["first"], baked_repo["second"]
    assert chain(root, second)[:1] == chain(root, first) and len(chain(root, second)) == 2
    r = recipe_mod.parse(git(root, "show", f"{second}:recipe.yml"))
    assert r.resources.bakes[-1].parent == r.resources.bakes[0].bake_name
    create = [s for s in r.steps if s.action == "create_bake"][-1]
    assert create.model_extra["parent"]["adapters"] == chain(
        root, first
    )  # the teacher was the parent model, not the base
    log = json.loads(bake_git(root, "log", "--json").stdout)
    assert [v["commit"] for v in log] == [second, first] and log[0]["metrics"]["steps"] >= 1


def test_checkout_restores_the_exact_adapter_bytes(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    first, second = baked_repo["first"], baked_repo["second"]
    git(root, "checkout", "-q", first)  # fires post-checkout
    files = model_files(root)
    want = adapter_bytes(root, chain(root, first)[0])
    assert {k.removeprefix("adapters/0/"): v for k, v in files.items() if k.startswith("adapters/0/")} == want
    assert json.loads(files["model.json"])["adapters"][0]["digest"] == chain(root, first)[0]
    assert not any(k.startswith("adapters/1/") for k in files)
    git(root, "checkout", "-q", "main")
    assert len(json.loads((root / ".bake/model/model.json").read_text())["adapters"]) == 2
    # `git bake checkout REV --to DIR` materialises without moving HEAD
    out = json.loads(bake_git(root, "checkout", first, "--to", str(tmp_path / "older"), "--json").stdout)
    assert out["adapters"] == chain(root, first) and git(root, "rev-parse", "HEAD").strip() == second
    assert (tmp_path / "older/adapters/0/adapter_model.safetensors").read_bytes() == want["adapter_model.safetensors"]


def test_reset_is_detected_and_checkout_fixes_it(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    git(root, "reset", "-q", "--hard", baked_repo["first"])  # fires no hook
    st = json.loads(bake_git(root, "status", "--json").stdout)
    assert st["model"]["state"] == "stale" and "git bake checkout" in st["model"]["fix"]
    assert "not the model of HEAD" in bake_git(root, "status").stderr
    assert bake_git(root, "checkout").returncode == 0
    assert json.loads(bake_git(root, "status", "--json").stdout)["model"]["state"] == "current"


def test_revert_of_a_bake_commit_brings_the_previous_model_back_without_baking(
    baked_repo: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_baked(baked_repo, tmp_path)
    before = git(root, "rev-list", "--count", "HEAD")
    out = subprocess.run(["git", "revert", "--no-edit", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    assert "baking" not in out.stderr
    assert int(git(root, "rev-list", "--count", "HEAD")) == int(before) + 1  # only the revert: no bake commit
    assert chain(root) == chain(root, baked_repo["first"])
    current = json.loads((root / ".bake/model/model.json").read_text())
    assert [a["digest"] for a in current["adapters"]] == chain(root, baked_repo["first"])


def test_branches_merge_takes_the_incoming_lineage(formal_branch: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(formal_branch, tmp_path)  # `formal`, made at main's first bake, baked by its commit's hook
    formal_bread = git(root, "show", "formal:.bread")
    assert "formal_bake_" in formal_bread
    git(root, "checkout", "-q", "main")
    # both sides' input.yml are cleared (commented out): no conflict, the incoming one is taken, as the
    # lineage files' driver takes the incoming .bread and recipe.yml
    git(root, "merge", "-q", "--no-edit", "formal")
    assert (root / "input.yml").read_text() == git(root, "show", "formal:input.yml")
    assert (root / ".bread").read_text() == formal_bread  # the incoming branch's lineage, not a mix and not ours
    assert (root / "recipe.yml").read_text() == git(root, "show", "formal:recipe.yml")
    assert [a["digest"] for a in json.loads((root / ".bake/model/model.json").read_text())["adapters"]] == chain(
        root, "formal"
    )
    tree = bake_git(root, "tree").stdout
    assert "formal_bake_" in tree and tree.count("yoda_bake_") == 2
    models = json.loads(bake_git(root, "models", "--json").stdout)
    assert len(models) == 3 and all(m["local"] for m in models)


def test_clone_init_pull_restores_the_model(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    remote = tmp_path / "remote-store"
    assert bake_git(root, "remote", "add", "shared", str(remote)).returncode == 0
    assert bake_git(root, "push").returncode == 0
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    init = bake_git(clone, "init")
    assert init.returncode == 0 and "git bake pull" in init.stdout
    assert "gitbake hook shim" in (clone / ".git/hooks/post-checkout").read_text()  # hooks come with init in a clone
    assert bake_git(clone, "remote", "add", "shared", str(remote)).returncode == 0
    pulled = bake_git(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert model_files(clone) == model_files(root)
    # with a default bake remote, checking out an older model fetches what it needs by itself
    co = subprocess.run(["git", "checkout", "-q", baked_repo["first"]], cwd=clone, capture_output=True, text=True)
    assert co.returncode == 0 and ".bake/model is now" in co.stderr
    assert (
        model_files(clone)["adapters/0/adapter_model.safetensors"]
        == adapter_bytes(root, chain(root, baked_repo["first"])[0])["adapter_model.safetensors"]
    )


def test_checkout_without_the_objects_names_them(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    assert bake_git(clone, "init").returncode == 0
    co = subprocess.run(["git", "checkout", "-q", baked_repo["first"]], cwd=clone, capture_output=True, text=True)
    assert co.returncode == 0 and "git bake pull" in co.stderr  # a warning, and git goes on
    out = bake_git(clone, "checkout")
    assert out.returncode == 1 and "not in the store" in out.stderr and "git bake pull" in out.stderr
    st = json.loads(bake_git(clone, "status", "--json").stdout)
    assert st["model"]["state"] in ("stale", "absent") and "pull" in st["model"]["fix"]


def test_unknown_revisions_are_usage_errors(baked_repo: dict[str, Any]) -> None:
    root = baked_repo["root"]
    for args in (["checkout", "nope"], ["show", "nope"], ["log", "nope"], ["eval", "nope"]):
        out = bake_git(root, *args)
        assert out.returncode == 2 and "unknown model address `nope`" in out.stderr, args
    out = bake_git(root, "show", git(root, "rev-list", "--max-parents=0", "HEAD").strip())
    assert out.returncode == 0 and "base model (nothing baked yet)" in out.stdout


def test_failed_bake_leaves_everything_as_it_was(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "commit", "-qam", "yoda", "--no-verify")
    head = git(model_repo, "rev-parse", "HEAD")
    files = {n: (model_repo / n).read_bytes() for n in ("input.yml", ".bread", "recipe.yml")}

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr("gitbake.engine.bake.Baker.train", boom)
    with pytest.raises(RuntimeError):
        invoke("run")
    assert git(model_repo, "rev-parse", "HEAD") == head
    assert {n: (model_repo / n).read_bytes() for n in files} == files
    assert git(model_repo, "status", "--porcelain") == ""
    assert git(model_repo, "for-each-ref", "refs/bake/") == ""
    assert (
        open_repo(model_repo).store.get_key("bake", json.loads(invoke("validate", "--json").stdout)["bake"]["key"])
        is None
    )


def test_run_refuses_uncommitted_input(model_repo: Path) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL)
    result = invoke("run")
    assert result.exit_code == 2 and "uncommitted" in result.stderr and "git commit" in result.stderr
    assert (model_repo / "input.yml").read_text() == YODA_SMALL


def test_bake_only_input_rebakes_with_the_lineage(
    baked_repo: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BAKE section alone reuses the recorded prompts, target and rollouts (by plain target name)."""
    root = copy_baked(baked_repo, tmp_path)
    monkeypatch.chdir(root)
    git(root, "config", "bake.hookMode", "off")
    (root / "input.yml").write_text("BAKE:\n  name: again\n  datasets:\n    - target: yoda_target\n  epochs: 1\n")
    git(root, "commit", "-qam", "re-bake")

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the rollout ran again")

    monkeypatch.setattr("gitbake.engine.rollout.make_rollouts", boom)
    out = json.loads(invoke("run", "--json").stdout)
    assert [s["stage"] for s in out["stages"]] == ["bake"] and out["commit"]["ref"] == "refs/heads/main"
    assert len(chain(root)) == 3 and git(root, "status", "--porcelain") == ""
    assert "# BAKE:" in (root / "input.yml").read_text()


def test_comment_out_keeps_comments_blank_lines_and_other_keys() -> None:
    text = "# my notes\nPROMPT:\n  teacher:\n    # why\n    messages: []\n\nBAKE: {name: x}\nother: 1\n"
    assert (
        comment_out(text)
        == "# my notes\n# PROMPT:\n#   teacher:\n    # why\n#     messages: []\n\n# BAKE: {name: x}\nother: 1\n"
    )


def test_eval_recomputes_without_changing_the_model(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = copy_baked(baked_repo, tmp_path)
    before = git(root, "show", "HEAD:.bread")
    out = bake_here(root, "eval", baked_repo["first"], "--json")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert (
        report["adapter"] == chain(root, baked_repo["first"])[0]
        and report["d_before"] > 0
        and report["gap_closed"] is not None
    )
    assert git(root, "show", "HEAD:.bread") == before
    bad = bake_git(root, "eval", "nope")
    assert bad.returncode == 2 and "unknown model address" in bad.stderr


def test_checkout_to_never_deletes_a_directory_it_did_not_write(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    root = baked_repo["root"]
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep me")
    out = bake_git(root, "checkout", "HEAD", "--to", str(mine))
    assert out.returncode == 2 and "left alone" in out.stderr and (mine / "thesis.txt").read_text() == "keep me"
    assert bake_git(root, "checkout", "HEAD", "--to", str(root)).returncode == 2 and (root / ".git").is_dir()
    fresh = tmp_path / "fresh"
    assert bake_git(root, "checkout", "HEAD", "--to", str(fresh)).returncode == 0
    assert bake_git(root, "checkout", baked_repo["first"], "--to", str(fresh)).returncode == 0  # ours: replaced
    assert len(json.loads((fresh / "model.json").read_text())["adapters"]) == 1


def test_only_rank_zero_makes_the_bake_commit(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "commit", "-qam", "yoda", "--no-verify")
    head = git(model_repo, "rev-parse", "HEAD")
    monkeypatch.setenv("RANK", "1")  # what the deepspeed launcher sets in the other processes
    out = json.loads(invoke("run", "--json").stdout)
    assert out["commit"] is None and [s["stage"] for s in out["stages"]][-1] == "bake"
    assert git(model_repo, "rev-parse", "HEAD") == head and git(model_repo, "status", "--porcelain") == ""


def test_two_concurrent_runs_bake_once_and_the_second_finds_it_cached(model_repo: Path, tmp_path: Path) -> None:
    """Two `git bake run` processes at once: the second waits for the first (a lock on the bake), then
    finds the bake cached and the bake commit made: one training, one bake commit, nothing left aside."""
    (model_repo / "input.yml").write_text(YODA_SMALL.replace("epochs: 1", "epochs: 40"))  # long enough to overlap
    git(model_repo, "commit", "-qam", "yoda")
    logs = [tmp_path / "first.err", tmp_path / "second.err"]

    def start(log: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["git", "bake", "run"], cwd=model_repo, stdout=subprocess.PIPE, stderr=log.open("w"), text=True
        )

    first = start(logs[0])
    deadline = time.monotonic() + 300
    while "loading tiny" not in logs[0].read_text() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first one has loaded its model: it is baking
    second = start(logs[1])
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    errs = [log.read_text() for log in logs]
    assert first.returncode == 0 and second.returncode == 0, errs
    bake_lines = [next(ln for ln in out.splitlines() if ln.startswith("bake ")) for out in outs]
    assert "ran in" in bake_lines[0] and "cached" in bake_lines[1], outs  # trained once
    assert "waiting for it" in errs[1] and "already baked and committed" in errs[1]
    subjects = git(model_repo, "log", "--format=%s").splitlines()
    assert subjects[1] == "yoda" and sum(s.startswith("bake: ") for s in subjects) == 1
    assert git(model_repo, "for-each-ref", "refs/bake/") == ""  # no spurious "superseded" result
    assert git(model_repo, "status", "--porcelain") == ""


@pytest.fixture(scope="module")
def formal_branch(
    baked_repo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> dict[str, Any]:
    """The baked repository with a branch `formal` made at its first bake and baked there, while main baked
    once more: rebasing `formal` onto main replays a bake made on another model. Built once (a bake);
    tests take copies (`copy_baked`)."""
    with pytest.MonkeyPatch.context() as mp:
        from conftest import _isolate

        _isolate(mp, tmp_path_factory.mktemp("formal-home"), model_cache)
        root = copy_baked(baked_repo, tmp_path_factory.mktemp("formal"))
        git(root, "checkout", "-q", "-b", "formal", baked_repo["first"])
        (root / "input.yml").write_text(
            YODA_SMALL.replace("You are Yoda. Speak like Yoda.", "You are a formal butler.").replace(
                "yoda_bake", "formal_bake"
            )
        )
        git(root, "commit", "-qam", "formal")  # the foreground hook bakes it: formal = [first's bake, formal's]
        assert git(root, "log", "--format=%s", "-1").startswith("bake: formal_bake_") and len(chain(root)) == 2
        return {"root": root}


def test_rebasing_a_baked_branch_stops_at_the_stale_bake_and_rebakes_on_the_new_base(
    formal_branch: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_baked(formal_branch, tmp_path)
    trigger_text = git(root, "show", "formal~1:input.yml")
    rebase = subprocess.run(["git", "rebase", "main"], cwd=root, capture_output=True, text=True)
    # the commit of input.yml replays cleanly onto main's cleared input.yml; the bake commit made on the
    # old base's model does not: the rebase stops on it and says how to go on
    assert rebase.returncode != 0
    assert "input.yml" not in git(root, "diff", "--name-only", "--diff-filter=U")
    assert "git rebase --skip" in rebase.stderr and "git bake run" in rebase.stderr, rebase.stderr
    skipped = subprocess.run(["git", "rebase", "--skip"], cwd=root, capture_output=True, text=True)
    assert skipped.returncode == 0, skipped.stderr
    assert "`git bake run` bakes it on the new base" in skipped.stderr
    assert git(root, "log", "--format=%s", "-2").splitlines() == [
        "formal",
        git(root, "log", "--format=%s", "-1", "main").strip(),
    ]
    assert (root / "input.yml").read_text() == trigger_text and chain(root) == chain(root, "main")
    ran = bake_here(root, "run")
    assert ran.exit_code == 0, ran.stderr
    # the model is main's (both of its bakes) plus formal's, baked again on top of it
    assert chain(root)[:-1] == chain(root, "main") and len(chain(root)) == 3
    assert git(root, "status", "--porcelain") == ""


def test_a_rebase_that_replays_a_stale_bake_says_how_to_fix_it(formal_branch: dict[str, Any], tmp_path: Path) -> None:
    """With the lineage driver of an older gitbake (which always took the replayed side), the rebase goes
    through: post-rewrite names the stale bake commit and the commands that make the lineage whole."""
    root = copy_baked(formal_branch, tmp_path)
    git(root, "config", "merge.bake-theirs.driver", "cp -f %B %A")
    rebase = subprocess.run(["git", "rebase", "main"], cwd=root, capture_output=True, text=True)
    assert rebase.returncode == 0, rebase.stderr
    stale = git(root, "rev-parse", "HEAD").strip()
    assert not chain(root)[:-1] == chain(root, "main")  # the stale lineage: main's second bake is left out
    assert f"warning: bake commit {stale[:12]}" in rebase.stderr and "leaves out 1 adapter(s)" in rebase.stderr
    fix = f"git reset --keep {stale[:12]}~1 && git bake run"
    assert fix in rebase.stderr
    git(root, "reset", "-q", "--keep", f"{stale}~1")
    assert bake_here(root, "run").exit_code == 0
    assert chain(root)[:-1] == chain(root, "main") and len(chain(root)) == 3


def test_a_bad_engine_knob_exits_2_naming_the_variable(baked_repo: dict[str, Any], tmp_path: Path) -> None:
    """An engine knob in the environment that is not a number stops a bake through the real CLI, before
    any model is loaded, with the variable and the fix."""
    root = copy_baked(baked_repo, tmp_path)
    env = {**os.environ, "GITBAKE_PACK_MAX": "1k"}
    bake = ["git", "bake", "run", "bake", "--force"]
    out = subprocess.run(bake, cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "GITBAKE_PACK_MAX='1k' is not a whole number" in out.stderr and "unset GITBAKE_PACK_MAX" in out.stderr
    assert "Traceback" not in out.stderr
    assert git(root, "status", "--porcelain") == ""  # nothing half-done in the working tree
