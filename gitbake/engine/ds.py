"""DeepSpeed: the bake under its engine when `BAKE.deepspeed` asks for it."""

from __future__ import annotations

import importlib.util

from gitbake.errors import UsageError


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError(
            "BAKE.deepspeed is set, but DeepSpeed is not installed",
            "pip install 'gitbake[deepspeed]'   (or remove the deepspeed section to train without it)",
        )
