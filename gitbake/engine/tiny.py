"""`tiny`: the built-in base model. A small Llama-shaped model generated from a fixed seed, with a
byte-level fast tokenizer and a chat template. No download, for demos and tests.

The weights come from numpy's legacy `RandomState`, whose stream is frozen across numpy versions and
platforms, so every machine builds the same bytes; their digest (`weights_digest`) is the model's
identity and is pinned in `gitbake/contract/tiny_pin.py` (which status-like commands read without importing
torch). `tests/func/test_engine_models.py` rebuilds the weights and checks the pin: a change to how tiny is
generated cannot slip through as a false cache hit.

The init scale is larger than a default init on purpose: a default-scale random model barely reacts to
its prompt (per-token KL between prompted and unprompted answers ~0.04 nats here); at std 0.04 it is
~0.2 nats, enough for a bake to have something to learn. Larger scales react more (0.05: ~0.3 nats) but
are rougher functions whose bakes generalise worse to held-out questions (gap_closed ~0.93 vs ~0.97).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import blake3
import numpy as np

SEED = 20241118
INIT_STD = 0.04
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": INIT_STD,
    "pad_token_id": 256,
    "bos_token_id": 257,
    "eos_token_id": 258,
    "torch_dtype": "float32",
}
# Roles are special tokens; a turn ends with <|eos|>. An empty student prompt renders as no system
# turn at all (the question alone), which is what "always on" means for this model.
CHAT_TEMPLATE = (
    "{%- if tools %}<|system|>Tools: {{ tools | tojson }}<|eos|>{%- endif %}"
    "{%- for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{%- endif %}"
)


def parameter_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every weight of the model, in a fixed order, named as transformers' LlamaForCausalLM names them."""
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (h, h)),
            (f"{p}.self_attn.v_proj.weight", (h, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def build_weights() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(SEED)
    weights = {}
    for name, shape in parameter_shapes():
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        else:
            weights[name] = rs.normal(0.0, INIT_STD, size=shape).astype(np.float32)
    return weights


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """blake3 over (name, dtype, shape, little-endian bytes) of each tensor, by name: the weights
    themselves, independent of the file format they are saved in."""
    h = blake3.blake3()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name]).astype(weights[name].dtype.newbyteorder("<"), copy=False)
        header = json.dumps({"name": name, "dtype": str(arr.dtype.str), "shape": list(arr.shape)}, sort_keys=True)
        h.update(header.encode() + b"\0")
        h.update(arr.tobytes())
    return h.hexdigest()


def cache_root() -> Path:
    base = os.environ.get("GITBAKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gitbake"
    )
    return Path(base)


def ensure_tiny(root: Path | None = None) -> tuple[Path, str]:
    """The directory of the built tiny model (building it once), and its weights digest."""
    from gitbake.contract.tiny_pin import TINY_WEIGHTS_DIGEST

    root = root or cache_root() / "models"
    target = root / f"tiny-{TINY_WEIGHTS_DIGEST[:16]}"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target, TINY_WEIGHTS_DIGEST
    weights = build_weights()
    digest = weights_digest(weights)
    if digest != TINY_WEIGHTS_DIGEST:
        # never reuse keys across a change in the weights: the pin must be updated with the generator
        raise RuntimeError(
            f"tiny's weights hash to {digest}, but gitbake/contract/tiny_pin.py pins {TINY_WEIGHTS_DIGEST}"
        )
    tmp = root / f".tiny-{os.getpid()}-{digest[:8]}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    _save(weights, tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def _save(weights: dict[str, np.ndarray], out: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: weights[k] for k in sorted(weights)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 257, "eos_token_id": 258, "pad_token_id": 256, "do_sample": True}, indent=2)
    )
    build_tokenizer().save_pretrained(str(out))


def build_tokenizer() -> Any:
    """A byte-level fast tokenizer: 256 byte tokens plus the special tokens, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # GPT-2's byte-to-unicode table, in byte order, so token id == byte value
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    assert set(vocab) == set(byte_chars)
    for i, special in enumerate(SPECIAL_TOKENS):
        vocab[special] = 256 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        padding_side="left",
        model_max_length=CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
