"""YAML loading that remembers where every value came from.

pyyaml's `safe_load` forgets positions and silently keeps the last of two duplicate keys. We compose the
node tree ourselves so every error can name `file:line:column`, and a duplicate key is an error, not a
quiet overwrite of the user's first value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Hints:
    """The fix each file-level problem suggests. The defaults are for a file the user writes (input.yml);
    a file gitbake writes (.bread) gets its own: the fix there is to restore it, not to edit it."""

    too_big: str = "move long question lists into a file read by a `from_file` generator"
    binary: str = "write it as UTF-8 YAML text"
    not_utf8: str = "save the file as UTF-8"
    directory: str = "remove the directory and write {display} as a file"


USER_FILE = Hints()


def written_by_gitbake(display: str) -> Hints:
    """The hints for a file gitbake writes (.bread, recipe.yml): restore it from git, never edit it."""
    restore = (
        f"gitbake writes {display}: restore it with `git checkout HEAD -- {display}` (or from the last commit "
        "where it was good)"
    )
    return Hints(too_big=restore, binary=restore, not_utf8=restore, directory="remove the directory; " + restore)


def read_text(path: Path, display: str, limit: int = MAX_YAML_BYTES, hints: Hints = USER_FILE) -> str:
    """Read a user text file, refusing binaries, non-UTF-8 and oversized files with a located error."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError([Issue(display, None, None, "", "file not found", None)]) from None
    if path.is_dir():
        raise ConfigError(
            [Issue(display, None, None, "", "is a directory, not a file", hints.directory.format(display=display))]
        )
    _check_size(size, display, limit, hints)
    raw = path.read_bytes()
    return decode_text(raw, display, limit, hints)


def _check_size(size: int, display: str, limit: int, hints: Hints) -> None:
    if size > limit:
        raise ConfigError(
            [Issue(display, None, None, "", f"file is {size:,} bytes; the limit is {limit:,}", hints.too_big)]
        )


def decode_text(raw: bytes, display: str, limit: int = MAX_YAML_BYTES, hints: Hints = USER_FILE) -> str:
    """Bytes of a user file (from disk, the index or a commit) as text: every source gets the same size,
    binary and UTF-8 checks, so what the pre-commit hook or a bake reads is held to what `validate` reads."""
    _check_size(len(raw), display, limit, hints)
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise ConfigError(
            [Issue(display, line, None, "", "this is a binary file (it contains NUL bytes)", hints.binary)]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [Issue(display, line, None, "", f"not valid UTF-8 (byte {raw[exc.start]:#04x})", hints.not_utf8)]
        ) from None


def load(text: str, display: str) -> YamlDoc:
    """Parse YAML text; raise ConfigError with every duplicate key, or the syntax error, located."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_issue(exc, display, text)]) from None
        except yaml.YAMLError as exc:  # pragma: no cover - pyyaml raises marked errors for text input
            raise ConfigError([Issue(display, None, None, "", str(exc))]) from None
        except RecursionError:
            raise ConfigError(
                [Issue(display, None, None, "", f"nested too deeply (more than {MAX_DEPTH} levels)")]
            ) from None
        doc = YamlDoc(display, None)
        if node is None:
            return doc
        issues: list[Issue] = []
        try:
            _check_alias_expansion(node, loader.anchor_names, len(text.encode("utf-8")), display)
            doc.data = _build(loader, node, (), doc.marks, issues, display)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_issue(exc, display, text)]) from None
        except RecursionError:
            raise ConfigError(
                [Issue(display, None, None, "", f"nested too deeply (more than {MAX_DEPTH} levels)")]
            ) from None
        if issues:
            raise ConfigError(issues)
        return doc
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers which node each anchor named: the composer forgets its anchors at the end
    of the document, and an alias-expansion error must name the anchor."""

    anchor_names: dict[int, str]

    def compose_document(self) -> yaml.Node | None:
        # pyyaml's own compose_document, keeping the anchors before it forgets them
        self.get_event()  # type: ignore[no-untyped-call]  # DocumentStartEvent
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()  # type: ignore[no-untyped-call]  # DocumentEndEvent
        self.anchor_names = {id(n): name for name, n in self.anchors.items()}
        self.anchors = {}
        return node


# An alias costs a few bytes in the file but its whole value in memory: a 1.9 MB anchor referenced 2,000
# times asks for 3.8 GB. The count of values (MAX_NODES) does not see that, so the size of the scalars
# reached through aliases is bounded too: by 8x the file's size (at least 64 KiB, so small files may
# reuse anchors freely), and never more than 16 MiB.
ALIAS_EXPANSION_FACTOR = 8
ALIAS_EXPANSION_FLOOR = 64 * 1024
ALIAS_EXPANSION_CAP = 16 * 1024 * 1024


def alias_expansion_limit(file_bytes: int) -> int:
    return min(ALIAS_EXPANSION_CAP, max(ALIAS_EXPANSION_FLOOR, ALIAS_EXPANSION_FACTOR * file_bytes))


