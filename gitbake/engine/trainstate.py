"""A bake's resumable training state (optimizer, scheduler, RNG, step counters) without pickle.

The scratch checkpoint lives in the store, and a store can be shared (`bake.storePath`): whoever can write
it must not be able to run code in the next bake that resumes from it. `torch.load(weights_only=False)` is
pickle, and pickle runs code. So the state is split into its tensors, kept in a safetensors file (raw
numbers, nothing executable), and everything else, kept as JSON. The JSON says where each tensor goes, and
marks what JSON cannot hold on its own: tuples (Adam's betas) and dicts with non-string keys (the
optimizer's per-parameter state is keyed by int).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS = "trainer.safetensors"
STATE = "trainer.json"
FORMAT = 1


class BadTrainState(ValueError):
    """The saved state is not one this code wrote (damaged or planted): the bake starts over instead."""


def exists(directory: Path) -> bool:
    return (directory / TENSORS).is_file() and (directory / STATE).is_file()


def save(state: dict[str, Any], directory: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    save_file(tensors, str(directory / TENSORS))
    (directory / STATE).write_text(json.dumps({"format": FORMAT, "state": tree}), encoding="utf-8")


def load(directory: Path) -> dict[str, Any]:
    """The state `save` wrote; raises BadTrainState for anything else (never runs code from the files)."""
    try:
        doc = json.loads((directory / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / TENSORS))
    except (OSError, ValueError) as exc:  # safetensors raises its own error types, subclasses of neither
        raise BadTrainState(f"unreadable training state: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError: a damaged file is a fresh start
        raise BadTrainState(f"unreadable training state: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadTrainState(f"training state of an unknown format: {str(doc)[:80]}")
    state = _decode(doc.get("state"), tensors)
    if not isinstance(state, dict):
        raise BadTrainState("training state is not a mapping")
    return state


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
        return {"__tensor__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state holds a {type(value).__name__}, which is not saved without pickle")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise BadTrainState(f"unexpected value in training state: {value!r:.80}")
    if "__tensor__" in value:
        name = value["__tensor__"]
        if not isinstance(name, str) or name not in tensors:
            raise BadTrainState(f"training state names a tensor that is not saved: {name!r:.40}")
        return tensors[name]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in _list(value["__tuple__"]))
    if "__items__" in value:
        out = {}
        for pair in _list(value["__items__"]):
            if not isinstance(pair, list) or len(pair) != 2:
                raise BadTrainState("damaged mapping in training state")
            key = _decode(pair[0], tensors)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise BadTrainState("a mapping key in training state is not a plain value")
            out[key] = _decode(pair[1], tensors)
        return out
    return {k: _decode(v, tensors) for k, v in value.items()}


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadTrainState("damaged training state")
    return value
