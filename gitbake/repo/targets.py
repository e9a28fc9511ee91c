"""`git bake target ls | show NAME`: the targets this lineage knows, by plain or hashed name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gitbake.errors import ConfigError, UsageError
from gitbake.repo.lineage import KnownTarget
from gitbake.repo.repo import ModelRepo


@dataclass
class TargetEntry:
    target: KnownTarget
    in_input: bool  # defined by the working tree's input.yml (not yet baked)

    def as_json(self) -> dict[str, Any]:
        out = self.target.as_json()
        out["in_input"] = self.in_input
        return out


def list_targets(repo: ModelRepo) -> list[TargetEntry]:
    entries: list[TargetEntry] = []
    current = _current_target(repo)
    if current is not None:
        entries.append(TargetEntry(current, True))
    for t in repo.lineage.targets():
        if current is not None and t.name == current.name:
            continue
        entries.append(TargetEntry(t, False))
    return entries


def show_target(repo: ModelRepo, ref: str) -> TargetEntry:
    entries = list_targets(repo)
    exact = [e for e in entries if e.target.name == ref]
    plain = [e for e in entries if e.target.plain == ref]
    found = exact or plain
    if not found:
        names = ", ".join(sorted({e.target.plain for e in entries})) or "none yet"
        raise UsageError(f"no target named `{ref}` in input.yml or in the lineage", f"known targets: {names}")
    return found[0]


def _current_target(repo: ModelRepo) -> KnownTarget | None:
    """The TARGET of the working tree's input.yml, when it is valid (an invalid file is not a target)."""
    try:
        plan = repo.plan()
    except (ConfigError, UsageError):
        return None
    t = plan.target
    if t is None:
        return None
    return KnownTarget(t.name, t.plain, t.key, None, "input.yml", t.config, t.stim_key)
