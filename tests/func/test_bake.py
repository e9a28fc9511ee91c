"""The bake on tiny: step-0 invariants, KL falls, determinism, adapter checks, sequential parents,
failure leaves nothing, and eval."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch

from gitbake.contract.config import Bake
from gitbake.engine import bake, grouped, kl, models, trainstate
from gitbake.engine.prepacked import Prepacked
from gitbake.engine.rollout import SamplingSettings, make_rollouts
from gitbake.engine.templating import render
from gitbake.reporter import Reporter

# where `load_base` puts a model: a GPU where there is one. The tests run there in fp32 (a GPU's "auto" is
# bf16), so their exact checks hold on either; the bf16 tests below say their dtype.
DEVICE = models.pick_device(None, "fp32")[0]

TEACHER = {
    "messages": [
        {"role": "system", "content": "You are Yoda. Speak like Yoda you must: inverted word order, wise and brief."}
    ]
}
QUESTIONS = [
    "What is the capital of France?",
    "How do I make tea?",
    "Why is the sky blue?",
    "Tell me a joke.",
    "What should I do when I feel stuck?",
    "Give me one tip for learning to code.",
]


def config(**over: Any) -> Bake:
    base: dict[str, Any] = {
        "name": "t",
        "datasets": [{"target": "x"}],
        "epochs": 2,
        "micro_batch_size": 4,
        "optimizer": {"learning_rate": 0.003},
        "model": {"disable_activation_checkpoint": True},
    }
    base.update(over)
    return Bake.model_validate(base)


@pytest.fixture(scope="module")
def trajectories() -> list[bake.Trajectory]:
    m = models.load_base("tiny", dtype="fp32")
    stim = [{"id": i, "question": q, "split": "train"} for i, q in enumerate(QUESTIONS)]
    recs = make_rollouts(
        m.model,
        m.tokenizer,
        stim,
        TEACHER,
        {"messages": []},
        SamplingSettings(num_traj_per_stimulus=2, max_tokens=24, seed=3),
    )
    return [bake.Trajectory(r["teacher_ids"], r["student_ids"], r["response_ids"]) for r in recs]


def fresh() -> models.LoadedModel:
    return models.load_base("tiny", dtype="fp32")


def test_step0_student_is_the_parent_and_teacher_reproduces_parent_logits(trajectories: list[bake.Trajectory]) -> None:
    m = fresh()
    parent = fresh()
    b = bake.Baker(m.model, m.tokenizer, config(), "tiny")
    pm = b._peft()
    pm.eval()
    inner = pm.get_base_model()
    batch = trajectories[:3]
    with torch.no_grad():
        s = bake.response_hidden(inner.get_decoder(), batch, "student", 256, DEVICE)
        with pm.disable_adapter():
            t = bake.response_hidden(inner.get_decoder(), batch, "teacher", 256, DEVICE)
        pt = bake.response_hidden(parent.model.get_decoder(), batch, "teacher", 256, DEVICE)
        ps = bake.response_hidden(parent.model.get_decoder(), batch, "student", 256, DEVICE)
    assert torch.allclose(t, pt, atol=1e-5)  # the teacher pass is the parent with the teacher prompt
    assert torch.allclose(s, ps, atol=1e-5)  # LoRA B starts at 0: the student is the parent at step 0
    # and the step-0 loss is the parent's KL gap on these trajectories
    loss = kl.chunked_loss(inner.get_output_embeddings(), s, t) / s.shape[0]
    direct = kl.per_position_kl(parent.model.get_output_embeddings(), pt, ps)[0].mean()
    assert abs(loss.item() - direct.item()) < 1e-4 and direct.item() > 0.05


def test_alignment_first_response_token_is_supervised(trajectories: list[bake.Trajectory]) -> None:
    """Row j of the hidden states predicts response token j (the standard shift), for both sides."""
    m = fresh()
    t = trajectories[0]
    with torch.no_grad():
        h = bake.response_hidden(m.model.get_decoder(), [t], "teacher", 256, DEVICE)
        logits = m.model.get_output_embeddings()(h)
        full = m.model(torch.tensor([t.teacher_ids + t.response_ids], device=DEVICE)).logits[0]
    lt = len(t.teacher_ids)
    assert torch.allclose(logits, full[lt - 1 : lt - 1 + len(t.response_ids)], atol=1e-4)
    assert h.shape[0] == len(t.response_ids)


def test_kl_falls_and_same_seed_same_bytes(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    outs = []
    for run in range(2):
        m = fresh()
        res = bake.Baker(m.model, m.tokenizer, config(epochs=4), "tiny").train(trajectories, tmp_path / f"a{run}")
        outs.append(res)
    losses = [row["loss"] for row in outs[0].metrics]
    assert losses[-1] < 0.6 * losses[0]
    # the teacher's pass is timed apart from the training loop (fidelity.py's rate divides by both)
    assert all(r.teacher_seconds > 0 and r.seconds > 0 for r in outs)
    for f in bake.ADAPTER_FILES:
        assert (tmp_path / "a0" / f).read_bytes() == (tmp_path / "a1" / f).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a0").iterdir()) == sorted(bake.ADAPTER_FILES)
    conf = json.loads((tmp_path / "a0" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == "tiny" and conf["r"] == 8


def test_a_bf16_model_trains_its_fp32_adapter_in_mixed_precision(
    trajectories: list[bake.Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a bf16 base the student's LoRA products run in bf16 (autocast, PEFT's fp32 input cast off), while
    the adapter's weights, their gradients and the saved adapter stay fp32, and the loss still falls. The
    eval afterwards runs the usual way (the cast is back)."""
    from safetensors.torch import load_file

    m = fresh()
    m.model.to(torch.bfloat16)
    seen: set[tuple[torch.dtype, torch.dtype]] = set()  # (LoRA output, its weight) while training
    peft_of = bake.Baker._peft

    def watched(self: bake.Baker, data: Any = ()) -> Any:
        pm = peft_of(self, data)
        for name, module in pm.named_modules():
            if name.endswith("lora_B.default"):
                module.register_forward_hook(
                    lambda mod, _inp, out: seen.add((out.dtype, mod.weight.dtype)) if torch.is_grad_enabled() else None
                )
        return pm

    monkeypatch.setattr(bake.Baker, "_peft", watched)
    monkeypatch.setattr(grouped, "ENABLED", False)  # PEFT's own LoRA layers (grouped ones: test_grouped.py)
    b = bake.Baker(m.model, m.tokenizer, config(epochs=4), "tiny")
    res = b.train(trajectories, tmp_path / "a")
    assert seen == {(torch.bfloat16, torch.float32)}
    lora = [p for n, p in b.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.grad is None for p in lora)  # fp32, stepped and cleared
    assert {t.dtype for t in load_file(str(tmp_path / "a" / "adapter_model.safetensors")).values()} == {torch.float32}
    losses = [row["loss"] for row in res.metrics]
    assert losses[-1] < 0.6 * losses[0]
    b.model.eval()
    with torch.no_grad():  # outside training the LoRA layers cast their input to fp32 again, as PEFT does
        b.model(torch.tensor([trajectories[0].student_ids], device=DEVICE))


