"""Load a base model (`tiny`, a hub id from the local cache, a local directory, a GGUF file) and its adapter chain.

Device and dtype: CUDA with bf16 when present (fp16 on GPUs without bf16), else CPU fp32; a bake on a
CPU that multiplies bf16 natively runs in bf16 (`bake_dtype`). Both can be overridden (`GITBAKE_DEVICE`,
`GITBAKE_DTYPE`, or arguments). `trust_remote_code` is off unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitbake import hub
from gitbake.contract import identity
from gitbake.errors import GitbakeError, UsageError
from gitbake.reporter import Reporter

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class ModelError(UsageError):
    """A model cannot be loaded because of what the user pointed at (exit 2)."""


# A GGUF file -> (a directory holding it converted to safetensors, the file's digest): the store's cache of
# conversions (gitbake/repo/ggufbase.py). Without one, the engine converts into a directory of its own.
GgufDirs = Callable[[Path], tuple[Path, str]]


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any
    name: str  # what the user wrote: tiny, org/name, ./path
    path: str  # what transformers loaded from
    device: Any
    dtype: Any
    identity: dict[str, Any]
    adapters: int = 0  # adapters merged into `model`


def _device(device: str | None) -> Any:
    """The device asked for (argument, then GITBAKE_DEVICE), else CUDA when present, else the CPU. Under
    a launcher, "cuda" is this rank's own GPU (engine/parallel.py)."""
    import torch

    from gitbake.engine import parallel

    name = device or os.environ.get("GITBAKE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.cuda.is_available():
        name = parallel.cuda_device(torch.cuda.device_count())
    return torch.device(name)


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    import torch

    dev = _device(device)
    name = (dtype or os.environ.get("GITBAKE_DTYPE") or "auto").lower()
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if name == "auto":
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}", "use auto, bf16, fp16 or fp32")
    return dev, table[name]


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16). Without it oneDNN emulates
    bf16 and fp32 is faster. `GITBAKE_CPU_BF16=0|1` overrides the detection."""
    forced = os.environ.get("GITBAKE_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def bake_dtype(requested: str | None, device: str | None = None, deepspeed: bool = False) -> str | None:
    """The dtype a bake loads its model in. `auto` is bf16 on a CPU with native bf16 products (about 4x
    the fp32 rate there; the LoRA weights, the optimizer and the loss stay fp32, as on a GPU), else what
    `pick_device` picks. `GITBAKE_DTYPE` or an explicit dtype wins. Not under DeepSpeed on a CPU, whose
    ZeRO-3 partitions the output layer and so takes the loss path that bf16 would round."""
    if requested not in (None, "auto") or os.environ.get("GITBAKE_DTYPE", "auto").lower() != "auto" or deepspeed:
        return requested
    if _device(device).type == "cpu" and native_bf16():
        return "bf16"
    return requested


def bake_load_options(bake: dict[str, Any]) -> dict[str, Any]:
    """`load`'s dtype and attention for a bake of this resolved BAKE config: its stages (rollouts, training,
    eval) share that model, and `git bake eval` loads it so again to give the bake's figures again."""
    model = bake.get("model") or {}
    return {
        "dtype": bake_dtype(model.get("dtype"), deepspeed=bake.get("deepspeed") is not None),
        "attn_implementation": model.get("attn_implementation"),
    }


# oneDNN keeps every bf16 product shape it has compiled, about 0.5 MB each, up to 1024 of them in two caches;
# a bake's shapes change with every batch, so that grows to hundreds of MB. A few dozen cover the layers.
ONEDNN_CACHE = "64"


