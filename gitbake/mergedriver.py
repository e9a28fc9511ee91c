"""Merge drivers (`.gitattributes`): how a merge combines the files of the contract.

`.bread` and `recipe.yml` are the model's lineage and cannot be merged line by line: `bake-theirs`
(`cp -f %B %A`, configured by init) adopts the incoming branch's. `input.yml` merges as text, except when
both sides have every section commented out — each side has baked its own input and nothing is left to
run — where their commented text would only conflict: then the incoming side's is taken, matching the
lineage files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gitbake.status import has_sections


def merge_input(base: Path, ours: Path, theirs: Path, label: str = "input.yml") -> int:
    """git's merge-driver contract: leave the result in `ours`; exit 0 when clean, non-zero on conflicts."""
    a, b = ours.read_bytes(), theirs.read_bytes()
    if not has_sections(a) and not has_sections(b):
        shutil.copyfile(theirs, ours)
        return 0
    proc = subprocess.run(["git", "merge-file", "-L", f"{label} (ours)", "-L", f"{label} (base)", "-L", f"{label} (theirs)",
                           str(ours), str(base), str(theirs)], capture_output=True)
    return 0 if proc.returncode == 0 else 1
