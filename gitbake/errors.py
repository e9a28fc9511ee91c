"""One base error with an exit code; every message names the fix.

Exit codes (docs/guide.md, Exit codes): 0 ok, 1 operation failed, 2 bad usage or invalid input, 3 not a gitbake
repository, 4 store corruption, 125 nothing to measure (`eval --min`: git bisect's "skip"), 130 interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_A_REPO = 3
EXIT_CORRUPT = 4
EXIT_SKIP = 125  # what `git bisect run` reads as "this commit cannot be tested"
EXIT_INTERRUPTED = 130


class GitbakeError(Exception):
    """Base of every error gitbake reports to a user; `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class UsageError(GitbakeError):
    """Bad arguments or an impossible request."""

    exit_code = EXIT_USAGE


class NotARepoError(GitbakeError):
    exit_code = EXIT_NOT_A_REPO


class StoreCorruptError(GitbakeError):
    exit_code = EXIT_CORRUPT


@dataclass(frozen=True)
class Issue:
    """One problem in a user file, located precisely enough for an editor to jump to it."""

    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    field: str  # dotted path such as BAKE.datasets[0].target ("" for the whole file)
    message: str
    fix: str | None = None

    def render(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class ConfigError(GitbakeError):
    """A user file is invalid. Carries every issue found, not only the first."""

    exit_code = EXIT_USAGE

    def __init__(self, issues: list[Issue]) -> None:
        # Sorted by place so the report reads top to bottom like the file.
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.column or 0))
        issues = self.issues
        noun = "error" if len(issues) == 1 else "errors"
        files = sorted({i.file for i in issues})
        head = f"{len(issues)} {noun} in {', '.join(files)}:"
        super().__init__(head + "\n" + "\n".join("  " + i.render() for i in issues))
