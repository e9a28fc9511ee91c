"""A stored bake's eval report, read from the store without the config models: status shows it for every
bake the current input.yml would reuse, and must not pay pydantic's import for that."""

from __future__ import annotations

import json
from typing import Any

from gitbake.errors import GitbakeError
from gitbake.store.objects import Store


def read_json_object(store: Store, manifest: str, name: str) -> Any:
    """The JSON file `name` of a stored manifest, its digest checked."""
    entry = store.read_manifest(manifest).files[name]
    store.verify(entry.digest)
    return json.loads(store.read_bytes(entry.digest))


def bake_report(store: Store, bake_key: str) -> dict[str, Any] | None:
    """The eval of a stored bake (gap_closed, ...), or None."""
    manifest = store.get_key("eval", bake_key)
    if manifest is None:
        return None
    try:
        report: dict[str, Any] = read_json_object(store, manifest, "eval.json")
        return report
    except (GitbakeError, KeyError, ValueError):
        return None
