"""input.yml as text: its section headers, active or commented out, and bgit's "clear" (commenting them
out), without parsing YAML.

The hooks and the merge driver ask this on every run, so this module imports nothing but `re`: no
pydantic, no YAML parser (the loader in `config` is the one that parses input.yml).
"""

from __future__ import annotations

import re

from gitbake.contract.files import INPUT_FILE as INPUT_FILE  # re-exported for its importers

SECTIONS = ("PROMPT", "TARGET", "BAKE")  # config.SECTIONS, without importing pydantic

_SECTION = re.compile(r"^(PROMPT|TARGET|BAKE)\s*:")
_TOP_LEVEL = re.compile(r"^[^\s#]")
_COMMENTED = re.compile(r"^#\s?(PROMPT|TARGET|BAKE)\s*:", re.MULTILINE)
_ACTIVE = re.compile(rb"^(PROMPT|TARGET|BAKE)\s*:", re.MULTILINE)


def has_sections(data: bytes) -> bool:
    """Whether an input.yml has a section that is not commented out (cheap: no YAML parse)."""
    return _ACTIVE.search(data) is not None


def commented_sections(text: str) -> list[str]:
    """The sections whose header is commented out, in the contract's order."""
    found = set(_COMMENTED.findall(text))
    return [s for s in SECTIONS if s in found]


def comment_out(text: str) -> str:
    """bgit's "clear" (bgit.md §4.7): every line of the PROMPT / TARGET / BAKE blocks, header included,
    gets `# `; blank lines and comments stay as they are, lines outside those blocks are untouched."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if _SECTION.match(line):
            inside = True
        elif _TOP_LEVEL.match(line) and not line.startswith("..."):
            inside = False  # another top-level key ends the block
        if inside and line.strip() and not line.lstrip().startswith("#"):
            line = "# " + line
        out.append(line)
    return "".join(out)
