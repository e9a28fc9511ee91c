"""A Llama- or Gemma 3-shaped transformers model (and its tokenizer) written as one GGUF file for llama.cpp
and Ollama.

Everything llama.cpp's own `convert_hf_to_gguf.py` decides for these architectures is decided the same
way here, with the `gguf` package that script is built on: tensor names come from gguf's `TensorNameMap`;
for llama the Q and K projections are permuted into the rotary layout llama.cpp expects, and for Gemma 3
every RMSNorm weight is stored plus one (Gemma multiplies by 1 + weight, llama.cpp by the weight);
transformers' GGUF loader undoes exactly these. The hyperparameters go under `llama.*` or `gemma3.*`, and
a byte-level BPE tokenizer
is written as `tokenizer.ggml.model = gpt2` with its tokens, token types, merges, special ids and chat
template (gguf's `SpecialVocab` reads the merges and special ids from the saved tokenizer).

When the base model came from a GGUF file (`source`), that file's `general.*` and `tokenizer.*` keys are
copied as they are instead: its tokenizer description is the original (llama.cpp's pre-tokenizer name,
scores, flags), where one rebuilt from transformers could only approximate it.

The file is written to a temporary name in the target folder and renamed into place, so a failure leaves
nothing half-written under the name asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from gitbake.engine.ggufheader import read_header
from gitbake.engine.templating import adds_bos, adds_eos
from gitbake.errors import UsageError

FTYPES = ("f32", "f16", "q8_0")
# transformers' model_type -> llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3"}
# keys of a source file that describe that file's own tensors or encoding, not the model: never copied
_SOURCE_SKIP = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}
_SOURCE_PREFIXES = ("general.", "tokenizer.")


class GgufExportError(UsageError):
    """The model or the type asked for cannot be written as GGUF (exit 2)."""


def check_ftype(ftype: str) -> str:
    """`ftype` if it is one this writer supports (and the gguf package is here); otherwise exit 2 naming the
    supported ones (or the extra to install)."""
    try:
        import gguf  # noqa: F401 - only whether it is installed
    except ImportError:
        raise GgufExportError(
            "GGUF export needs the gguf package", "install the extra: pip install 'gitbake[gguf]'"
        ) from None
    if ftype not in FTYPES:
        raise GgufExportError(
            f"GGUF type {ftype!r} is not supported",
            f"use --type {', '.join(FTYPES)} (f32: exact, f16: half the size, q8_0: a quarter)",
        )
    return ftype


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    ftype: str = "f32",
    source: Path | None = None,
    *,
    name: str | None = None,
) -> None:
    """Write `model` (a transformers LlamaForCausalLM, adapters already merged) and `tokenizer` to `path`.

    `ftype`: f32, f16 or q8_0 (norms and other 1-D tensors stay f32, as llama.cpp keeps them). `source`:
    the GGUF the base model was converted from, whose general.* and tokenizer.* metadata is kept.
    `name`: general.name when there is no source.
    """
    import gguf

    check_ftype(ftype)
    config = model.config
    arch = architecture(config)
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _hparams(writer, config, ftype, arch)
        if source is not None:
            _copy_metadata(writer, source)
        else:
            if name:
                writer.add_name(name)
            _tokenizer(writer, tokenizer, int(config.vocab_size))
        _tensors(writer, model, ftype, arch)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        for out in writer.fout or []:
            out.flush()
            os.fsync(out.fileno())
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def architecture(config: Any) -> str:
    """llama.cpp's name for the architecture of a model with this config; exit 2 for one not written here."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise GgufExportError(
            f"GGUF export supports the {' and '.join(sorted(ARCHITECTURES))} architectures; this model is {kind!r}",
            "export it with --merged DIR and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    return ARCHITECTURES[kind]


def _check_gemma3(config: Any, head_dim: int) -> None:
    n = int(config.num_hidden_layers)
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention") or {}
    odd = [
        what
        for what, fits in (
            ("its layers' attention pattern", list(getattr(config, "layer_types", None) or pattern) == pattern),
            ("its query scale", int(getattr(config, "query_pre_attn_scalar", head_dim) or head_dim) == head_dim),
            ("its local layers' rope base", float(local.get("rope_theta", 10000.0)) == 10000.0),
            ("its logit soft-capping", getattr(config, "final_logit_softcapping", None) is None),
        )
        if not fits
    ]
    if odd:
        raise GgufExportError(
            f"GGUF export writes Gemma 3 as llama.cpp's gemma3 expects it; this model differs in {', '.join(odd)}",
            "export it with --merged DIR and convert it with llama.cpp's convert_hf_to_gguf.py",
        )


