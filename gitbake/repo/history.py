"""Looking at models across history: `git bake log`, `tree`, `show`, `models`.

A model version is a commit whose `.bread` names a new adapter chain; its details come from that commit's
`recipe.yml` (metrics, parents). Other branches' files are read from git's objects (bgit's `tree` could
not read them: bgit.md §7.9), so every view works without checking anything out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitbake import git
from gitbake.contract import bread as bread_mod
from gitbake.contract import recipe as recipe_mod
from gitbake.errors import UsageError
from gitbake.repo import revfiles
from gitbake.repo.modelversion import CarriesModel, ModelVersion

if TYPE_CHECKING:
    from gitbake.repo.repo import ModelRepo


@dataclass
class LoggedVersion(CarriesModel):
    """A commit's model (`model`) as log, tree, show and models list it: with the commit, its bake and
    its metrics."""

    commit: str
    time: int
    subject: str
    model: ModelVersion
    bake_name: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_bake: str | None = None
    refs: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "time": self.time,
            "subject": self.subject,
            "base_model": self.base_model,
            "adapters": list(self.adapters),
            "bake_name": self.bake_name,
            "model_name": self.model_name,
            "metrics": self.metrics,
            "parent_bake": self.parent_bake,
            "refs": self.refs,
        }


def _files_at(root: Path, commit: str, where: str) -> tuple[bread_mod.Bread | None, recipe_mod.Recipe | None]:
    """The commit's lineage files; a damaged one raises ConfigError naming `<where>:<file>` (revfiles)."""
    return revfiles.bread_at(root, commit, where), revfiles.recipe_at(root, commit, where)


def version_at(root: Path, rev: str) -> LoggedVersion:
    """The model of one revision (the base model when nothing has been baked there)."""
    commit = revfiles.resolve(root, rev)
    b, r = _files_at(root, commit, rev)
    if b is None:
        raise UsageError(
            f"{rev} has no .bread: it is not a commit of a gitbake model repository",
            "pick a later commit (see `git bake log`)",
        )
    line = git.run(root, "log", "-1", "--format=%ct %s", commit).strip()
    t, _, subject = line.partition(" ")
    adapters = b.parent_adapters or []
    bake = r.resources.bakes[-1] if r is not None and r.resources.bakes and adapters else None
    if bake is not None and bake.adapter not in (None, adapters[-1]):
        bake = next((x for x in r.resources.bakes if x.adapter == adapters[-1]), None) if r else None
    model = ModelVersion(
        b.pinned_base_model or (r.base_model if r else None) or "tiny",
        tuple(adapters),
        b.parent_model_name if adapters else None,
    )
    return LoggedVersion(
        commit,
        int(t or 0),
        subject,
        model,
        bake.bake_name if bake else (b.bake.name if b.bake and adapters else None),
        dict(bake.metrics or {}) if bake else {},
        bake.parent if bake else None,
    )


def version_at_address(repo: ModelRepo, address: str) -> tuple[LoggedVersion, int | None]:
    """The model a model address names (repo/address.py), and its checkpoint step if it names one: then
    the version's last adapter is the one saved at that step."""
    from gitbake.repo import checkpoints
    from gitbake.repo.address import split_checkpoint

    rev, step = split_checkpoint(address)
    v = version_at(repo.root, rev)
    if step is not None:
        v = dataclasses.replace(v, model=checkpoints.at_step(repo, rev, v.model, step))
    return v, step


def log(root: Path, rev: str = "HEAD") -> list[LoggedVersion]:
    """Model versions on `rev`'s first-parent line, newest first: each commit where the chain changed."""
    out: list[LoggedVersion] = []
    revfiles.resolve(root, rev)
    rows = git.first_parent_log(root, rev, [bread_mod.BREAD_FILE])
    for sha, _t, _subject in rows:
        try:
            v = version_at(root, sha)
        except (UsageError, revfiles.DAMAGED):
            continue  # no .bread, or a damaged one: not a model version this view can show
        if not v.adapters:
            continue
        if out and out[-1].chain == v.chain:
            out[-1] = v  # the older commit introduced this chain: report it there
            continue
        out.append(v)
    return out


def branch_tips(root: Path) -> dict[str, str]:
    """Short ref name -> commit, for branches and pending bake results."""
    tips = {}
    for ref, sha in {**git.refs(root, "refs/heads/"), **git.refs(root, "refs/bake/")}.items():
        tips[ref.removeprefix("refs/heads/").removeprefix("refs/")] = sha
    return tips


def all_versions(root: Path) -> list[LoggedVersion]:
    """Every model version on every branch (and pending bake result), each chain once, oldest first."""
    seen: dict[tuple[str, ...], LoggedVersion] = {}
    for ref, sha in sorted(branch_tips(root).items()):
        for v in log(root, sha):
            known = seen.get(v.chain)
            if known is None or v.time < known.time:
                if known is not None:
                    v.refs = known.refs
                seen[v.chain] = v
                known = v
        try:
            tip = version_at(root, sha)
        except (UsageError, revfiles.DAMAGED):
            continue
        if tip.adapters and tip.chain in seen:
            seen[tip.chain].refs.append(ref)
    return sorted(seen.values(), key=lambda v: (len(v.adapters), v.time))


@dataclass
class TreeNode:
    version: LoggedVersion | None  # None: the base model
    label: str
    children: list[TreeNode] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.version.as_json() if self.version else None,
            "label": self.label,
            "children": [c.as_json() for c in self.children],
        }


def tree(root: Path) -> list[TreeNode]:
    """The lineage across all branches: one root per base model, each bake under its parent model."""
    nodes: dict[tuple[str, ...], TreeNode] = {}
    roots: list[TreeNode] = []
    for v in all_versions(root):
        base_key = (v.base_model,)
        if base_key not in nodes:
            nodes[base_key] = TreeNode(None, f"{v.base_model} (base model)")
            roots.append(nodes[base_key])
        node = TreeNode(v, v.bake_name or v.adapters[-1][:12])
        nodes[v.chain] = node
        parent = nodes.get(v.chain[:-1])
        if parent is None:  # the parent version is not on any branch any more: hang it under the base
            parent = nodes[base_key]
        parent.children.append(node)
    return roots


def models(root: Path, has: Any) -> list[dict[str, Any]]:
    """Every model version with whether its adapters are in the local store (`has(digest)`)."""
    out = []
    for v in all_versions(root):
        row = v.as_json()
        row["local"] = all(has(a) for a in v.adapters)
        out.append(row)
    return out
