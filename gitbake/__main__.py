"""`python -m gitbake` is the same program as `git bake` (the hook shims fall back to it).

`git bake hook NAME` is dispatched before click is imported: hooks run on every commit and checkout,
and most of the time have nothing to do, so their start-up time is the whole cost.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # pydantic looks for plugins by scanning every installed distribution's entry points the first time a
    # model is built: tens of milliseconds on each `git bake status` in a big environment, for plugins
    # (observability hooks) that gitbake's own config checks have no use for. A user can still set it.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    argv = sys.argv[1:]
    if len(argv) >= 2 and argv[0] == "hook" and argv[1] not in ("-h", "--help"):
        from gitbake.workflow.hooks import main as hook_main

        sys.exit(hook_main(argv[1], argv[2:]))
    if os.environ.get("GITBAKE_LAUNCHED") and "RANK" in os.environ:
        _launched_rank()
        return
    from gitbake.cli.main import main as cli_main

    cli_main()


def _launched_rank() -> None:
    """A process a launcher started (`torchrun ... -m gitbake run bake`): its lines carry its rank, and a
    failure is left where the starting process names it."""
    from gitbake.workflow import launch

    launch.prefix_output()
    from gitbake.cli.main import main as cli_main

    try:
        cli_main()
    except SystemExit:
        raise  # click's exit: a gitbake error was recorded where it was reported (cli.main)
    except BaseException as exc:
        launch.record_error(f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
