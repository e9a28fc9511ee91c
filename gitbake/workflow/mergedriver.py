"""Merge drivers (`.gitattributes`): how a merge, or a rebase, combines the files of the contract.

`.bread` and `recipe.yml` are the model's lineage and cannot be merged line by line: `bake-theirs`
(configured by init) adopts the incoming side's. In a merge that is the incoming branch's model, whole.
In a rebase the incoming side is a commit being replayed onto a new base: when both the new base and
that commit changed the lineage, the commit is a bake made on another model than the one it is being
put on (its adapter was trained without the new base's bakes), and carrying its `.bread` over would
make a model that silently leaves the new base's bakes out. That is a conflict, with the commands that
resolve it: skip the stale bake commit, then bake its input.yml again on the new base.

`input.yml` merges as text, except that a side whose sections are all commented out (a baked input:
nothing is left to run, the text is only a record) gives way: when both are, the incoming one is taken,
matching the lineage files; when only ours is, the incoming input that still has something to run is
taken (a rebase replaying a commit of input.yml onto a baked base would otherwise always conflict).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gitbake import git
from gitbake.contract.inputtext import has_sections

REBASES = ("rebase-merge", "rebase-apply")


def merge_input(base: Path, ours: Path, theirs: Path, label: str = "input.yml") -> int:
    """git's merge-driver contract: leave the result in `ours`; exit 0 when clean, non-zero on conflicts."""
    a, b = ours.read_bytes(), theirs.read_bytes()
    if not has_sections(a) and not has_sections(b):
        shutil.copyfile(theirs, ours)
        return 0
    proc = subprocess.run(
        [
            "git",
            "merge-file",
            "-L",
            f"{label} (ours)",
            "-L",
            f"{label} (base)",
            "-L",
            f"{label} (theirs)",
            str(ours),
            str(base),
            str(theirs),
        ],
        capture_output=True,
    )
    if proc.returncode == 0:
        return 0
    if not has_sections(a):  # ours only records what was baked: the incoming input is what is left to run
        ours.write_bytes(b)
        return 0
    return 1  # our input still has something to run: a real conflict stays one


def merge_lineage(base: Path, ours: Path, theirs: Path, label: str = ".bread", root: Path | None = None) -> int:
    """`.bread` / `recipe.yml`: the incoming side's, except a rebase's replay of a lineage change onto a
    base whose lineage changed too (a conflict; `ours`, the new base's lineage, is left in place)."""
    o, a, b = base.read_bytes(), ours.read_bytes(), theirs.read_bytes()
    if a != o and b != o and a != b and _rebasing(root or Path.cwd()):
        if label != "recipe.yml":  # said once per commit: .bread and recipe.yml conflict together
            print(
                f"gitbake: {label}: this commit is a bake made on another model than the new base's (the new base "
                "has bakes of its own); replaying it would make a model that leaves those out.\n"
                "gitbake: skip it: `git rebase --skip`; once the rebase is done, `git bake run` bakes its input.yml "
                "again on the new base (or `git rebase --abort` keeps the branch as it was)",
                file=sys.stderr,
            )
        return 1
    shutil.copyfile(theirs, ours)
    return 0


def _rebasing(start: Path) -> bool:
    root = git.find_root(start)
    return root is not None and git.operation_in_progress(root) in REBASES
