"""Bake results kept under `refs/bake/<branch>/<12 hex>`: a background bake whose branch moved on while it
ran leaves its commit there for `git bake fetch`. Apart from `workflow.bakecommit`, which writes them,
because status lists them on every run and must not load the recipe and config models for that."""

from __future__ import annotations

import re
from pathlib import Path

from gitbake import git

PENDING_PREFIX = "refs/bake/"
_PENDING_LEAF = re.compile(r"^[0-9a-f]{12}$")


def pending(root: Path, branch_ref: str | None) -> dict[str, str]:
    """Bake results kept under refs/bake/ for `branch_ref` (ref -> commit): exactly
    `refs/bake/<branch>/<12 hex>`, so branch `f` never sees branch `f/x`'s results."""
    where = (branch_ref or "HEAD").removeprefix("refs/heads/")
    prefix = f"{PENDING_PREFIX}{where}/"
    return {ref: sha for ref, sha in git.refs(root, prefix).items() if _PENDING_LEAF.match(ref[len(prefix) :])}
