"""The engine's choice of activation checkpointing: off for a small model with memory to spare, on for a
large one, on whenever the estimate cannot be made."""

from __future__ import annotations

from types import SimpleNamespace

from gitbake.engine.activations import activation_bytes, should_checkpoint

SMOLLM2_135M = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9)
LLAMA_7B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)
GIB = 2**30


def test_a_small_model_on_a_roomy_machine_trains_without_checkpointing() -> None:
    needed = activation_bytes(SMOLLM2_135M, 4, 200)
    assert needed is not None and 0.5 * GIB < needed < 1.5 * GIB  # the paper's formula, by hand: ~0.8 GiB
    assert not should_checkpoint(needed, 16 * GIB)
    assert should_checkpoint(needed, 2 * GIB)  # a quarter of the free memory is the limit


def test_a_large_model_checkpoints_and_an_unknown_shape_checkpoints() -> None:
    needed = activation_bytes(LLAMA_7B, 4, 1024)
    assert needed is not None and needed > 30 * GIB and should_checkpoint(needed, 80 * GIB)
    assert activation_bytes(SimpleNamespace(hidden_size=64), 4, 100) is None
    assert should_checkpoint(None, 80 * GIB) and should_checkpoint(GIB, None)


def test_longer_sequences_and_batches_need_more() -> None:
    base = activation_bytes(SMOLLM2_135M, 4, 200)
    longer, wider = activation_bytes(SMOLLM2_135M, 4, 400), activation_bytes(SMOLLM2_135M, 8, 200)
    assert base is not None and longer is not None and wider is not None
    assert longer > 2 * base and abs(wider - 2 * base) <= 1
