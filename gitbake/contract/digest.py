"""What a store digest looks like: the one check, for every layer that meets one.

A digest names a store object (blake3, 64 lowercase hex characters). `.bread` lists them, `recipe.yml`
records them, the store shards its files by them and a remote lists them; each checks with `is_digest`,
so nothing else ever becomes a store path.
"""

from __future__ import annotations

import re

DIGEST_HEX = 64
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """`value` is a string of exactly 64 lowercase hex characters (no trailing newline either)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None