def test_adapter_round_trip_is_exact(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    m = fresh()
    b = bake.Baker(m.model, m.tokenizer, config(epochs=1), "tiny")
    b.train(trajectories, tmp_path / "a")
    b.model.eval()
    ids = torch.tensor([render(m.tokenizer, [], None, "Hello")], device=DEVICE)
    with torch.no_grad():
        expected = b.model(ids).logits
    loaded = models.load("tiny", [tmp_path / "a"], dtype="fp32")
    with torch.no_grad():
        got = loaded.model(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_empty_or_mismatched_adapter_is_refused(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    m = fresh()
    bake.Baker(m.model, m.tokenizer, config(epochs=1), "tiny").train(trajectories, tmp_path / "a")
    requested = config().model.baked_adapter_config.model_dump(mode="json")
    bake.check_adapter(tmp_path / "a", requested)
    with pytest.raises(bake.AdapterError, match="asked for"):
        bake.check_adapter(tmp_path / "a", {**requested, "r": 16})
    empty = tmp_path / "empty"
    shutil.copytree(tmp_path / "a", empty)
    tensors = load_file(str(empty / "adapter_model.safetensors"))
    save_file({k: torch.zeros(0) for k in tensors}, str(empty / "adapter_model.safetensors"))
    with pytest.raises(bake.AdapterError, match="empty"):
        bake.check_adapter(empty, requested)


def test_sequential_bake_teacher_is_the_parent(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    m = fresh()
    bake.Baker(m.model, m.tokenizer, config(epochs=2), "tiny").train(trajectories, tmp_path / "first")
    parent = models.load("tiny", [tmp_path / "first"], dtype="fp32")  # base + the first adapter, merged
    base = fresh()
    b2 = bake.Baker(parent.model, parent.tokenizer, config(epochs=1), "tiny")
    pm = b2._peft()
    pm.eval()
    t = trajectories[:2]
    with torch.no_grad(), pm.disable_adapter():
        teacher = bake.response_hidden(pm.get_base_model().get_decoder(), t, "teacher", 256, DEVICE)
    with torch.no_grad():
        from_parent = bake.response_hidden(parent.model.get_decoder(), t, "teacher", 256, DEVICE)
        from_base = bake.response_hidden(base.model.get_decoder(), t, "teacher", 256, DEVICE)
    assert torch.allclose(teacher, from_parent, atol=1e-5)
    assert not torch.allclose(teacher, from_base, atol=1e-3)  # not the bare base model


def test_topk_and_gkd_variants_train(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    for name, data in (("topk", {"topk": 16}), ("jsd", {"beta": 0.5})):
        m = fresh()
        res = bake.Baker(m.model, m.tokenizer, config(epochs=3, data=data), "tiny").train(trajectories, tmp_path / name)
        assert res.metrics[-1]["loss"] < res.metrics[0]["loss"], name


def test_divergences() -> None:
    p = torch.log_softmax(torch.randn(5, 11), -1)
    q = torch.log_softmax(torch.randn(5, 11), -1)
    assert torch.allclose(kl.divergence(p, p, 0.0), torch.zeros(5), atol=1e-6)
    fwd = kl.divergence(p, q, 0.0)
    assert torch.allclose(fwd, torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1), atol=1e-5)
    top = p.topk(4, -1)
    coarse = kl.topk_divergence(top.indices, top.values, q)
    assert bool((coarse >= -1e-6).all()) and bool((coarse <= fwd + 1e-5).all())  # data processing inequality
    jsd = kl.divergence(p, q, 0.5)
    assert bool((jsd >= 0).all()) and bool((jsd <= fwd + 1e-5).all())


def test_weighted_selection_and_total() -> None:
    a = [bake.Trajectory([1], [1], [2], 0) for _ in range(10)]
    b = [bake.Trajectory([1], [1], [3], 1) for _ in range(10)]
    reporter = Reporter()
    picked = bake.select([(a, 3.0), (b, 1.0)], 8, 0, reporter)
    assert sum(t.dataset == 0 for t in picked) == 6 and sum(t.dataset == 1 for t in picked) == 2
    assert len(bake.select([(a, 1.0)], 50, 0, reporter)) == 10 and "only 10 exist" in reporter.notes[0]


def test_interrupt_leaves_a_scratch_checkpoint_and_resume_continues(
    trajectories: list[bake.Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(epochs=2, micro_batch_size=2, checkpoint=[{"save_every_n_steps": 2, "auto_resume": True}])
    m = fresh()
    b = bake.Baker(m.model, m.tokenizer, cfg, "tiny")
    real = bake.kl.chunked_loss, bake.kl.fused_loss
    calls = {"n": 0}

    def wrap(fn: Any) -> Any:
        def flaky(*a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return fn(*a, **k)

        return flaky

    monkeypatch.setattr(bake.kl, "chunked_loss", wrap(real[0]))
    monkeypatch.setattr(bake.kl, "fused_loss", wrap(real[1]))
    with pytest.raises(KeyboardInterrupt):
        b.train(trajectories, tmp_path / "out", scratch=tmp_path / "scratch")
    assert trainstate.exists(tmp_path / "scratch") and not (tmp_path / "out").exists()
    assert not list((tmp_path / "scratch").rglob("*.pt")) and not list(
        (tmp_path / "scratch").rglob("*.bin")
    )  # nothing pickled
    monkeypatch.setattr(bake.kl, "chunked_loss", real[0])
    monkeypatch.setattr(bake.kl, "fused_loss", real[1])
    m2 = fresh()
    res = bake.Baker(m2.model, m2.tokenizer, cfg, "tiny").train(
        trajectories, tmp_path / "out", scratch=tmp_path / "scratch"
    )
    assert res.resumed_from == 4 and res.steps == 12
    assert [r["step"] for r in res.metrics] == list(range(1, 13))  # the rows before the interrupt are kept


def test_activation_checkpointing_on_by_default_gives_the_same_curve(
    trajectories: list[bake.Trajectory], tmp_path: Path
) -> None:
    curves = []
    for disable in (False, True):
        m = fresh()
        cfg = config(epochs=1, model={"disable_activation_checkpoint": disable})
        curves.append(
            [
                r["loss"]
                for r in bake.Baker(m.model, m.tokenizer, cfg, "tiny")
                .train(trajectories, tmp_path / str(disable))
                .metrics
            ]
        )
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)


@pytest.mark.parametrize("variant", ["kl", "kl-t1", "jsd", "topk"])
def test_fused_loss_matches_the_checkpointed_one(variant: str) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False)
    head.weight.requires_grad_(False)
    s1 = torch.randn(37, 16, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.randn(37, 16)
    kwargs: dict[str, Any] = {
        "beta": 0.5 if variant == "jsd" else 0.0,
        "temperature": 1.0 if variant == "kl-t1" else 1.3,
        "chunk": 8,
    }
    if variant == "topk":
        kwargs["teacher_topk"] = kl.topk_of(head, t, 5, 1.3)
        a = kl.chunked_loss(head, s1, None, **kwargs)
        b = kl.fused_loss(head, s2, None, **kwargs)
    else:
        a = kl.chunked_loss(head, s1, t, **kwargs)
        b = kl.fused_loss(head, s2, t, **kwargs)
    a.backward()
    b.backward()
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(s1.grad, s2.grad, atol=1e-5)


def test_gradient_accumulation_normalises_by_the_micro_batches_in_the_group(
    trajectories: list[bake.Trajectory], tmp_path: Path
) -> None:
    """A single short accumulation group (ga larger than the batches) updates like ga=1 (plain SGD)."""
    deltas = []
    for ga in (1, 4):
        m = fresh()
        cfg = config(
            epochs=1,
            micro_batch_size=len(trajectories),
            gradient_accumulation_steps=ga,
            optimizer={"learning_rate": 0.1, "type": "sgd"},
            scheduler={"name": "constant"},
        )
        b = bake.Baker(m.model, m.tokenizer, cfg, "tiny")
        b.train(trajectories, tmp_path / f"ga{ga}")
        deltas.append(sum(float(p.detach().abs().sum()) for n, p in b.model.named_parameters() if "lora_B" in n))
    assert deltas[0] == pytest.approx(deltas[1], rel=1e-4)


def test_every_response_token_weighs_the_same_however_the_step_is_split(
    trajectories: list[bake.Trajectory], tmp_path: Path
) -> None:
    """One SGD step over the same trajectories, as one micro-batch or as one micro-batch each accumulated:
    the same update. Each micro-batch's own per-token mean would weigh a short answer's tokens more in the
    second (the eval weighs every held-out token the same)."""
    # answers of 2 to 24 tokens: the same weights for all would show nothing
    trajectories = [
        bake.Trajectory(t.teacher_ids, t.student_ids, t.response_ids[: 2 + 4 * i])
        for i, t in enumerate(trajectories[:6])
    ]
    assert len({len(t.response_ids) for t in trajectories}) == 6
    updates = []
    for mbs, ga in ((len(trajectories), 1), (1, len(trajectories))):
        m = fresh()
        cfg = config(
            epochs=1,
            micro_batch_size=mbs,
            gradient_accumulation_steps=ga,
            optimizer={"learning_rate": 0.1, "type": "sgd"},
            scheduler={"name": "constant"},
        )
        b = bake.Baker(m.model, m.tokenizer, cfg, "tiny")
        result = b.train(trajectories, tmp_path / f"mbs{mbs}")
        assert result.steps == 1
        updates.append({n: p.detach().clone() for n, p in b.model.named_parameters() if "lora_B" in n})
    assert updates[0].keys() == updates[1].keys() and updates[0]
    for name, value in updates[0].items():
        assert torch.allclose(value, updates[1][name], rtol=1e-4, atol=1e-7), name


def test_adapter_config_is_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """Here and in a process with another hash seed (set iteration order): the same adapter_config.json."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, pathlib
        from gitbake.contract.config import Bake
        from gitbake.engine import bake, models
        m = models.load_base("tiny")
        t = [bake.Trajectory([257, 260, 72, 105, 258, 261], [260, 72, 105, 258, 261], [65, 66, 258])]
        cfg = Bake.model_validate({"name": "t", "datasets": [{"target": "x"}], "epochs": 1})
        bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(t, pathlib.Path(sys.argv[1]))
        """
    )
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # not this process's
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "there")],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    m = models.load_base("tiny")
    t = [bake.Trajectory([257, 260, 72, 105, 258, 261], [260, 72, 105, 258, 261], [65, 66, 258])]
    cfg = Bake.model_validate({"name": "t", "datasets": [{"target": "x"}], "epochs": 1})
    bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(t, tmp_path / "here")
    here = (tmp_path / "here" / "adapter_config.json").read_bytes()
    assert here == (tmp_path / "there" / "adapter_config.json").read_bytes()


def test_teacher_runs_without_dropout(
    trajectories: list[bake.Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = fresh()
    b = bake.Baker(m.model, m.tokenizer, config(epochs=1), "tiny")
    seen = []
    real = bake.response_hidden

    def spy(decoder: Any, batch: Any, side: str, *a: Any) -> Any:
        if side == "teacher":
            seen.append(decoder.training)
        return real(decoder, batch, side, *a)

    monkeypatch.setattr(bake, "response_hidden", spy)
    b.train(trajectories, tmp_path / "a")
    assert seen and not any(seen)


def test_tiled_output_layer_is_the_plain_one() -> None:
    torch.manual_seed(1)
    h, w, b = torch.randn(9, 16), torch.randn(70, 16), torch.randn(70)
    assert torch.allclose(kl.head_logits(h, w, b, tile=8), torch.nn.functional.linear(h, w, b), atol=1e-5)
    assert torch.allclose(kl.head_logits(h, w, None, tile=8), h @ w.T, atol=1e-5)
    for tile in (8, 1024):  # into a caller's buffer, tiled or as one product
        buf = torch.full((9, 70), float("nan"))
        assert kl.head_logits(h, w, b, tile=tile, out=buf) is buf
        assert torch.allclose(buf, torch.nn.functional.linear(h, w, b), atol=1e-5)


def test_closed_form_kl_gradient_is_autograd_s() -> None:
    torch.manual_seed(2)
    t_lp = torch.log_softmax(torch.randn(6, 30), -1)
    s_logits = torch.randn(6, 30, requires_grad=True)
    ref = kl.divergence(t_lp, torch.log_softmax(s_logits, -1), 0.0).sum()
    ref.backward()
    value, grad = kl.forward_kl_and_grad_(
        t_lp.clone() + 3.0, s_logits.detach().clone(), torch.empty(6, 30), torch.empty(6, 30)
    )  # logits: any shift
    assert torch.allclose(value.sum(), ref, atol=1e-5) and torch.allclose(grad, s_logits.grad, atol=1e-5)


def test_teacher_prefix_cache_gives_the_states_of_whole_sequences(trajectories: list[bake.Trajectory]) -> None:
    """The teacher's shared prompt runs once; the rest of each sequence attends to its cached keys."""
    m = fresh()
    decoder = m.model.get_decoder()
    with torch.no_grad():
        prefix = bake.Prefix.of(decoder, trajectories, DEVICE)
        assert prefix is not None and prefix.length >= bake.PREFIX_MIN  # the system prompt is shared
        whole = bake.response_hidden(decoder, trajectories[:5], "teacher", 256, DEVICE)
        cached = bake.response_hidden(decoder, trajectories[:5], "teacher", 256, DEVICE, prefix)
        again = bake.response_hidden(
            decoder, trajectories[:2], "teacher", 256, DEVICE, prefix
        )  # the cache is not consumed
    assert torch.allclose(whole, cached, atol=1e-4) and torch.allclose(whole[: again.shape[0]], again, atol=1e-4)
    # trajectories that share nothing long enough get no cache
    odd = [bake.Trajectory([257] + t.teacher_ids[1:], t.student_ids, t.response_ids) for t in trajectories[:1]]
    assert bake.Prefix.of(decoder, odd + [bake.Trajectory([300] * 40, [1], [2])], DEVICE) is None


def shared_student_prompt(trajectories: list[bake.Trajectory]) -> list[bake.Trajectory]:
    """The trajectories with a chat template's default system prompt before every student prompt (as
    SmolLM2's and Qwen's templates put one when there is none): 24 tokens every student sequence shares."""
    header = trajectories[0].teacher_ids[:24]
    return [bake.Trajectory(t.teacher_ids, header + t.student_ids, t.response_ids) for t in trajectories]


def test_a_packed_row_has_the_states_and_gradients_of_the_padded_batch(trajectories: list[bake.Trajectory]) -> None:
    """A micro-batch as one row (the shared prompt once, each rest after it under a block mask, at its own
    positions): the states and every LoRA gradient are those of the padded batch. In float64 (the rotary
    tables stay fp32: about 1e-7 apart), where a missing or extra term (a rest that saw another, a position
    off by the prefix, a gradient that did not reach the prefix) would be off by a large fraction."""
    from peft import LoraConfig, get_peft_model

    data = shared_student_prompt(trajectories)[1:6]  # questions of different lengths, one shared prefix
    m = fresh()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(m.model.double(), lora)
    decoder = pm.get_base_model().get_decoder()
    params = [p for p in pm.parameters() if p.requires_grad]
    pack = bake.Packed.of(data)
    whole = sum(len(t.student_ids) + len(t.response_ids) - 1 for t in data)
    assert pack.segments[:24] == [-1] * 24 and len(pack.ids) <= whole - 24 * (len(data) - 1)
    runs = []
    with torch.enable_grad():
        for packed in (False, True):
            pm.zero_grad()
            if packed:
                hidden = bake.packed_hidden(decoder, data, DEVICE)
                assert hidden is not None
            else:
                hidden = bake.response_hidden(decoder, data, "student", 256, DEVICE)
            (hidden * torch.linspace(-1, 1, hidden.shape[1], dtype=hidden.dtype, device=DEVICE)).pow(2).sum().backward()
            runs.append((hidden.detach(), [p.grad.clone() for p in params]))
    (padded, g_padded), (packed_h, g_packed) = runs
    assert packed_h.shape == padded.shape and torch.allclose(packed_h, padded, rtol=1e-6, atol=1e-9)
    for a, b in zip(g_padded, g_packed):
        assert a.abs().max() > 0 and ((a - b).norm() / a.norm()).item() < 1e-5


def test_packing_is_checked_and_refused_where_the_decoder_ignores_the_mask(
    trajectories: list[bake.Trajectory],
) -> None:
    """Packing relies on the decoder honouring a custom 4D mask and position ids. The bake checks it on a
    micro-batch: a decoder that drops them (here, one that builds its own causal mask) gets padded batches."""
    decoder = fresh().model.get_decoder()
    data = shared_student_prompt(trajectories)[:4]
    assert bake.packing_is_exact(decoder, data, 256, DEVICE)

    class OwnMask(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs: Any) -> Any:
            if kwargs.get("attention_mask") is not None and kwargs["attention_mask"].dim() == 4:
                kwargs["attention_mask"] = None  # a model that makes its own causal mask
            return self.inner(**kwargs)

    assert not bake.packing_is_exact(OwnMask(decoder), data, 256, DEVICE)


def test_a_bake_trains_on_packed_rows_with_the_padded_curve(
    trajectories: list[bake.Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training loop runs its micro-batches packed, with the loss curve of padded batches; a micro-batch
    longer than GITBAKE_PACK_MAX, or GITBAKE_PACKING=0, runs padded."""
    data = shared_student_prompt(trajectories)
    calls: list[int] = []
    real = bake.packed_hidden

    def counting(decoder: Any, batch: Any, device: Any, pad_id: int = 0, *rest: Any) -> Any:
        hidden = real(decoder, batch, device, pad_id, *rest)
        if hidden is not None:  # a packed row ran
            calls.append(len(batch))
        return hidden

    monkeypatch.setattr(bake, "packed_hidden", counting)
    curves = []
    for packing, limit in ((True, 1024), (False, 1024), (True, 8)):
        monkeypatch.setattr(bake, "PACKING", packing)
        monkeypatch.setattr(bake, "PACK_MAX", limit)
        calls.clear()
        m = fresh()
        result = bake.Baker(m.model, m.tokenizer, config(epochs=1), "tiny").train(data, tmp_path / f"{packing}{limit}")
        curves.append([r["loss"] for r in result.metrics])
        # one check of the first micro-batch, then each of the epoch's micro-batches of 4; none over the limit
        assert len(calls) == ((1 + len(result.metrics)) if packing and limit > 8 else 0)
        assert result.packed == (packing and limit > 8)
    assert curves[0] == pytest.approx(curves[1], rel=1e-3) and curves[2] == pytest.approx(curves[1], rel=1e-6)


def test_teacher_states_once_are_the_per_batch_ones(trajectories: list[bake.Trajectory]) -> None:
    """The teacher's states computed once for the bake (sorted by length, prefix-cached, in batches of 8)
    are those the per-batch path computes for any batch; over the budget there are none (per batch then)."""
    m = fresh()
    decoder = m.model.get_decoder()
    data = [
        bake.Trajectory(t.teacher_ids, t.student_ids, t.response_ids, dataset=i % 2) for i, t in enumerate(trajectories)
    ]
    with torch.no_grad():
        states = bake.teacher_states(decoder, data, 256, DEVICE, 8)
        batch = data[3:7]
        direct = bake.response_hidden(decoder, batch, "teacher", 256, DEVICE)
    assert states is not None and set(states) == {id(t) for t in data}
    # the states are kept in host memory, whatever the device
    assert torch.allclose(torch.cat([states[id(t)] for t in batch]), direct.cpu(), atol=1e-4)
    assert bake.teacher_states(decoder, data, 256, DEVICE, 8, budget_mb=0.0) is None


def test_the_eval_runs_packed_and_prefix_cached_with_the_padded_figures(
    trajectories: list[bake.Trajectory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bake's eval runs its teacher pass once, prefix-cached (teacher_states), and its parent and baked
    passes as packed rows, with the figures of the plain padded passes; packing is checked when the caller
    does not say, and a teacher over the host budget runs batch by batch."""
    from peft import LoraConfig, get_peft_model

    from gitbake.engine import eval as ev

    data = shared_student_prompt(trajectories)
    contexts = [(t.teacher_ids, t.student_ids) for t in data[::2]]
    given = {k: [t.response_ids for t in data[2 * k : 2 * k + 2]] for k in range(len(contexts))}
    m = fresh()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(m.model, lora)
    packed_rows: list[int] = []
    real = ev.packed_hidden
    monkeypatch.setattr(ev, "packed_hidden", lambda d, b, *a: packed_rows.append(len(b)) or real(d, b, *a))
    real_states = ev.teacher_states
    figures = {}
    for packed, budget in ((False, bake.TEACHER_CACHE_MB), (True, 0.0), (None, bake.TEACHER_CACHE_MB)):
        monkeypatch.setattr(ev, "teacher_states", lambda *a, budget=budget, **k: real_states(*a, budget, **k))
        packed_rows.clear()
        r = ev.evaluate(pm, m.tokenizer, contexts, 2, 64, seed=1, given=given, packed=packed)
        figures[packed] = r
        # 12 trajectories: a batch of 8 and one of 4, each run packed for the parent and the baked model
        assert packed_rows == ([] if packed is False else [8, 8, 4, 4])
    assert figures[False].trajectories == len(data) == 12 and figures[False].d_after > 0
    for other in (figures[True], figures[None]):
        for name in ("d_before", "d_after", "gap_closed", "first_token_kl_after", "per_trajectory_kl_before"):
            assert getattr(other, name) == pytest.approx(getattr(figures[False], name), rel=1e-4)
        assert other.curve_after == pytest.approx(figures[False].curve_after, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("prepack", [False, True])  # the output layer's weight as it is, or in oneDNN's layout
@pytest.mark.parametrize("dx_rows", [256, 24])  # the gradient's product once, or in groups that split chunks
def test_bf16_fused_loss_keeps_the_gap_between_student_and_teacher(
    monkeypatch: pytest.MonkeyPatch, dx_rows: int, prepack: bool
) -> None:
    """A bf16 output layer on the CPU: the loss and gradient are those of fp32 arithmetic on the same bf16
    values, even when the student is close to the teacher (rounding both sides' logits to bf16 would be
    8% off here), and rows beyond a multiple of 16 (padded with zero rows) add nothing. The gradient's
    product runs on groups of up to DX_ROWS rows, however they fall across the loss's chunks. The same
    with the layer's weight prepacked, as a bake multiplies it."""
    monkeypatch.setattr(kl, "DX_ROWS", dx_rows)
    calls = []
    real = kl.pair_logits
    monkeypatch.setattr(kl, "pair_logits", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    torch.manual_seed(3)
    head = torch.nn.Linear(64, 3000).bfloat16().requires_grad_(False)
    head.weight.mul_(8)
    ref_head = torch.nn.Linear(64, 3000).requires_grad_(False)
    ref_head.weight.copy_(head.weight.float())
    ref_head.bias.copy_(head.bias.float())
    t = torch.randn(37, 64).bfloat16()
    packed = kl.head_prepacked(head) if prepack else None
    assert (packed is not None) == prepack
    used: list[str] = []  # which of the prepacked weight's products ran
    fwd, bwd = Prepacked.forward, Prepacked.backward
    monkeypatch.setattr(Prepacked, "forward", lambda self, x: used.append("forward") or fwd(self, x))
    monkeypatch.setattr(Prepacked, "backward", lambda self, x: used.append("backward") or bwd(self, x))
    for scale in (0.5, 0.02):
        s = (t.float() + scale * torch.randn(37, 64)).bfloat16().requires_grad_(True)
        s_ref = s.detach().float().requires_grad_(True)
        with torch.enable_grad():  # loading a model turns it off for the process
            ours = kl.fused_loss(head, s, t, chunk=16, packed=packed)
            ours.backward()
            ref = kl.chunked_loss(ref_head, s_ref, t.float(), chunk=16)
            ref.backward()
        assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 0.005 * ref.item()
        assert s.grad is not None and s.grad.dtype == torch.bfloat16 and s_ref.grad is not None
        assert torch.nn.functional.cosine_similarity(s.grad.float().flatten(), s_ref.grad.flatten(), dim=0) > 0.999
        # eval's per-position KL the same way
        per = kl.per_position_kl(head, t, s.detach(), chunk=16)[0]
        per_ref = kl.per_position_kl(ref_head, t.float(), s_ref.detach())[0]
        assert per.dtype == torch.float32 and torch.allclose(per, per_ref, rtol=0.05, atol=1e-6)
        assert abs(per.mean() - per_ref.mean()) < 0.005 * per_ref.mean()
    assert calls and all(n % 16 == 0 for n in calls[:3])  # bf16 products, on rows padded to 16 (37 -> 48)
    assert set(used) == ({"forward", "backward"} if prepack else set())


@pytest.mark.parametrize("vocab", [300, 3000])  # one product, and vocabulary tiles
@pytest.mark.parametrize("variant", ["kl-t2", "jsd", "topk", "checkpointed"])
def test_other_divergences_through_a_bf16_head_are_fp32_exact(variant: str, vocab: int) -> None:
    """Divergences without pair_logits (temperature, GKD's JSD, top-k, the recomputed chunked path) use fp32
    products of the bf16 layer's values, with its bias: the same numbers as an fp32 copy of the layer."""
    torch.manual_seed(4)
    head = torch.nn.Linear(32, vocab).bfloat16().requires_grad_(False)
    ref_head = torch.nn.Linear(32, vocab).requires_grad_(False)
    ref_head.weight.copy_(head.weight.float())
    ref_head.bias.copy_(head.bias.float())
    t = torch.randn(21, 32).bfloat16()
    s = (t.float() + 0.05 * torch.randn(21, 32)).bfloat16().requires_grad_(True)
    s_ref = s.detach().float().requires_grad_(True)
    kwargs: dict[str, Any] = {
        "beta": 0.5 if variant == "jsd" else 0.0,
        "temperature": 2.0 if variant == "kl-t2" else 1.0,
        "chunk": 8,
    }
    with torch.enable_grad():
        if variant == "topk":
            ours = kl.fused_loss(head, s, None, teacher_topk=kl.topk_of(head, t, 5), **kwargs)
            ref = kl.fused_loss(ref_head, s_ref, None, teacher_topk=kl.topk_of(ref_head, t.float(), 5), **kwargs)
        elif variant == "checkpointed":
            ours = kl.chunked_loss(head, s, t, **kwargs)
            ref = kl.chunked_loss(ref_head, s_ref, t.float(), **kwargs)
        else:
            ours = kl.fused_loss(head, s, t, **kwargs)
            ref = kl.fused_loss(ref_head, s_ref, t.float(), **kwargs)
        ours.backward()
        ref.backward()
    assert s.grad is not None and s_ref.grad is not None
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ref.item()) + 1e-6
    assert torch.allclose(s.grad.float(), s_ref.grad, rtol=0.01, atol=1e-3 * float(s_ref.grad.abs().max()))


def test_a_bf16_bake_pads_widths_to_few_shapes_and_keeps_fp32_adapters(
    trajectories: list[bake.Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    widths: dict[str, list[int]] = {"bf16": [], "fp32": []}
    for dtype in widths:  # widths are rounded for oneDNN, the CPU's bf16 products: on the CPU
        m = models.load_base("tiny", device="cpu", dtype=dtype)
        decoder = m.model.get_decoder()
        decoder.register_forward_pre_hook(
            lambda mod, args, kw, d=dtype: widths[d].append(kw["input_ids"].shape[1]), with_kwargs=True
        )
        batch = trajectories[:3]
        with torch.no_grad():  # widths rounded up to a multiple of 16: the real positions' states do not change
            together = bake.response_hidden(decoder, batch, "teacher", 256, "cpu")
            alone = torch.cat([bake.response_hidden(decoder, [t], "teacher", 256, "cpu") for t in batch])
        assert torch.allclose(together.float(), alone.float(), atol=0.05, rtol=0.02)
    assert all(w % 16 == 0 for w in widths["bf16"]) and not all(w % 16 == 0 for w in widths["fp32"])
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    m = models.load_base("tiny", device="cpu", dtype="bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == models.ONEDNN_CACHE  # capped before its first product
    packed_widths: list[int] = []
    m.model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kw: (
            packed_widths.append(kw["input_ids"].shape[1]) if kw["attention_mask"].dim() == 4 else None
        ),
        with_kwargs=True,
    )
    res = bake.Baker(m.model, m.tokenizer, config(epochs=2), "tiny").train(trajectories, tmp_path / "a")
    losses = [row["loss"] for row in res.metrics]
    assert losses[-1] < losses[0]
    # bf16's rounding passes the packing check, and packed rows are rounded up to multiples of 16 too
    assert res.packed and packed_widths and all(w % 16 == 0 for w in packed_widths)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert weights and all(v.dtype == torch.float32 for v in weights.values())  # LoRA weights stay fp32


def test_closed_form_kl_value_does_not_cancel_two_large_sums() -> None:
    """The loss of a chunk is one sum over the log-ratio: as the difference of cross-entropy and entropy
    (each about 1,300 nats here, the KL 0.63) fp32 kept 0.15% error; now it is float64's value to 1e-4."""
    torch.manual_seed(0)
    t = torch.randn(128, 32000) * 3
    s = t + 0.1 * torch.randn(128, 32000)
    ref = kl.divergence(torch.log_softmax(t.double(), -1), torch.log_softmax(s.double(), -1), 0.0).sum()
    value, _ = kl.forward_kl_and_grad_(t.clone(), s.clone(), torch.empty(128, 32000), torch.empty(128, 32000))
    assert abs(value.item() - ref.item()) < 1e-4 * ref.item()


class _Payload:
    """A pickle that runs code when loaded: what someone who can write a shared store could plant."""

    def __init__(self, witness: Path) -> None:
        self.witness = witness

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.witness),))


def test_resume_never_unpickles_a_planted_checkpoint(trajectories: list[bake.Trajectory], tmp_path: Path) -> None:
    import pickle

    cfg = config(epochs=1, micro_batch_size=2, checkpoint=[{"save_every_n_steps": 2, "auto_resume": True}])
    scratch = tmp_path / "scratch"
    (scratch / "adapter").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({}, str(scratch / "adapter" / "adapter_model.safetensors"))  # loads fine: the pickle is reached
    witness = tmp_path / "pwned"
    (scratch / "trainer.pt").write_bytes(pickle.dumps(_Payload(witness)))
    m = fresh()
    res = bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(trajectories, tmp_path / "out", scratch=scratch)
    assert not witness.exists() and res.resumed_from is None and res.steps > 0
    # a damaged or foreign state in the new format is a fresh start too, with a note, not a crash
    (scratch / "adapter").mkdir(parents=True, exist_ok=True)
    (scratch / trainstate.STATE).write_text('{"format": 1, "state": {"__tensor__": "nope"}}')
    (scratch / trainstate.TENSORS).write_bytes(b"\x00garbage")
    m2 = fresh()
    res2 = bake.Baker(m2.model, m2.tokenizer, cfg, "tiny").train(trajectories, tmp_path / "out2", scratch=scratch)
    assert res2.resumed_from is None and any("could not be resumed" in n for n in res2.notes)


@pytest.mark.parametrize(
    "state",
    [
        '{"rng": 1}',
        '{"optimizer": {}, "scheduler": {}, "rng": {"__tensor__": "t0"}, "state": {"step": 1}}',
        '{"optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "rng": {"__tensor__": "t0"},'
        ' "state": {"step": 2, "epoch": 0, "batch": 2}}',
    ],
    ids=["no optimizer", "no counters", "optimizer of another model"],
)
def test_a_foreign_checkpoint_is_a_fresh_start_that_changes_nothing(
    state: str, trajectories: list[bake.Trajectory], tmp_path: Path
) -> None:
    """A well-formed but foreign scratch checkpoint used to crash the bake after the adapter's weights were
    overwritten; now the bake starts over, from exactly the state a bake without a checkpoint starts from."""
    from safetensors.torch import save_file

    cfg = config(epochs=1, micro_batch_size=2, checkpoint=[{"save_every_n_steps": 100, "auto_resume": True}])
    scratch = tmp_path / "scratch"
    (scratch / "adapter").mkdir(parents=True)
    save_file({}, str(scratch / "adapter" / "adapter_model.safetensors"))
    save_file({"t0": torch.get_rng_state()}, str(scratch / trainstate.TENSORS))
    (scratch / trainstate.STATE).write_text('{"format": 1, "state": ' + state + "}")
    m = fresh()
    planted = bake.Baker(m.model, m.tokenizer, cfg, "tiny").train(trajectories, tmp_path / "a", scratch=scratch)
    assert planted.resumed_from is None and any("could not be resumed" in n for n in planted.notes)
    m2 = fresh()
    clean = bake.Baker(m2.model, m2.tokenizer, cfg, "tiny").train(
        trajectories, tmp_path / "b", scratch=tmp_path / "none"
    )
    assert [r["loss"] for r in planted.metrics] == pytest.approx([r["loss"] for r in clean.metrics], rel=1e-5)


def test_train_state_round_trips_without_pickle(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "state": {"step": 3},
        "metrics": [{"loss": 1.5}],
    }
    trainstate.save(state, tmp_path)
    back = trainstate.load(tmp_path)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9) and back["state"] == {"step": 3}
    assert set(back["optimizer"]["state"]) == {0, 1}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"]) and back["metrics"] == [{"loss": 1.5}]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