def limit_onednn_caches() -> None:
    """Cap oneDNN's primitive caches (read when first used: call before the first bf16 product)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
    os.environ.setdefault("LRU_CACHE_CAPACITY", ONEDNN_CACHE)  # PyTorch's ideep layer


def resolve_path(
    base_model: str, root: Path | None = None, gguf: GgufDirs | None = None, reporter: Reporter | None = None
) -> tuple[str, dict[str, Any]]:
    """(the directory to load, identity), with a clear error when it is not here (a hub model that is not
    in the cache is downloaded first, unless HF_HUB_OFFLINE says not to)."""
    kind = identity.classify(base_model, root)
    if kind == "gguf":
        f = identity.gguf_file(base_model, root)
        if f is None or not f.is_file():
            raise ModelError(
                f"GGUF model {f or base_model} does not exist",
                "give the path of a .gguf file, or a directory holding one",
            )
        if gguf is None:
            from gitbake.engine.ggufin import convert_for_process

            gguf = convert_for_process
        directory, digest = gguf(f)
        return str(directory), {"kind": "gguf", "digest": digest}
    if kind == "tiny":
        from gitbake.engine.tiny import ensure_tiny

        path, digest = ensure_tiny()
        return str(path), {"kind": "tiny", "weights": digest}
    if kind == "dir":
        p = Path(os.path.expanduser(base_model))
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_dir():
            raise ModelError(
                f"model directory {p} does not exist", "give the path of a saved model (config.json + weights)"
            )
        if not (p / "config.json").exists() or not any((p / w).exists() for w in WEIGHT_FILES):
            raise ModelError(
                f"{p} has no model weights (expected config.json and one of {', '.join(WEIGHT_FILES)})",
                "point --base-model at a directory written by save_pretrained()",
            )
        return str(p), identity.base_identity(str(p))
    if kind == "hub":
        repo_id, _, rev = base_model.partition("@")
        # the commit the cache resolves the ref to, downloaded first when it is not there (huggingface_hub,
        # with its progress bars); loaded from the snapshot's directory, not by id: by id, transformers would
        # ask the network again on every load
        commit = hub.ensure(repo_id, rev or "main", reporter)
        return str(hub.snapshot(repo_id, commit)), {"kind": "hub", "id": repo_id, "revision": commit}
    raise ModelError(f"`{base_model}` is not `tiny`, a Hugging Face id or a model directory")


def load_base(
    base_model: str,
    root: Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    gguf: GgufDirs | None = None,
) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network (read when huggingface_hub is imported)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, ident = resolve_path(base_model, root, gguf)
    dev, dt = pick_device(device, dtype)
    if dev.type == "cpu" and dt == torch.bfloat16:
        limit_onednn_caches()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=trust_remote_code, **kwargs)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(
                path, torch_dtype=dt, trust_remote_code=trust_remote_code, **kwargs
            )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {base_model}: {exc}", "check the model directory or cache") from None
    model.to(dev)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    torch.set_grad_enabled(False)
    return LoadedModel(model, tokenizer, base_model, path, dev, dt, ident)


def quiet_transformers() -> None:
    """Our own progress reporting is enough; transformers' bars and advice would drown it in a hook log."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # renames announced for a future major version are not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    # save_pretrained asks accelerate to unwrap the model, which imports DeepSpeed when it is installed, and
    # DeepSpeed warns "Setting accelerator to CPU ... unable to detect it" into every bake log of a machine
    # without a GPU. Naming the CPU is the choice it would make, said without the warning.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load(
    base_model: str,
    adapters: Sequence[Path] = (),
    root: Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    gguf: GgufDirs | None = None,
) -> LoadedModel:
    """The base model with each adapter merged in, in order: the model of a point in the lineage."""
    loaded = load_base(
        base_model, root, device, None if dtype == "auto" else dtype, attn_implementation=attn_implementation, gguf=gguf
    )
    if adapters:
        from peft import PeftModel

        model = loaded.model
        for adapter in adapters:
            if not (adapter / "adapter_config.json").exists():
                raise GitbakeError(f"{adapter} is not a PEFT adapter (no adapter_config.json)")
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model._gitbake_merged = True  # its weights are no longer those on disk (vLLM must not reload them)
        loaded.model = model.eval()
        loaded.adapters = len(adapters)
    return loaded


def with_adapter(loaded: LoadedModel, adapter: Path) -> Any:
    """`loaded` (the parent) with one more adapter kept separate (not merged): a PEFT model whose
    `disable_adapter()` is the parent, as eval needs."""
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
