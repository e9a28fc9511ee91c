"""`python -m gitbake` is the same program as `git bake` (the hook shims fall back to it)."""

from gitbake.cli import main

if __name__ == "__main__":
    main()
