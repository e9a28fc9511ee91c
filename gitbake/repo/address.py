"""One address for a model, everywhere: what chat, serve, export, eval, diff, checkout and show accept.

A model address is any of
  - a git revision (`HEAD`, `main`, `HEAD~2`, a tag, a commit id);
  - a bake name, hashed (`yoda_bake_3f2a9c1d04be`, as `git bake log` shows it) or plain (`yoda_bake`);
  - the `.bread` model name `local/<repo>/<bake>/<step>` (what `serve` and bgit call the model);
  - any of those followed by `@checkpoint-STEP`: that bake's adapter as saved at training step STEP.

They are tried in that order, so a branch that happens to be called like a bake still means the branch
(as in git, where a ref shadows nothing else). A plain bake name that several bakes share means the newest
one on HEAD's first-parent line; if none is there and they are different models, the address is
ambiguous and the error lists their hashed names. An unknown address is one error that says what was
tried (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gitbake import git
from gitbake.contract.keys import split_name
from gitbake.errors import UsageError

CHECKPOINT = re.compile(r"^(?P<rest>.+)@checkpoint-(?P<step>\d+)$")
MODEL_NAME = re.compile(r"^local/(?P<repo>[^/]+)/(?P<bake>[^/]+)/(?P<step>\d+)$")


@dataclass(frozen=True)
class Address:
    """What a model address names: a commit's model, and optionally one of its last bake's checkpoints."""

    text: str  # as the user wrote it
    commit: str
    kind: str  # "revision", "bake name" or "model name": how `text` (less its checkpoint) was read
    checkpoint: int | None = None

    def as_json(self) -> dict[str, object]:
        return {"address": self.text, "commit": self.commit, "kind": self.kind, "checkpoint": self.checkpoint}


def split_checkpoint(text: str) -> tuple[str, int | None]:
    """`main@checkpoint-40` -> (`main`, 40); anything else -> (text, None)."""
    m = CHECKPOINT.match(text)
    return (m.group("rest"), int(m.group("step"))) if m else (text, None)


def resolve(root: Path, text: str) -> Address:
    """The commit (and checkpoint) `text` names, or the one error saying what was tried."""
    rest, checkpoint = split_checkpoint(text)
    if not rest:
        raise unknown(text, [])
    commit = git.rev_parse(root, rest)
    if commit is not None:
        return Address(text, commit, "revision", checkpoint)
    m = MODEL_NAME.match(rest)
    if m is not None:
        found = _by_model_name(root, rest)
        if found is None:
            raise unknown(text, _known_names(root), tried_model_name=True)
        return Address(text, found, "model name", checkpoint)
    found = _by_bake_name(root, rest, text)
    if found is None:
        raise unknown(text, _known_names(root))
    return Address(text, found, "bake name", checkpoint)


def commit_of(root: Path, text: str) -> str:
    """The commit an address names, refusing a checkpoint (for what works on whole commits only)."""
    address = resolve(root, text)
    if address.checkpoint is not None:
        raise UsageError(
            f"{text} names a checkpoint, and this command works on a commit's model",
            f"drop `@checkpoint-{address.checkpoint}`",
        )
    return address.commit


def _by_model_name(root: Path, name: str) -> str | None:
    from gitbake.repo.history import all_versions

    return next((v.commit for v in all_versions(root) if v.model_name == name), None)


def _by_bake_name(root: Path, name: str, text: str) -> str | None:
    """The commit of the bake called `name` (hashed: exactly; plain: the newest on HEAD's line)."""
    from gitbake.repo.history import all_versions, log

    versions = [v for v in all_versions(root) if v.bake_name]
    exact = [v for v in versions if v.bake_name == name]
    if exact:
        return exact[0].commit  # a hashed name is one bake; all_versions lists each chain once
    plain = [v for v in versions if (split_name(v.bake_name or "") or ("", ""))[0] == name]
    if not plain:
        return None
    chains = {v.chain for v in plain}
    if git.rev_parse(root, "HEAD") is not None:
        on_head = [v for v in log(root, "HEAD") if v.chain in chains]  # newest first
        if on_head:
            return on_head[0].commit
    if len(chains) == 1:
        return plain[0].commit
    names = ", ".join(sorted({v.bake_name or "" for v in plain}))
    raise UsageError(
        f"`{text}`: several bakes are called {name} ({names}), and none is on HEAD's history",
        "give the hashed name (see `git bake models`)",
    )


def _known_names(root: Path) -> list[str]:
    from gitbake.repo.history import all_versions

    names: list[str] = []
    for v in all_versions(root):
        names += [n for n in (v.bake_name, v.model_name) if n]
    return names


def unknown(text: str, known: list[str], tried_model_name: bool = False) -> UsageError:
    """The one error for an address that names no model: what was tried, and what exists."""
    tried = "a model name (local/<repo>/<bake>/<step>)" if tried_model_name else "a revision, a bake name"
    if not tried_model_name:
        tried += " (plain or hashed) or a model name (local/<repo>/<bake>/<step>)"
    shown = ", ".join(known[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")
    return UsageError(
        f"unknown model address `{text}`: tried it as {tried}, and nothing matched",
        "give a branch, tag or commit (e.g. HEAD, HEAD~2), a bake name or model name "
        + (f"({shown})" if shown else "(none yet: nothing has been baked)")
        + ", optionally followed by @checkpoint-STEP; `git bake models` lists every model",
    )
