"""Rendering shared by the command modules: JSON, warnings, sizes, progress lines, ages, jobs, metrics."""

from __future__ import annotations

import json
from typing import Any

import click

from gitbake.errors import Issue


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def warn(issues: list[Issue]) -> None:
    for w in issues:
        click.echo(click.style("warning: ", fg="yellow") + w.render(), err=True)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def progress_reporter(label: str) -> Any:
    """A one-line progress report on stderr when it is a terminal; silent otherwise (scripts, tests)."""
    import sys

    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int, nbytes: int = 0) -> None:
        extra = f", {human_size(nbytes)}" if nbytes else ""
        click.echo(f"\r{label}: {done}/{total}{extra}", err=True, nl=done == total)

    return report


def digest_short(d: str) -> str:
    return d[:12]


def ago(t: float | None) -> str:
    import time as _time

    if not t:
        return "-"
    s = max(0, int(_time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def job_line(j: Any) -> str:
    p = j.progress() if j.state == "running" else None
    detail = ""
    if p:
        detail = f"  {p['label']}: {p['done']}/{p['total']} {p['unit']}, ETA {p['eta_s']:.0f}s"
    elif j.error and j.state != "done":
        detail = f"  {j.error.splitlines()[0][:100]}"
    elif j.result and (j.result.get("commit") or {}).get("commit"):
        c = j.result["commit"]
        detail = f"  -> {c['commit'][:12]}" + (f" (kept as {c['pending']})" if c.get("pending") else "")
    return f"{j.id}  {j.state:<9} {j.trigger[:10]}  {ago(j.created):<8}{detail}"


def metrics_text(m: dict[str, Any]) -> str:
    parts = []
    if m.get("final_loss") is not None:
        parts.append(f"loss {m['final_loss']:.4f}")
    if m.get("gap_closed") is not None:
        parts.append(f"gap_closed {m['gap_closed']:.3f}")
    return ", ".join(parts)


def bake_phases(m: dict[str, Any]) -> str:
    """Where a bake's time went, from its record: 'training 241.0s, teacher pass 19.2s, eval 20.4s'."""
    phases = (("training", "train_seconds"), ("teacher pass", "teacher_seconds"), ("eval", "eval_seconds"))
    return ", ".join(f"{label} {m[key]:.1f}s" for label, key in phases if m.get(key) is not None)
