"""Status's validated plan, kept between runs: `git bake status` is run far more often than input.yml changes.

Validating input.yml costs pydantic's import and schema build, more than the rest of status together.
Once a plan has validated, it is written to `<git dir>/gitbake-plan.json` with a fingerprint of
everything it was computed from, and a later status whose fingerprint matches reuses it without
importing the config models. The fingerprint covers:

- the bytes of input.yml, `.bread` and `recipe.yml`, and whether input.yml is a link;
- HEAD, which fixes the lineage (targets and templates of earlier bakes);
- the stamp (git's index fields) of every file the validation read or probed, as `gitbake.reads` noted
  them: generator files, the base model's directory, GGUF or hub cache entry, its config and tokenizer;
- the environment variables that move the hub cache, and gitbake's own code (the stamps of the contract
  and repo modules), so an upgrade or an edit of the rules is never answered from an old result.

Only status reads this cache. `validate`, the pre-commit hook and `run` always validate in full, so a
stale entry could at worst show stale text, never let a bad commit in. Failures are never cached: a
file with errors is validated again each time, and its message is always fresh. As with the stat
cache, a file changed within a second of the validation makes the result not worth keeping (a coarse
clock could hide a second change), and any problem reading the cache is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gitbake import __version__, git, reads
from gitbake.contract.bread import BREAD_FILE
from gitbake.contract.files import INPUT_FILE, RECIPE_FILE
from gitbake.errors import Issue
from gitbake.fsutil import write_atomic
from gitbake.repo.modelversion import ModelVersion
from gitbake.repo.plan import BakePlan, DatasetPlan, Parent, Plan, PromptPlan, TargetPlan

CACHE_FILE = "gitbake-plan.json"
FORMAT = 1
RACY_NS = 1_000_000_000  # as gitbake.store.statcache: a file this fresh may change again unseen
ENV = ("HF_HUB_CACHE", "HF_HOME", "HOME")  # where identity looks for hub snapshots
CODE = (Path(__file__).parent, Path(__file__).parent.parent / "contract", Path(reads.__file__))
LINEAGE_FILES = (BREAD_FILE, RECIPE_FILE)

Validated = tuple[list[Issue], Plan]  # the warnings of input.yml and of its plan, and the plan


def cached(root: Path, compute: Callable[[], Validated]) -> Validated:
    """The validated plan of the working tree at `root`: reused when nothing it depends on has moved,
    else `compute()`d (which raises ConfigError on a bad file) and kept for the next call."""
    path = _cache_path(root)
    fingerprint = _fingerprint(root)
    hit = _load(path, fingerprint)
    if hit is not None:
        return hit
    started = time.time_ns()
    with reads.recording() as seen:
        warnings, plan = compute()
    deps = {p: reads.stamp(p) for p in sorted(seen)}
    if path is not None and not any(s is not None and s[4] >= started - RACY_NS for s in deps.values()):
        _save(path, fingerprint, deps, warnings, plan)
    return warnings, plan


def _cache_path(root: Path) -> Path | None:
    d = git.dot_git(root)
    return d / CACHE_FILE if d is not None else None


def _fingerprint(root: Path) -> dict[str, Any]:
    """What the plan depends on, apart from the files it noted (those are checked from the entry)."""
    files: dict[str, str | None] = {}
    for name in (INPUT_FILE, *LINEAGE_FILES):
        try:
            files[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
        except OSError:
            files[name] = None
    code = sorted(
        (str(f), reads.stamp(str(f)))
        for place in CODE
        for f in ([place] if place.is_file() else sorted(place.glob("*.py")))
    )
    return {
        "format": FORMAT,
        "version": __version__,
        "code": code,
        "env": {k: os.environ.get(k) for k in ENV},
        "root": str(root),
        "head": git.rev_parse(root, "HEAD"),
        "files": files,
        "input_is_link": os.path.islink(root / INPUT_FILE),
    }


def _load(path: Path | None, fingerprint: dict[str, Any]) -> Validated | None:
    if path is None:
        return None
    try:
        entry = json.loads(path.read_bytes())
        if entry.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            return None
        for p, st in entry["deps"].items():
            if reads.stamp(p) != (tuple(st) if st is not None else None):
                return None
        return [Issue(**w) for w in entry["warnings"]], plan_from_json(entry["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, damaged or from another version: validate again


def _save(path: Path, fingerprint: dict[str, Any], deps: dict[str, Any], warnings: list[Issue], plan: Plan) -> None:
    entry = {
        "fingerprint": fingerprint,
        "deps": deps,
        "warnings": [asdict(w) for w in warnings],
        "plan": plan_to_json(plan),
    }
    try:
        write_atomic(path, json.dumps(entry))  # in order: the prompts are listed as written
    except OSError:
        pass  # a read-only git directory: status still works, without the cache


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """Everything a Plan holds, as JSON that `plan_from_json` turns back into an equal Plan."""
    return {
        "parent": {
            "model": plan.parent.model.as_json(),
            "identity": plan.parent.identity,
            "foreign": plan.parent.foreign,
        },
        "prompts": {ref: asdict(p) for ref, p in plan.prompts.items()},
        "target": asdict(plan.target) if plan.target is not None else None,
        "bake": asdict(plan.bake) if plan.bake is not None else None,
        "warnings": [asdict(w) for w in plan.warnings],
    }


def plan_from_json(data: dict[str, Any]) -> Plan:
    parent, bake = data["parent"], data["bake"]
    model = parent["model"]
    return Plan(
        parent=Parent(
            ModelVersion(model["base_model"], tuple(model["adapters"]), model["model_name"]),
            parent["identity"],
            parent["foreign"],
        ),
        prompts={ref: PromptPlan(**p) for ref, p in data["prompts"].items()},
        target=TargetPlan(**data["target"]) if data["target"] is not None else None,
        bake=BakePlan(**{**bake, "datasets": [DatasetPlan(**d) for d in bake["datasets"]]}) if bake else None,
        warnings=[Issue(**w) for w in data["warnings"]],
    )
