"""The benchmark model every `scripts/bench/` script shares: Llama-shaped, ~29 M parameters, a 32k
vocabulary, random weights from a fixed seed (built from a config: no download)."""

from __future__ import annotations

from typing import Any

BENCH_CONFIG: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def bench_model(seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**BENCH_CONFIG)).eval()
    return model


def bench_prompts(n: int, seed: int = 0, min_len: int = 24, max_len: int = 64) -> list[list[int]]:
    """`n` prompts of token ids with varied lengths (what teacher contexts of different questions look like)."""
    import random

    rng = random.Random(seed)
    return [
        [1] + [rng.randrange(3, BENCH_CONFIG["vocab_size"]) for _ in range(rng.randint(min_len, max_len))]
        for _ in range(n)
    ]


class BenchTokenizer:
    """What generate_batches needs of a tokenizer, for a model without one."""

    pad_token_id = BENCH_CONFIG["pad_token_id"]
    eos_token_id = BENCH_CONFIG["eos_token_id"]