def _rope_params(config: Any) -> dict[str, Any]:
    """The global layers' rope parameters: transformers 5 keeps them in rope_parameters (per layer type
    where the layers differ, as Gemma 3's sliding and full-attention layers do), older versions in
    rope_scaling and rope_theta."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return {}
    nested = params.get("full_attention")
    return dict(nested) if isinstance(nested, dict) else dict(params)


def _rope_theta(config: Any) -> float:
    theta = _rope_params(config).get("rope_theta")
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _hparams(writer: Any, config: Any, ftype: str, arch: str) -> None:
    import gguf

    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    if arch == "gemma3":
        # as convert_hf_to_gguf's Gemma3Model: llama.cpp knows the rest of Gemma 3's shape (its local layers'
        # rope base, one global layer in six, queries scaled by 1/sqrt(head_dim)) from the architecture itself,
        # so a model shaped otherwise would run wrongly there: refuse it
        _check_gemma3(config, head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(int(config.sliding_window))
    else:
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config.vocab_size))
    scaling = _rope_params(config)
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind != "default":
        # llama3/yarn scaling need extra tensors or keys that this writer does not produce: refuse rather
        # than write a file whose long-context behaviour silently differs
        raise GgufExportError(
            f"GGUF export does not support rope scaling {kind!r}",
            "export it with --merged DIR and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[ftype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _copy_metadata(writer: Any, source: Path) -> None:
    """The source file's general.* and tokenizer.* keys, with their exact value types."""
    import gguf

    for key, v in read_header(source).fields.items():
        if key in _SOURCE_SKIP or not key.startswith(_SOURCE_PREFIXES):
            continue
        sub = gguf.GGUFValueType(v.sub_type) if v.sub_type is not None else None
        writer.add_key_value(key, v.value, gguf.GGUFValueType(v.vtype), sub_type=sub)


def _tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """tokenizer.* for a byte-level BPE tokenizer, as convert_hf_to_gguf.py writes a gpt2-type vocabulary."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else ""
    if '"type":"BPE"' not in state.replace(" ", "") or '"ByteLevel"' not in state:
        raise GgufExportError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2 style); this model's tokenizer is not one",
            "export it with --merged DIR and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # rows of the embedding that no token uses
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    # llama.cpp picks the pre-tokenizer's split regex by this name; "default" is GPT-2's. A vocabulary with
    # no merges (tiny) tokenizes the same under any split.
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="gitbake-gguf-tok-") as d:
        tokenizer.save_pretrained(d)
        # its warning that a vocabulary has no merges is no news for tiny, and a hook log is no place for it
        log = logging.getLogger("gguf.vocab")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            special = gguf.SpecialVocab(d, load_merges=True, n_vocab=vocab_size)
        finally:
            log.setLevel(level)
    special.add_to_gguf(writer, quiet=True)
    if not special.merges:
        # a vocabulary with no merges (tiny: one token per byte): transformers' GGUF loader then derives the
        # merges from the scores, and finds none, since no token is two others joined
        writer.add_token_scores([0.0] * vocab_size)
    # say explicitly what the tokenizer adds around a text, so llama.cpp does not fall back on its defaults
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(adds_bos(tokenizer))
    if "eos" not in special.add_special_token:
        writer.add_add_eos_token(adds_eos(tokenizer))
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _permute(weights: Any, heads: int) -> Any:
    """HF's rotary layout (halves) to llama.cpp's (interleaved pairs): convert_hf_to_gguf's LlamaModel.permute."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensors(writer: Any, model: Any, ftype: str, arch: str) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q

    config = model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp; a tied output layer is the embedding, stored once
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GgufExportError(
                f"GGUF export cannot place tensor {hf_name} in llama.cpp's {arch} layout",
                "export it with --merged DIR and convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        data = tensor.detach().to("cpu").float().numpy()
        if arch == "gemma3":
            if new.endswith("norm.weight"):
                data = data + 1  # Gemma's RMSNorm scales by 1 + weight, llama.cpp's by the weight
        elif new.endswith("attn_q.weight"):
            data = _permute(data, heads)
        elif new.endswith("attn_k.weight"):
            data = _permute(data, kv_heads)
        qtype = Q.F32
        # 1-D tensors (norms) stay f32, as llama.cpp keeps them; q8_0 needs rows that are whole blocks of 32,
        # else f16 (convert_hf_to_gguf's fallback)
        if data.ndim > 1 and ftype != "f32":
            qtype = Q.F16
            if ftype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
                qtype = Q.Q8_0
        out = gguf.quants.quantize(data, qtype)
        writer.add_tensor(new, out, raw_dtype=qtype)  # a Q8_0 array is bytes: gguf derives its shape
