"""YAML loading that remembers where every value came from.

pyyaml's `safe_load` forgets positions and silently keeps the last of two duplicate keys. We compose the
node tree ourselves so every error can name `file:line:column`, and a duplicate key is an error, not a
quiet overwrite of the user's first value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from gitbake.errors import ConfigError, Issue

# A user file larger than this is almost certainly a mistake (a pasted dataset, a binary); the questions
# of a target belong in a `from_file` generator, which has its own limit.
MAX_YAML_BYTES = 4 * 1024 * 1024

Loc = tuple[Any, ...]


@dataclass
class YamlDoc:
    """Parsed YAML plus the 1-based (line, column) of every key and list item, by path."""

    file: str
    data: Any
    marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Sequence[Any]) -> tuple[int | None, int | None]:
        """Position of the deepest prefix of `loc` that exists in the document.

        Pydantic's error locations contain entries that are not in the data (union tags, validator
        names); those are skipped, so an error always points at the nearest real line.
        """
        best: tuple[int, int] | None = None
        cur: Loc = ()
        node = self.data
        for part in loc:
            child: Any = _MISSING
            if isinstance(node, dict) and part in node:
                child = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                child = node[part]
            if child is _MISSING:
                continue
            cur = cur + (part,)
            node = child
            best = self.marks.get(cur, best)
        if best is None:
            return (None, None)
        return best

    def issue(self, loc: Sequence[Any], message: str, fix: str | None = None) -> Issue:
        line, col = self.position(loc)
        return Issue(self.file, line, col, dotted(loc), message, fix)


_MISSING = object()


def dotted(loc: Sequence[Any]) -> str:
    """`("BAKE", "datasets", 0, "target")` -> `BAKE.datasets[0].target`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_text(path: Path, display: str, limit: int = MAX_YAML_BYTES) -> str:
    """Read a user text file, refusing binaries, non-UTF-8 and oversized files with a located error."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError([Issue(display, None, None, "", "file not found", None)]) from None
    if size > limit:
        raise ConfigError(
            [
                Issue(
                    display,
                    None,
                    None,
                    "",
                    f"file is {size:,} bytes; the limit is {limit:,}",
                    "move long question lists into a file read by a `from_file` generator",
                )
            ]
        )
    raw = path.read_bytes()
    return decode_text(raw, display)


def decode_text(raw: bytes, display: str) -> str:
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise ConfigError(
            [Issue(display, line, None, "", "this is a binary file (it contains NUL bytes)", "write it as UTF-8 YAML text")]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [Issue(display, line, None, "", f"not valid UTF-8 (byte {raw[exc.start]:#04x})", "save the file as UTF-8")]
        ) from None


def load(text: str, display: str) -> YamlDoc:
    """Parse YAML text; raise ConfigError with every duplicate key, or the syntax error, located."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_issue(exc, display, text)]) from None
        except yaml.YAMLError as exc:  # pragma: no cover - pyyaml raises marked errors for text input
            raise ConfigError([Issue(display, None, None, "", str(exc))]) from None
        doc = YamlDoc(display, None)
        if node is None:
            return doc
        issues: list[Issue] = []
        try:
            doc.data = _build(loader, node, (), doc.marks, issues, display)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_issue(exc, display, text)]) from None
        if issues:
            raise ConfigError(issues)
        return doc
    finally:
        loader.dispose()


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    marks: dict[Loc, tuple[int, int]],
    issues: list[Issue],
    display: str,
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            line, col = _mark(knode)
            try:
                hash(key)
            except TypeError:
                issues.append(Issue(display, line, col, dotted(path), "a mapping key must be a plain value"))
                continue
            if key in out:
                first = marks.get(path + (key,), (None, None))[0]
                issues.append(
                    Issue(
                        display,
                        line,
                        col,
                        dotted(path + (key,)),
                        f"duplicate key `{key}` (first defined on line {first})",
                        "keep one of the two; YAML would silently drop the first",
                    )
                )
                continue
            marks[path + (key,)] = (line, col)
            out[key] = _build(loader, vnode, path + (key,), marks, issues, display)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, child in enumerate(node.value):
            marks[path + (i,)] = _mark(child)
            items.append(_build(loader, child, path + (i,), marks, issues, display))
        return items
    return loader.construct_object(node, deep=True)


def _syntax_issue(exc: yaml.MarkedYAMLError, display: str, text: str) -> Issue:
    mark = exc.problem_mark or exc.context_mark
    if "quoted scalar" in (exc.context or "") and exc.context_mark:
        # The scanner fails at the end of the file; the useful place is where the quote opened.
        mark = exc.context_mark
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    problem = exc.problem or "invalid YAML"
    message = f"invalid YAML: {problem}"
    if exc.context:
        message += f" ({exc.context}"
        if exc.context_mark and exc.context_mark is not mark:
            message += f" on line {exc.context_mark.line + 1}"
        message += ")"
    fix = None
    if "\t" in problem or "'\\t'" in problem or (mark and _tab_at(text, mark.line)):
        fix = "YAML indentation must use spaces, not tabs: replace the tab with spaces"
    elif "quoted scalar" in (exc.context or ""):
        fix = "close the quote, or remove the stray quote character"
    elif "mapping values are not allowed" in problem:
        fix = "quote a value that contains `: `, e.g. content: \"Note: ...\""
    return Issue(display, line, col, "", message, fix)


def _tab_at(text: str, line0: int) -> bool:
    lines = text.splitlines()
    if not 0 <= line0 < len(lines):
        return False
    stripped = lines[line0]
    return stripped[: len(stripped) - len(stripped.lstrip())].find("\t") >= 0
