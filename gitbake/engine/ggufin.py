"""A GGUF file as a base model: check it, and convert it once into a safetensors model directory.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, through the `gguf` package): it
dequantises every tensor to fp32, which takes seconds per hundred million parameters, and the model it
returns refuses `save_pretrained`. So a GGUF is converted once, into a plain model rebuilt from the
config with the dequantised state dict, saved as safetensors with the tokenizer and its chat template;
the store keeps that directory, keyed by the file's digest and CONVERTER_VERSION (gitbake/repo/ggufbase.py),
and every later load takes the fast safetensors path.

`inspect` reads only the header and the tensor table (engine/ggufheader.py, with the `gguf` package's type
tables; no torch): `init` calls it, so a bad file is refused before anything is written.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake.engine.ggufheader import read_header
from gitbake.errors import UsageError

# Bump when the directory `convert` writes changes for the same GGUF: the store's old conversions are then
# no longer found (their key names the version), and each GGUF is converted again on its next use.
CONVERTER_VERSION = 1
EXTRA = "pip install 'gitbake[gguf]'"
MAGIC = b"GGUF"
# transformers' GGUF table also lists encoder-decoder models, which gitbake cannot bake (it needs a causal LM)
NOT_CAUSAL = frozenset({"general", "tokenizer", "t5", "umt5", "t5encoder"})
# llama.cpp's architecture names that transformers' loader renames (modeling_gguf_pytorch_utils)
RENAMED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


class GgufError(UsageError):
    """A GGUF file gitbake cannot use, because of the file (exit 2)."""


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    architecture: str
    tensor_types: tuple[str, ...]  # the quantisation types of its tensors, sorted
    tensors: int


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GgufError(
            "reading a GGUF model needs the `gguf` package, which is not installed",
            f"install the extra: {EXTRA}",
        ) from None
    return gguf


def supported_architectures() -> list[str]:
    """The GGUF architectures transformers' loader maps to a causal LM (its table, without torch)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - NOT_CAUSAL)


def supported_types() -> list[str]:
    """The tensor types the `gguf` package can dequantise (what transformers' loader calls), found by asking
    it to dequantise one zero block of each, rather than by a list that would go stale."""
    import numpy as np

    gguf = _gguf()
    ok = []
    for qtype in gguf.GGMLQuantizationType:
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        ok.append(qtype.name)
    return ok


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names)


def inspect(path: Path) -> GgufInfo:
    """Check that `path` is a whole GGUF of an architecture and tensor types gitbake can convert."""
    fix_file = "point --base-model at a GGUF model file (or a directory holding one), or at a model directory"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise GgufError(f"cannot read {path}: {exc.strerror or exc}", fix_file) from None
    if head != MAGIC:
        raise GgufError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
            fix_file,
        )
    gguf = _gguf()
    try:
        header = read_header(path)
        size = os.path.getsize(path)
        qtypes = [gguf.GGMLQuantizationType(t.qtype) for t in header.tensors]
        # the header reader never reads tensor data: a file cut inside its last tensor must be caught here
        end = max(
            (
                header.data_start + t.offset + t.n_elements // gguf.GGML_QUANT_SIZES[q][0] * gguf.GGML_QUANT_SIZES[q][1]
                for t, q in zip(header.tensors, qtypes)
            ),
            default=0,
        )
        if end > size:
            raise ValueError(f"its tensors end at byte {end}, the file at {size}")
    except (ValueError, IndexError, KeyError, OverflowError, EOFError) as exc:
        raise GgufError(
            f"{path} is truncated or damaged: the GGUF reader stopped with: {exc}",
            "copy or download the file again (compare its size and checksum with the source's)",
        ) from None
    arch = header.string("general.architecture") or "(none)"
    supported = supported_architectures()
    if arch not in supported and RENAMED.get(arch) not in supported:
        raise GgufError(
            f"{path} is a GGUF of architecture `{arch}`, which gitbake cannot load; supported: {_listing(supported)}",
            "use a GGUF of a supported architecture, or the model's safetensors directory",
        )
    types = sorted({q.name for q in qtypes})
    ok = supported_types()
    bad = [t for t in types if t not in ok]
    if bad:
        raise GgufError(
            f"{path} has tensors of quantisation type {_listing(bad)}, which the gguf package cannot dequantise; "
            f"supported: {_listing(ok)}",
            "use a GGUF quantised to a supported type (llama.cpp's `llama-quantize` converts between them)",
        )
    if header.string("tokenizer.ggml.model") is None:
        raise GgufError(
            f"{path} has no tokenizer (no `tokenizer.ggml.model` in its metadata)",
            "use a GGUF written with its tokenizer (llama.cpp's convert_hf_to_gguf.py writes it)",
        )
    return GgufInfo(path, arch, tuple(types), len(header.tensors))


def convert(path: Path, dest: Path) -> GgufInfo:
    """Write `path` as a safetensors model directory at `dest` (which must not exist): config, fp32
    weights, tokenizer and chat template. Raises GgufError for a file it cannot convert."""
    info = inspect(path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gitbake.engine.models import quiet_transformers

    quiet_transformers()
    where, name = str(path.parent), path.name
    # the GGUF loader's bar is tqdm's own, which transformers' progress switch does not reach, and tqdm reads
    # TQDM_DISABLE only when imported: silence that one bar (our caller says once what is happening, and a
    # hook's log needs no bar)
    from transformers import modeling_gguf_pytorch_utils

    loader: Any = modeling_gguf_pytorch_utils
    bar = getattr(loader, "tqdm", None)
    if bar is not None:
        loader.tqdm = functools.partial(bar, disable=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise GgufError(
            f"transformers cannot convert {path}: {exc}",
            "use the model's safetensors directory, or a GGUF written by llama.cpp's convert_hf_to_gguf.py",
        ) from None
    finally:
        if bar is not None:
            loader.tqdm = bar
    config = loaded.config
    # the GGUF loader marks its model quantised, which is why it will not save; the weights are fp32 now
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # built on the meta device, the plain model allocates nothing until it takes the loaded tensors
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    del loaded
    plain.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return info


_PROCESS_DIRS: dict[str, Path] = {}


def convert_for_process(path: Path) -> tuple[Path, str]:
    """(the converted directory, the file's digest) without a store: converted into a temporary directory
    that lives as long as this process (each process pays the conversion; a repository's store keeps it)."""
    import atexit
    import shutil
    import tempfile

    from gitbake.contract.identity import file_digest

    digest = file_digest(path)
    if digest not in _PROCESS_DIRS:
        work = Path(tempfile.mkdtemp(prefix="gitbake-gguf-"))
        atexit.register(shutil.rmtree, work, True)
        convert(path, work / "model")
        _PROCESS_DIRS[digest] = work / "model"
    return _PROCESS_DIRS[digest], digest
