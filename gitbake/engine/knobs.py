"""The engine's tuning knobs from the environment (`GITBAKE_VOCAB_TILE`, `GITBAKE_PACK_MAX`, ...), read once
when their module loads. A value that is not a number, or is out of range, is a usage error naming the
variable and the fix, not a traceback from `int()` halfway through loading a model."""

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
