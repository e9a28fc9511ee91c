"""A bake's passes on the CPU run gitbake's materialised attention (engine/attention.py): the states and
gradients of SDPA, transformers' eager arithmetic for what it does not handle itself, and SDPA where it
does not apply."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch
from peft import LoraConfig, get_peft_model

from gitbake.engine import attention, bake, models

PROMPT = [1, 5, 9, 13, 17, 21, 25]
BATCH = [bake.Trajectory(PROMPT + [30 + i], PROMPT + [30 + i], [40 + i, 41, 42 + i, 43, 2]) for i in range(4)]
LONG_PROMPT = list(range(3, 3 + 2 * bake.PREFIX_MIN))  # a teacher prompt long enough for the prefix cache
TEACHER_BATCH = [bake.Trajectory(LONG_PROMPT + [60 + i], PROMPT, [40 + i] * (2 + i) + [2]) for i in range(5)]


def student() -> tuple[Any, Any]:
    m = models.load_base("tiny", device="cpu", dtype="fp32")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(m.model, lora)
    return pm, pm.get_base_model().get_decoder()


def seen_attention(decoder: Any) -> list[str]:
    """The attention each pass of the first layer runs, as it reads it from the config."""
    seen: list[str] = []
    decoder.layers[0].self_attn.register_forward_pre_hook(
        lambda *_: seen.append(decoder.layers[0].self_attn.config._attn_implementation)
    )
    return seen


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool(b.abs().max() > 0 and ((a - b).norm() / b.norm()).item() < tol)


def test_a_packed_training_row_has_sdpa_s_states_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    pm, decoder = student()
    assert decoder.config._attn_implementation == "sdpa"
    seen = seen_attention(decoder)
    params = [p for p in pm.parameters() if p.requires_grad]
    runs = []
    with torch.enable_grad():
        for limit in (0, attention.MAX):
            monkeypatch.setattr(attention, "MAX", limit)
            pm.zero_grad()
            hidden = bake.packed_hidden(decoder, BATCH, "cpu")
            assert hidden is not None
            (hidden * torch.linspace(-1, 1, hidden.shape[1])).pow(2).sum().backward()
            runs.append((hidden.detach(), [p.grad.clone() for p in params]))
    assert seen == ["sdpa", attention.NAME]
    assert decoder.config._attn_implementation == "sdpa"  # put back after the pass
    (h_sdpa, g_sdpa), (h_ours, g_ours) = runs
    assert close(h_ours, h_sdpa)
    for a, b in zip(g_ours, g_sdpa):
        assert close(a, b)


def test_the_teacher_pass_with_its_cached_prefix_has_sdpa_s_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """No grad, a padded batch whose keys begin with the cached prefix: eager's additive mask, built by
    transformers for the registered attention, over keys longer than the queries."""
    _, decoder = student()
    seen = seen_attention(decoder)
    states = []
    with torch.no_grad():
        prefix = bake.Prefix.of(decoder, TEACHER_BATCH, "cpu")
        assert prefix is not None
        for limit in (0, attention.MAX):
            monkeypatch.setattr(attention, "MAX", limit)
            states.append(bake.response_hidden(decoder, TEACHER_BATCH, "teacher", 0, "cpu", prefix))
    assert seen[-2:] == ["sdpa", attention.NAME]
    assert close(states[1], states[0])


def test_long_rows_and_checkpointed_training_keep_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row longer than MAX keeps SDPA; a checkpointed bake's training pass too, since its backward
    recomputes the forward after the switch has ended, but not its passes without grad."""
    _, decoder = student()
    seen = seen_attention(decoder)
    with torch.enable_grad():
        bake.packed_hidden(decoder, BATCH, "cpu", checkpointed=True)
    with torch.no_grad():
        bake.packed_hidden(decoder, BATCH, "cpu", checkpointed=True)
        monkeypatch.setattr(attention, "MAX", 8)
        bake.packed_hidden(decoder, BATCH, "cpu")
        bake.response_hidden(decoder, BATCH, "teacher", 0, "cpu")
    assert seen == ["sdpa", attention.NAME, "sdpa", "sdpa"]


