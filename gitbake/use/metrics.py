"""`git bake metrics [BAKE]`: a bake's loss curve (terminal chart, PNG, JSON, CSV) and its eval.

The curve is the bake's `metrics.jsonl` and the eval its `eval.json`, both in the bake's report object,
which `recipe.yml` names (`run_bake.outputs.report`). BAKE is a bake name (hashed or plain: the newest
on this branch) or a revision (its last bake); default HEAD.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitbake import git
from gitbake.errors import GitbakeError, UsageError
from gitbake.repo.repo import ModelRepo


@dataclass
class BakeMetrics:
    bake: str
    commit: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = finite_json(
            {"bake": self.bake, "commit": self.commit, "metrics": self.rows, "eval": self.eval}
        )
        return out

    def losses(self) -> list[float]:
        """The loss of each row, as the chart draws it (a row without one counts as 0)."""
        return [float(r.get("loss", 0.0)) for r in self.rows]

    def loss_stats(self) -> LossStats | None:
        """First, last and lowest loss (the lowest of the finite ones); None when no loss is finite."""
        losses = [float(r.get("loss", "nan")) for r in self.rows]
        finite = [x for x in losses if math.isfinite(x)]
        return LossStats(losses[0], losses[-1], min(finite)) if finite else None


@dataclass(frozen=True)
class LossStats:
    first: float
    last: float
    min: float


def find(repo: ModelRepo, which: str | None) -> BakeMetrics:
    from gitbake.repo.history import log

    versions = log(repo.root, "HEAD")
    target = None
    if which is None:
        target = versions[0] if versions else None
        if target is None:
            raise UsageError("no bake on this branch yet", "commit an input.yml with a BAKE section")
    else:
        target = next((v for v in versions if v.bake_name == which), None)
        target = target or next((v for v in versions if v.bake_name and v.bake_name.rsplit("_", 1)[0] == which), None)
        if target is None:
            commit = git.rev_parse(repo.root, which)
            if commit is None:
                known = ", ".join(sorted({v.bake_name for v in versions if v.bake_name})) or "none yet"
                raise UsageError(f"no bake or revision named `{which}`", f"bakes on this branch: {known}")
            from gitbake.repo.history import version_at

            target = version_at(repo.root, commit)
            if not target.adapters:
                raise UsageError(f"{which} has no baked model", "give a bake commit (see `git bake log`)")
    recipe = repo.at(target.commit).recipe
    step = (
        next(
            (s for s in reversed(recipe.steps) if s.action == "run_bake" and s.resource_name == target.bake_name), None
        )
        if recipe
        else None
    )
    report = (step.outputs or {}).get("report") if step else None
    if report is None:
        raise GitbakeError(
            f"the recipe of {target.commit[:12]} names no report for {target.bake_name}",
            "re-bake it with this gitbake version",
        )
    store = repo.store
    if not store.has(report):
        raise GitbakeError(
            f"the report of {target.bake_name} is not in the store", f"fetch it: git bake pull {target.commit[:12]}"
        )
    files = store.read_manifest(report).files
    rows: list[dict[str, Any]] = []
    if "metrics.jsonl" in files:
        rows = [
            json.loads(line)
            for line in store.read_bytes(files["metrics.jsonl"].digest).decode().splitlines()
            if line.strip()
        ]
    ev = json.loads(store.read_bytes(files["eval.json"].digest)) if "eval.json" in files else {}
    return BakeMetrics(target.bake_name or "?", target.commit, rows, ev)


def chart(values: list[float], width: int = 60, height: int = 12, label: str = "loss") -> str:
    """A terminal line chart of `values` (one column per bucket of steps; non-finite values are skipped)."""
    if not values:
        return "(no metrics recorded)"
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return f"(no finite {label} values among {len(values)} steps)"
    lo, hi = min(finite), max(finite)
    if hi == lo:  # a flat curve: centre it, with ticks that say so
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    span = hi - lo
    cols = min(width, len(values))
    grid = [[" "] * cols for _ in range(height)]
    for x in range(cols):
        a = int(x * len(values) / cols)
        bucket = [v for v in values[a : max(int((x + 1) * len(values) / cols), a + 1)] if math.isfinite(v)]
        if not bucket:
            continue
        v = sum(bucket) / len(bucket)
        y = int(round((v - lo) / span * (height - 1)))
        grid[height - 1 - y][x] = "*"
    out = []
    for r, row in enumerate(grid):
        tick = hi - r * span / (height - 1) if height > 1 else hi
        out.append(f"{tick:10.4f} |" + "".join(row))
    out.append(" " * 11 + "+" + "-" * cols)
    out.append(" " * 12 + f"step 1{' ' * max(1, cols - 6 - len(str(len(values))))}{len(values)}   ({label})")
    return "\n".join(out)


def finite_json(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def to_png(m: BakeMetrics, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--png needs matplotlib", "pip install 'gitbake[plot]'  (or: pip install matplotlib)"
        ) from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        [float(r.get("step", i + 1)) for i, r in enumerate(m.rows)],
        [float(r.get("loss", 0.0)) for r in m.rows],
        label="loss (KL, nats/token)",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    title = m.bake + (f"  gap_closed {m.eval['gap_closed']:.3f}" if m.eval.get("gap_closed") is not None else "")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
