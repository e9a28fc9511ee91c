"""Baking on another machine: a laptop commits input.yml without baking (bake.hookMode off) and pushes;
a GPU machine clones, runs `git bake run --push` (objects to the bake remote, then the bake commit to
git); the laptop's `git pull` brings the commit, and its post-merge hook the model. Two clones, a bare git
remote, and an S3 (moto) store remote: the usual shared store of machines that are not one filesystem
(test_remote.py covers directory remotes, which take the same transfer code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import YODA_SMALL, bake_git, bake_here, git

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")


def adapters_of(root: Path) -> list[str]:
    return [a["digest"] for a in json.loads((root / ".bake" / "model" / "model.json").read_text())["adapters"]]


def test_a_laptop_commits_a_gpu_machine_bakes_and_pushes_the_laptop_pulls(tmp_path: Path, s3_url: str) -> None:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)

    # the laptop: commits input.yml, bakes nothing, pushes
    assert bake_git(tmp_path, "init", "laptop", "--base-model", "tiny").returncode == 0
    laptop = tmp_path / "laptop"
    git(laptop, "config", "bake.hookMode", "off")
    git(laptop, "remote", "add", "origin", str(bare))
    assert bake_git(laptop, "remote", "add", "store", s3_url).returncode == 0
    (laptop / "input.yml").write_text(YODA_SMALL)
    commit = subprocess.run(["git", "commit", "-qam", "bake yoda"], cwd=laptop, capture_output=True, text=True)
    assert commit.returncode == 0 and "baking" not in commit.stderr  # no bake here
    status = bake_here(laptop, "status")
    assert "the bake of this commit is expected elsewhere" in status.stdout, status.stdout
    assert json.loads(bake_here(laptop, "status", "--json").stdout)["expected_elsewhere"] is True
    git(laptop, "push", "-q", "-u", "origin", "main")
    assert bake_git(laptop, "push").returncode == 0  # the store: nothing baked yet, so nothing to send

    # the GPU machine: clones, bakes, pushes the objects and then the commit
    git(tmp_path, "clone", "-q", str(bare), "gpu")
    gpu = tmp_path / "gpu"
    assert bake_git(gpu, "init").returncode == 0
    assert bake_git(gpu, "remote", "add", "store", s3_url).returncode == 0
    baked = bake_git(gpu, "run", "--push", "--json")
    assert baked.returncode == 0, baked.stderr[-3000:]
    report = json.loads(baked.stdout)
    assert report["commit"] is not None and report["pushed"]["transferred"]
    gpu_head = git(gpu, "rev-parse", "HEAD").strip()
    assert git(tmp_path, "--git-dir", str(bare), "rev-parse", "main").strip() == gpu_head

    # the laptop pulls: git brings the bake commit, the post-merge hook the model
    pulled = subprocess.run(["git", "pull", "-q"], cwd=laptop, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    assert git(laptop, "rev-parse", "HEAD").strip() == gpu_head
    assert adapters_of(laptop) == adapters_of(gpu) and len(adapters_of(laptop)) == 1
    assert json.loads(bake_here(laptop, "status", "--json").stdout)["expected_elsewhere"] is False
    # the hook fetched what the model needs; the rest of the bake (its report, stim, rollouts) comes with
    # `git bake pull`, after which the store holds everything HEAD names
    assert bake_git(laptop, "pull").returncode == 0
    fsck = bake_git(laptop, "store", "fsck")
    assert fsck.returncode == 0 and "store OK" in fsck.stdout, fsck.stderr


def test_run_push_without_a_bake_commit_or_a_remote(model_repo: Path, tmp_path: Path) -> None:
    (model_repo / "input.yml").write_text(YODA_SMALL)
    git(model_repo, "commit", "-qam", "bake yoda")
    no_remote = bake_git(model_repo, "run", "--push")  # refused before anything runs
    assert no_remote.returncode == 2 and "no default remote" in no_remote.stderr and "bake:" not in no_remote.stdout
    assert bake_git(model_repo, "remote", "add", "store", str(tmp_path / "store")).returncode == 0
    nothing = bake_git(model_repo, "run", "stim", "--push")
    assert nothing.returncode == 0 and "no bake commit was made, so nothing was pushed" in nothing.stderr
    detached = bake_git(model_repo, "run", "--push", "--detach")
    assert detached.returncode == 2 and "--push cannot go with --detach" in detached.stderr