def test_the_config_is_put_back_when_the_pass_fails() -> None:
    _, decoder = student()
    with pytest.raises(RuntimeError):
        with attention.for_pass(decoder, 10, "cpu"):
            assert decoder.config._attn_implementation == attention.NAME
            raise RuntimeError("a pass that fails")
    assert decoder.config._attn_implementation == "sdpa"


def test_grouped_query_heads_masks_and_precision_match_transformers_eager() -> None:
    """Against transformers' eager attention (repeat_kv, fp32 softmax): 6 query heads on 2 key/value heads,
    keys longer than queries, an additive or a boolean mask; fp32 exactly, bf16 under autocast within
    its rounding, forward and backward."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups = 3

    torch.manual_seed(0)
    allowed = torch.rand(2, 1, 5, 9) > 0.3
    allowed[..., 0] = True  # every query sees a key
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        inputs = [torch.randn(2, 6, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)]
        grad = torch.randn(2, 5, 6, 8)
        runs = []
        for fn, mask in ((eager_attention_forward, additive), (attention.materialised_attention, additive)):
            qkv = [x.to(dtype).requires_grad_(True) for x in inputs]
            with torch.enable_grad():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    out, _ = fn(Module(), *qkv, mask.to(dtype), 0.35)
                out.float().backward(grad)
            runs.append([out.float(), *(x.grad.float() for x in qkv)])
        for a, b in zip(runs[1], runs[0]):
            assert close(a, b, tol)
        qkv = [x.to(dtype) for x in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            boolean, _ = attention.materialised_attention(Module(), *qkv, allowed, 0.35)
        assert close(boolean.float(), runs[1][0], 1e-6)


def test_what_it_does_not_compute_itself_goes_to_the_model_s_own_eager_attention() -> None:
    """Gemma 2's logit soft-capping, and attention dropout in training, run the modeling file's eager."""
    from transformers.models.gemma2 import modeling_gemma2

    class Gemma2Like(torch.nn.Module):
        num_key_value_groups = 1

    Gemma2Like.__module__ = modeling_gemma2.__name__
    module = Gemma2Like().eval()
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8) * 4, torch.randn(1, 2, 4, 8) * 4, torch.randn(1, 2, 4, 8)
    ours, _ = attention.materialised_attention(module, q, k, v, None, 1.0, softcap=2.0)
    theirs, _ = modeling_gemma2.eager_attention_forward(module, q, k, v, None, scaling=1.0, softcap=2.0)
    plain, _ = attention.materialised_attention(module, q, k, v, None, 1.0)
    assert torch.equal(ours, theirs) and not torch.allclose(ours, plain)
    module.train()
    torch.manual_seed(1)
    dropped, _ = attention.materialised_attention(module, q, k, v, None, 1.0, dropout=0.5)
    assert not torch.allclose(dropped, plain)


def test_the_bake_runs_its_passes_with_it(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packed training row and the teacher's pass of a bake without activation checkpointing; a
    checkpointed bake's training rows keep SDPA, its teacher's pass does not."""
    from gitbake.contract.config import Bake

    data = BATCH * 2  # two micro-batches of 4 an epoch
    for checkpoint in (False, True):
        m = models.load_base("tiny", device="cpu", dtype="fp32")
        seen = seen_attention(m.model.get_decoder())
        cfg = Bake.model_validate(
            {
                "name": "t",
                "datasets": [{"target": "x"}],
                "epochs": 3,
                "model": {"disable_activation_checkpoint": not checkpoint},
            }
        )
        result = bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(data, tmp_path / str(checkpoint))
        assert result.packed and result.steps == 2 * 3
        # the teacher's pass (one batch of 8), the packing check (packed, then padded), then one pass per step
        assert seen[:3] == [attention.NAME] * 3
        if checkpoint:  # each step's forward, and its recomputation in backward
            assert set(seen[3:]) == {"sdpa"} and len(seen[3:]) >= 2 * 3
        else:
            assert seen[3:] == [attention.NAME] * (2 * 3)
