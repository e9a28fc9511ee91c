"""The engine's tuning knobs from the environment: numbers (`GITBAKE_VOCAB_TILE`, `GITBAKE_PACK_MAX`, ...)
and switches (`GITBAKE_PACKING`, `GITBAKE_GROUPED_LORA`, ...), mostly read once when their module loads. A
value that is not a number, or is out of range, or a switch that is neither 0 nor 1, is a usage error
naming the variable and the fix, not a traceback from `int()` halfway through loading a model, nor a
switch that stays on because it was set to `off`."""

from __future__ import annotations

import os

from gitbake.errors import UsageError


def number(name: str, default: int, minimum: int = 0) -> int:
    """The integer in environment variable `name`, `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UsageError(
            f"environment variable {name}={raw!r} is not a whole number of at least {minimum}",
            f"unset it (`unset {name}`: the default is {default}) or set one, e.g. {name}={default}",
        )
    return value


def switch(name: str) -> bool:
    """Whether the engine change that environment variable `name` can turn off is on: unset, empty or 1
    keeps it, 0 turns it off (to measure it against what it replaced)."""
    raw = os.environ.get(name, "").strip()
    if raw in ("", "1"):
        return True
    if raw == "0":
        return False
    raise UsageError(
        f"environment variable {name}={raw!r} is neither 0 nor 1",
        f"set {name}=0 to turn it off, or unset it (`unset {name}`) to keep it on",
    )
