"""A GGUF file's metadata and tensor table, read fast: what `init` checks and `export --gguf` copies.

gguf's `GGUFReader` builds a numpy view for each element of each metadata array. Gemma 3's vocabulary has
262,144 tokens, held in three such arrays, so reading that file's header took 13-17 s on this 2-core machine:
`git bake init --base-model gemma.gguf` paid it, and `export --gguf` again. The layout itself is simple
(GGUF v2/v3: counts, then key/type/value triples, then one entry per tensor; gguf's `GGUFValueType` and
`GGML_QUANT_SIZES` name the types and sizes), so this module reads it in one pass over the bytes: numeric
arrays in one `numpy.frombuffer` each, strings one length prefix at a time. Tensor data is never read.
A file cut short raises EOFError; one whose layout makes no sense, ValueError.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # GGUF v1 used 32-bit lengths and is no longer written by anything
DEFAULT_ALIGNMENT = 32
# GGUFValueType: struct format of each scalar type (8: string and 9: array are read apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Value:
    """One metadata value: its GGUFValueType, and for an array its elements' type."""

    vtype: int
    value: Any  # int, float, bool or str; a list of those for an array
    sub_type: int | None = None


@dataclass(frozen=True)
class Tensor:
    name: str
    qtype: int  # GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Header:
    version: int
    fields: dict[str, Value] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    data_start: int = 0  # where the tensor data begins, aligned

    def string(self, key: str) -> str | None:
        v = self.fields.get(key)
        return v.value if v is not None and v.vtype == _STRING else None


class _Cursor:
    def __init__(self, buf: Any, order: str) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def take(self, n: int) -> int:
        """Advance over `n` bytes; the offset they start at."""
        if n < 0 or self.pos + n > len(self.buf):
            raise EOFError(f"the file ends at byte {len(self.buf)}, inside a header entry at byte {self.pos}")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(self.order + fmt, self.buf, self.take(size))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Value:
        if vtype == _STRING:
            return Value(vtype, self.string())
        if vtype in _SCALARS:
            return Value(vtype, self.scalar(_SCALARS[vtype]))
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype} at byte {self.pos}")
        sub, count = self.scalar("I"), self.scalar("Q")
        if sub == _STRING:
            return Value(vtype, [self.string() for _ in range(count)], sub)
        if sub == _ARRAY:  # arrays of arrays: each element carries its own type and count
            return Value(vtype, [self.value(_ARRAY).value for _ in range(count)], sub)
        if sub not in _SCALARS:
            raise ValueError(f"unsupported array element type {sub} at byte {self.pos}")
        import numpy as np

        fmt = self.order + _SCALARS[sub]
        size = struct.calcsize(fmt)
        start = self.take(size * count)
        items = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=start)
        return Value(vtype, items.tolist(), sub)


def read_header(path: Path) -> Header:
    """The metadata and tensor table of the GGUF at `path` (whose first four bytes the caller checked)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) < 8:
            raise EOFError("the file ends inside its GGUF header")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)


def _parse(buf: Any) -> Header:
    if bytes(buf[:4]) != MAGIC:
        raise ValueError("GGUF magic invalid")
    order = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        order = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
    cur = _Cursor(buf, order)
    cur.pos = 8
    n_tensors, n_fields = cur.scalar("Q"), cur.scalar("Q")
    header = Header(version)
    for _ in range(n_fields):
        key = cur.string()
        header.fields[key] = cur.value(cur.scalar("I"))
    for _ in range(n_tensors):
        name = cur.string()
        dims = cur.scalar("I")
        shape = tuple(cur.scalar("Q") for _ in range(dims))
        header.tensors.append(Tensor(name, cur.scalar("I"), shape, cur.scalar("Q")))
    align = header.fields.get("general.alignment")
    alignment = DEFAULT_ALIGNMENT if align is None else align.value
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"invalid general.alignment {alignment!r}: it must be a power of two")
    object.__setattr__(header, "data_start", -(-cur.pos // alignment) * alignment)
    return header