def _check_alias_expansion(root: yaml.Node, anchor_names: dict[int, str], file_bytes: int, display: str) -> None:
    """Refuse a document whose aliases expand to more scalar text than `alias_expansion_limit` allows,
    naming the anchor that contributes most. Computed on the node graph (each node once), so a bomb is
    measured, never built."""
    expanded: dict[int, int] = {}  # node id -> bytes of scalars it expands to
    uses: dict[int, int] = {}  # node id -> how many times the graph refers to it
    nodes: dict[int, yaml.Node] = {}

    def size(node: yaml.Node, busy: set[int]) -> int:
        key = id(node)
        uses[key] = uses.get(key, 0) + 1
        if key in expanded:
            return expanded[key]
        if key in busy:
            return 0  # an alias cycle: the builder reports it with its own message
        nodes[key] = node
        if isinstance(node, yaml.ScalarNode):
            total = len(str(node.value))
        else:
            busy.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            total = sum(size(child, busy) for child in children)
            busy.discard(key)
        expanded[key] = total
        return total

    size(root, set())
    # every node counted once is what the file spells out; the rest is what its aliases add
    written = sum(len(str(n.value)) for n in nodes.values() if isinstance(n, yaml.ScalarNode))
    through_aliases = expanded[id(root)] - written
    limit = alias_expansion_limit(file_bytes)
    if through_aliases <= limit:
        return
    reused = [k for k in nodes if uses[k] > 1 and k in anchor_names]
    worst = max(reused, key=lambda k: (uses[k] - 1) * expanded[k], default=id(root))
    line, col = _mark(nodes[worst])
    name = anchor_names.get(worst, "?")
    raise ConfigError(
        [
            Issue(
                display,
                line,
                col,
                "",
                f"the document expands to {through_aliases:,} bytes of text through its aliases (anchor `&{name}`, "
                f"{expanded[worst]:,} bytes, "
                f"is used {uses[worst] - 1:,} times); the limit is {limit:,} (8x the file's size, at most 16 MiB)",
                "write the values out, or move long question lists into a file read by a `from_file` generator",
            )
        ]
    )


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


MAX_NODES = 200_000  # aliases can expand a small file exponentially ("billion laughs")
MAX_DEPTH = 64


@dataclass
class _BuildState:
    loader: yaml.SafeLoader
    marks: dict[Loc, tuple[int, int]]
    issues: list[Issue]
    display: str
    nodes: int = 0
    active: set[int] = field(default_factory=set)  # node ids on the current path: an alias cycle
    merged: dict[int, int] = field(default_factory=dict)  # mapping node id -> how many pairs came from `<<`


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    marks: dict[Loc, tuple[int, int]],
    issues: list[Issue],
    display: str,
) -> Any:
    return _build_node(_BuildState(loader, marks, issues, display), node, path)


def _limit(state: _BuildState, node: yaml.Node, message: str) -> ConfigError:
    line, col = _mark(node)
    return ConfigError(
        [Issue(state.display, line, col, "", message, "write the values out instead of nesting aliases this deep")]
    )


def _build_node(state: _BuildState, node: yaml.Node, path: Loc) -> Any:
    state.nodes += 1
    if state.nodes > MAX_NODES:
        raise _limit(state, node, f"the document expands to more than {MAX_NODES:,} values (aliases?)")
    if len(path) > MAX_DEPTH:
        raise _limit(state, node, f"nested more than {MAX_DEPTH} levels deep")
    if id(node) in state.active:
        raise _limit(state, node, "an alias refers to the value that contains it (a cycle)")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        state.active.add(id(node))
    try:
        if isinstance(node, yaml.MappingNode):
            return _build_mapping(state, node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, child in enumerate(node.value):
                state.marks[path + (i,)] = _mark(child)
                items.append(_build_node(state, child, path + (i,)))
            return items
        return state.loader.construct_object(node, deep=True)
    finally:
        state.active.discard(id(node))


def _build_mapping(state: _BuildState, node: yaml.MappingNode, path: Loc) -> dict[Any, Any]:
    if id(node) not in state.merged:
        explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        state.loader.flatten_mapping(node)  # resolves `<<: *anchor`; merged pairs come first
        state.merged[id(node)] = len(node.value) - explicit
    n_merged = state.merged[id(node)]
    out: dict[Any, Any] = {}
    from_merge: set[Any] = set()
    for n, (knode, vnode) in enumerate(node.value):
        key = state.loader.construct_object(knode, deep=True)
        line, col = _mark(knode)
        try:
            hash(key)
        except TypeError:
            state.issues.append(Issue(state.display, line, col, dotted(path), "a mapping key must be a plain value"))
            continue
        if key in out and key not in from_merge:
            first = state.marks.get(path + (key,), (None, None))[0]
            state.issues.append(
                Issue(
                    state.display,
                    line,
                    col,
                    dotted(path + (key,)),
                    f"duplicate key `{key}` (first defined on line {first})",
                    "keep one of the two; YAML would silently drop the first",
                )
            )
            continue
        # a key merged in with `<<` may be overridden: that is what merge keys are for
        from_merge.discard(key)
        if n < n_merged:
            from_merge.add(key)
        state.marks[path + (key,)] = (line, col)
        out[key] = _build_node(state, vnode, path + (key,))
    return out


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
        fix = 'quote a value that contains `: `, e.g. content: "Note: ..."'
    return Issue(display, line, col, "", message, fix)


def _tab_at(text: str, line0: int) -> bool:
    lines = text.splitlines()
    if not 0 <= line0 < len(lines):
        return False
    stripped = lines[line0]
    return stripped[: len(stripped) - len(stripped.lstrip())].find("\t") >= 0
