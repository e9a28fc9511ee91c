"""Helpers to build model repositories in tests (real git, real files)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from gitbake import bread as bread_mod
from gitbake import recipe as recipe_mod
from gitbake.cli import cli

YODA = """\
PROMPT:
  teacher:
    messages:
      - role: system
        content: You are Yoda. Speak like Yoda.
TARGET:
  name: yoda_target
  generators:
    - type: hardcoded
      questions: ["What is the capital of France?", "How do I make tea?"]
  num_traj_per_stimulus: 2
  max_tokens: 32
BAKE:
  name: yoda_bake
  datasets:
    - target: yoda_target
      weight: 1.0
  epochs: 2
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def invoke(*args: str) -> Result:
    """Run the CLI in-process (cwd is the test's), stderr kept apart from stdout."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def bake_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `git bake` external command, as a user would."""
    return subprocess.run(["git", "bake", *args], cwd=root, capture_output=True, text=True)


def record_bake(root: Path, target_name: str, target_key: str, config: dict[str, Any] | None = None,
                bake_name: str = "old_bake_000000000000", message: str = "bake") -> str:
    """Commit a `.bread` + `recipe.yml` as a finished bake would leave them (until bake commits exist)."""
    b = bread_mod.read(root) or bread_mod.Bread()
    b.sections["TARGET"] = {"hash": target_key, "target_name": target_name}
    b.sections["BAKE"] = {"hash": "0" * 64, "bake_name": bake_name}
    bread_mod.write(root, b)
    r = recipe_mod.read(root) or recipe_mod.new("tiny")
    r.steps.append(recipe_mod.Step(step=len(r.steps) + 1, action="create_target", resource_type="target",
                                   resource_name=target_name, config=config or {}, key=target_key))
    r.resources.targets.append(target_name)
    recipe_mod.write(root, r)
    git(root, "add", ".bread", "recipe.yml")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()
