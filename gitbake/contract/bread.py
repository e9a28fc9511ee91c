"""`.bread`: bgit's INI state file, read and written byte-compatibly (docs/guide.md, Coming from bgit).

bgit writes it with npm's `ini` package: section names escape dots (`[PROMPT\\.teacher]`,
`[RECIPE\\.BAKES\\.v1_0\\.01_372f...]`), values that need it are JSON-quoted. We keep every section and
key we do not know, in order, so a bgit repository round-trips; and our own keys (`[REPO] base_model`,
`[PARENT_MODEL] adapters`) are plain additions bgit ignores. Reading never writes; writing the same
state twice gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gitbake.contract import identity, yamlio
from gitbake.contract.digest import is_digest
from gitbake.errors import ConfigError, Issue
from gitbake.fsutil import write_atomic
from gitbake.hub import COMMIT

BREAD_FILE = ".bread"
HEADER = "# Bread configuration mapping\n# Auto-generated - do not edit manually\n\n"


@dataclass
class Named:
    hash: str
    name: str


@dataclass
class Bread:
    """The parsed file: `sections` keeps everything in order; the properties are typed views."""

    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    lines: dict[tuple[str, str], int] = field(default_factory=dict, compare=False, repr=False)

    # ----------------------------------------------------------------------------- typed accessors
    def get(self, section: str, key: str) -> str | None:
        return self.sections.get(section, {}).get(key)

    def set(self, section: str, key: str, value: str | None) -> None:
        if value is None:
            self.sections.get(section, {}).pop(key, None)
            return
        self.sections.setdefault(section, {})[key] = value

    @property
    def repo_name(self) -> str | None:
        return self.get("REPO", "name")

    @property
    def base_model(self) -> str | None:
        """The base model as the user named it (`--base-model`); see `pinned_base_model` for the one to load."""
        return self.get("REPO", "base_model")

    @property
    def base_revision(self) -> str | None:
        """The commit a Hugging Face base model's branch or tag resolved to when it was downloaded (init, or
        the first bake): gitbake writes it, and `git bake init` moves it to where the branch is now."""
        raw = self.get("REPO", "base_revision")
        if raw is not None and not COMMIT.fullmatch(raw):
            raise ConfigError(
                [
                    Issue(
                        BREAD_FILE,
                        self._line("REPO", "base_revision"),
                        None,
                        "REPO.base_revision",
                        f"must be the 40-hex commit of the Hugging Face model, not {raw!r}",
                        "restore it from git (git checkout -- .bread), or delete the line and run `git bake init` "
                        "to pin the base model's current commit",
                    )
                ]
            )
        return raw

    @property
    def pinned_base_model(self) -> str | None:
        """The base model to key and load: a hub id at its recorded commit (`org/name@<commit>`)."""
        base = self.base_model
        return identity.pinned(base, self.base_revision) if base is not None else None

    @property
    def prompts(self) -> dict[str, Named]:
        out = {}
        for sec, values in self.sections.items():
            if sec.startswith("PROMPT.") and "hash" in values:
                out[sec[len("PROMPT.") :]] = Named(values["hash"], values.get("prompt_name", ""))
        return out

    def set_prompts(self, prompts: dict[str, Named]) -> None:
        for sec in [s for s in self.sections if s.startswith("PROMPT.")]:
            del self.sections[sec]
        for key, named in prompts.items():
            self.sections[f"PROMPT.{key}"] = {"hash": named.hash, "prompt_name": named.name}

    @property
    def target(self) -> Named | None:
        values = self.sections.get("TARGET", {})
        return Named(values["hash"], values.get("target_name", "")) if "hash" in values else None

    @property
    def bake(self) -> Named | None:
        values = self.sections.get("BAKE", {})
        return Named(values["hash"], values.get("bake_name", "")) if "hash" in values else None

    @property
    def parent_model_name(self) -> str | None:
        return self.get("PARENT_MODEL", "model_name")

    @property
    def parent_adapters(self) -> list[str] | None:
        """Digests of the adapter chain; None when PARENT_MODEL is not ours (a model in Bread's cloud)."""
        raw = self.get("PARENT_MODEL", "adapters")
        if raw is None:
            return None if self.parent_model_name else []
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(is_digest(v) for v in value):
            raise ConfigError(
                [
                    Issue(
                        BREAD_FILE,
                        self._line("PARENT_MODEL", "adapters"),
                        None,
                        "PARENT_MODEL.adapters",
                        f"must be a JSON list of 64-hex adapter digests, not {raw!r}",
                        "restore it from git (git checkout -- .bread); gitbake writes this line",
                    )
                ]
            )
        return list(value)

    def _line(self, section: str, key: str) -> int | None:
        return self.lines.get((section, key))

    @property
    def is_foreign_parent(self) -> bool:
        return self.parent_model_name is not None and self.get("PARENT_MODEL", "adapters") is None


# --------------------------------------------------------------------------------------- INI format


def _unescape_section(name: str) -> str:
    return name.replace("\\.", ".")


def _escape_section(name: str) -> str:
    return name.replace(".", "\\.")


def _unsafe(raw: str) -> str:
    """npm ini's `unsafe`: JSON-quoted values are decoded; otherwise `;`/`#` start a comment."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        if raw[0] == '"':
            try:
                decoded = json.loads(raw)
                if isinstance(decoded, str):
                    return decoded
            except json.JSONDecodeError:
                pass
        return raw[1:-1]
    out, esc = [], False
    for ch in raw:
        if esc:
            out.append(ch if ch in "\\;#" else "\\" + ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch in ";#":
            break
        else:
            out.append(ch)
    if esc:
        out.append("\\")
    return "".join(out).strip()


def _safe(value: str) -> str:
    """npm ini's `safe`: quote what would not survive a plain write."""
    needs_quote = (
        any(c in value for c in "=\r\n")
        or value.startswith("[")
        or (len(value) > 1 and value[0] == value[-1] and value[0] in "\"'")
        or value != value.strip()
    )
    if needs_quote:
        return json.dumps(value)
    # npm ini's reader unescapes backslash sequences, so a backslash itself must be escaped to read back
    return value.replace("\\", "\\\\").replace(";", "\\;").replace("#", "\\#")


def parse(text: str, display: str = BREAD_FILE) -> Bread:
    bread = Bread()
    current: dict[str, str] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            name = _unescape_section(stripped[1:-1])
            current = bread.sections.setdefault(name, {})
            continue
        if stripped.startswith('"'):
            # a JSON-quoted key (it contains `=` or other specials)
            try:
                qkey, end = json.JSONDecoder().raw_decode(stripped)
            except json.JSONDecodeError:
                qkey, end = None, 0
            rest = stripped[end:].lstrip()
            if isinstance(qkey, str) and rest.startswith("="):
                key, value, sep = json.dumps(qkey), rest[1:], "="
            else:
                key, sep, value = stripped.partition("=")
        else:
            key, sep, value = stripped.partition("=")
        if not sep:
            # npm ini reads a bare key as `true`; keep it rather than losing data
            value = "true"
        key = key.strip()
        if current is None:
            current = bread.sections.setdefault("", {})
        if not key:
            raise ConfigError([Issue(display, lineno, 1, "", "a line with `=` but no key", RESTORE)])
        name_of_section = next((n for n, v in bread.sections.items() if v is current), "")
        current[_unsafe(key)] = _unsafe(value)
        bread.lines[(name_of_section, _unsafe(key))] = lineno
    return bread


def dumps(bread: Bread) -> str:
    lines = [HEADER]
    top = bread.sections.get("", {})
    for key, value in top.items():
        lines.append(f"{_safe(key)}={_safe(value)}\n")
    for name, values in bread.sections.items():
        if name == "":
            continue
        lines.append(f"[{_escape_section(name)}]\n")
        for key, value in values.items():
            lines.append(f"{_safe(key)}={_safe(value)}\n")
    return "".join(lines)


# gitbake (or bgit) writes .bread: a broken one is restored from git, never rewritten by hand
HINTS = yamlio.written_by_gitbake(BREAD_FILE)
RESTORE = HINTS.too_big


def read(root: Path) -> Bread | None:
    path = root / BREAD_FILE
    if not path.exists():
        return None
    return parse(yamlio.read_text(path, BREAD_FILE, hints=HINTS), BREAD_FILE)


def write(root: Path, bread: Bread) -> bool:
    """Write atomically; return whether the bytes changed (an unchanged file is not touched)."""
    return write_atomic(root / BREAD_FILE, dumps(bread))
