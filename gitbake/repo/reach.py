"""Which store objects a revision needs, and which any ref or reflog entry reaches.

A commit's model is named by its `.bread` (`[PARENT_MODEL] adapters`: the adapter chain's manifests) and
its `recipe.yml` (each step's `outputs` and each bake's `adapter`). Manifests name the files under them;
`Store.closure` adds those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import recipe as recipe_mod
from gitbake.contract.digest import is_digest
from gitbake.repo import revfiles

LINEAGE_FILES = (bread_mod.BREAD_FILE, recipe_mod.RECIPE_FILE)


def digests_in(path: str, data: bytes) -> set[str]:
    """Store digests a version of `.bread` or `recipe.yml` refers to (a damaged file refers to none: fsck
    reports HEAD's through `revfiles`)."""
    try:
        parsed = revfiles.parse(path, data, None)
    except revfiles.DAMAGED:
        return set()
    out: set[str] = set()
    if isinstance(parsed, bread_mod.Bread):
        out |= set(parsed.parent_adapters or [])
    else:
        out |= recipe_digests(parsed)
    return {d for d in out if is_digest(d)}


def recipe_digests(r: recipe_mod.Recipe) -> set[str]:
    out: set[str] = set()
    for step in r.steps:
        out |= set((step.outputs or {}).values())
    for b in r.resources.bakes:
        if b.adapter:
            out.add(b.adapter)
        extra = (b.model_extra or {}).get("outputs")
        if isinstance(extra, dict):  # tolerant records: another tool's field may be anything
            out |= {v for v in extra.values() if isinstance(v, str)}
    return out


# the steps whose output is the data a bake trained on (the questions, the answers)
DATA_STEPS = ("run_stim", "run_rollout")


def unrecorded_outputs(r: recipe_mod.Recipe) -> list[str]:
    """The steps of `r` that gitbake ran (they carry a key) but that record no output: a bake commit
    whose questions or answers were lost before it was made (bgit's steps, made in Bread's cloud, carry
    no key and are not ours to judge)."""
    return [
        f"step {s.step} {s.action} of {s.resource_name or '?'} (key {s.key[:12]})"
        for s in r.steps
        if s.action in DATA_STEPS and s.key and not (s.outputs or {}).get("manifest")
    ]


def _from_versions(versions: Iterable[tuple[str, str, bytes]]) -> set[str]:
    out: set[str] = set()
    for _commit, path, data in versions:
        out |= digests_in(path, data)
    return out


def needed_by(root: Path, revs: Sequence[str]) -> set[str]:
    """Objects the models of `revs` need (their own .bread / recipe.yml, not their history's)."""
    commits = [revfiles.resolve(root, rev) for rev in revs]
    return _from_versions(git.blobs_at(root, commits, LINEAGE_FILES))


def reachable(root: Path) -> set[str]:
    """Objects named by any commit that a ref or reflog entry reaches, and by the working tree."""
    found = _from_versions(git.blobs_at(root, git.all_commits(root), LINEAGE_FILES))
    for name in LINEAGE_FILES:
        p = root / name
        if p.is_file():
            found |= digests_in(name, p.read_bytes())
    return found
