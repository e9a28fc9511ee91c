"""gitbake.engine.sampling: OpenAI's sampling parameters through transformers' logits processors, the same
in chat/serve (token by token) and in rollouts (`model.generate`)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
import torch

from gitbake.engine import infer
from gitbake.engine.models import load_base
from gitbake.engine.rollout import SamplingSettings, generate_batches
from gitbake.engine.sampling import OpenAIPenalties, Sampling, choose, logprob_of
from gitbake.engine.templating import render


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_base("tiny")


def test_openai_penalties_count_only_generated_tokens() -> None:
    ids = torch.tensor([[5, 5, 7, 3, 3, 3]])  # a prompt of 2 (5, 5), then 7 once and 3 three times
    scores = torch.zeros((1, 10))
    out = OpenAIPenalties(presence=0.5, frequency=0.25, prompt_length=2)(ids, scores)  # type: ignore[arg-type]
    assert out[0, 5] == 0  # in the prompt only: not penalised
    assert out[0, 7] == pytest.approx(-0.75) and out[0, 3] == pytest.approx(-(0.5 + 3 * 0.25))
    assert out[0, 0] == 0


def test_processors_are_transformers_and_change_the_choice(tiny: Any) -> None:
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TopKLogitsWarper

    s = Sampling(temperature=0.8, top_k=5, repetition_penalty=1.3, presence_penalty=1.0)
    procs = s.processors(prompt_length=3)
    assert isinstance(procs, LogitsProcessorList)
    assert any(isinstance(p, TopKLogitsWarper) for p in procs)
    assert any(isinstance(p, RepetitionPenaltyLogitsProcessor) for p in procs)
    logits = torch.tensor([0.0, 5.0, 4.9, 1.0])
    ids = torch.tensor([[0, 0, 0, 1]])  # token 1 was generated
    greedy = Sampling(temperature=0)
    assert choose(greedy, greedy.processors(3), ids, logits, None) == 1
    penalised = Sampling(temperature=0, presence_penalty=1.0)
    assert choose(penalised, penalised.processors(3), ids, logits, None) == 2  # 5.0 - 1 < 4.9
    gen = torch.Generator().manual_seed(0)
    top1 = Sampling(temperature=2.0, top_k=1)
    assert {choose(top1, top1.processors(3), ids, logits, gen) for _ in range(20)} == {1}
    lp = logprob_of(logits, 2, top=2)
    assert lp.token == 2 and [t for t, _ in lp.top] == [1, 2]
    assert lp.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[2]))


def test_chat_stream_honours_penalties_stop_and_logprobs(tiny: Any) -> None:
    prompt = render(tiny.tokenizer, [], None, "Tell me a story.")
    plain = "".join(infer.stream(tiny.model, tiny.tokenizer, prompt, infer.GREEDY, 24))
    tough = Sampling(temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    penalised = "".join(infer.stream(tiny.model, tiny.tokenizer, prompt, tough, 24))
    assert plain != penalised  # tiny repeats itself greedily; the penalties stop it
    assert len(set(penalised)) > len(set(plain))
    if len(plain) > 6:
        cut = Sampling(temperature=0, stop=(plain[3:6],))
        stopped = "".join(infer.stream(tiny.model, tiny.tokenizer, prompt, cut, 24))
        assert stopped == plain[: plain.index(plain[3:6])]
    req = infer.Request(prompt, Sampling(temperature=0, logprobs=True, top_logprobs=3), 8)
    b = infer.Batcher(tiny.model, tiny.tokenizer, max_batch=2)
    try:
        text, info = b.submit(req).result(timeout=120)
    finally:
        b.close()
    lps = info["logprobs"]
    assert 0 < len(lps) <= 8 and all(lp.logprob <= 0 and len(lp.top) == 3 for lp in lps)
    assert all(lp.top[0][1] >= lp.logprob for lp in lps)  # greedy: the chosen token is the likeliest
    assert tiny.tokenizer.decode([lp.token for lp in lps]) == text


def test_rollouts_take_the_same_settings(tiny: Any) -> None:
    prompts = [render(tiny.tokenizer, [], None, q) for q in ("Tell me a story.", "What is tea?")]

    def sample(**extra: Any) -> list[Any]:
        return generate_batches(
            tiny.model, tiny.tokenizer, prompts, SamplingSettings(temperature=0, max_tokens=16, extra_kwargs=extra)
        )

    plain = sample()
    penalised = sample(frequency_penalty=2.0, presence_penalty=2.0)
    assert [r.ids for r in plain] != [r.ids for r in penalised]
    with_lp = sample(logprobs=True, top_logprobs=2)
    assert [r.ids for r in with_lp] == [r.ids for r in plain]  # asking for logprobs changes no answer
    for r in with_lp:
        assert r.logprobs is not None and len(r.logprobs) == len(r.ids)
        assert all(lp.token == t and len(lp.top) == 2 for lp, t in zip(r.logprobs, r.ids))
    text = tiny.tokenizer.decode(plain[0].ids, skip_special_tokens=True)
    if len(text) > 6:
        stopped = sample(stop=[text[3:6]])[0]
        shown = tiny.tokenizer.decode(stopped.ids, skip_special_tokens=True)
        assert text[3:6] not in shown and not stopped.finished and text.startswith(shown)


def test_rollout_records_keep_logprobs_when_asked(tiny: Any) -> None:
    from gitbake.engine.rollout import make_rollouts

    stim = [{"id": 0, "question": "What is tea?", "split": "train"}]
    teacher = {"messages": [{"role": "system", "content": "Speak like Yoda."}]}
    settings = SamplingSettings(temperature=1.0, max_tokens=8, extra_kwargs={"logprobs": True, "top_logprobs": 1})
    (rec,) = make_rollouts(tiny.model, tiny.tokenizer, stim, teacher, {"messages": []}, settings)
    assert len(rec["logprobs"]) == len(rec["response_ids"])
    assert [t for t, _lp, _top in rec["logprobs"]] == rec["response_ids"]
    (plain,) = make_rollouts(
        tiny.model, tiny.tokenizer, stim, teacher, {"messages": []}, SamplingSettings(max_tokens=8)
    )
    assert "logprobs" not in plain


def test_answers_are_sampled_in_stages_and_the_finished_leave(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers go on in stages of growing length; one that ended leaves its batch, so a long answer no longer
    keeps the others decoding. Greedy answers, their logprobs and the penalties are those of one long stage."""
    from gitbake.engine import rollout

    prompts = [render(tiny.tokenizer, [], None, q) for q in ("Tell me a story.", "What is tea?", "Why?", "Hi")]
    settings = SamplingSettings(temperature=0, max_tokens=12, extra_kwargs={"frequency_penalty": 0.5})
    first = generate_batches(tiny.model, tiny.tokenizer, prompts, settings)  # 12 <= FIRST_STAGE: one stage
    assert all(len(r.ids) == 12 and not r.finished for r in first)  # tiny never ends by itself here
    stop = first[0].ids[1]  # make prompt 0's second token end the answer: it finishes in the first stage
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", stop)

    def ended(ids: list[int]) -> list[int]:
        return ids[: ids.index(stop) + 1] if stop in ids else ids

    one_stage = generate_batches(tiny.model, tiny.tokenizer, prompts, settings)
    assert [r.ids for r in one_stage] == [ended(r.ids) for r in first]
    calls: list[tuple[int, int]] = []
    generate = tiny.model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["input_ids"].shape[0], kwargs["max_new_tokens"]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "generate", counted)
    monkeypatch.setattr(rollout, "FIRST_STAGE", 4)
    with_lp = SamplingSettings(temperature=0, max_tokens=12, extra_kwargs={"frequency_penalty": 0.5, "logprobs": True})
    staged = generate_batches(tiny.model, tiny.tokenizer, prompts, with_lp)
    assert [r.ids for r in staged] == [r.ids for r in one_stage]
    assert [r.finished for r in staged] == [stop in r.ids for r in first]
    for r in staged:
        assert r.logprobs is not None and [lp.token for lp in r.logprobs] == r.ids
    # stages of 4, 8 and 12 tokens in all; each takes only the answers that went on past the one before
    expected = [(len(prompts), 4)] + [(sum(len(r.ids) > done for r in staged), 4) for done in (4, 8)]
    assert calls == [c for c in expected if c[0]]
    assert calls[1][0] < len(prompts)  # prompt 0's answer ended in the first stage and left


def test_plain_settings_are_those_that_sample_the_model_as_it_is() -> None:
    from gitbake.engine.rollout import plain

    assert plain(SamplingSettings())
    assert plain(SamplingSettings(extra_kwargs={"seed": 3, "logprobs": True, "top_logprobs": 2, "top_p": 1.0}))
    assert plain(SamplingSettings(extra_kwargs={"stop": [], "repetition_penalty": 1.0, "min_p": 0.0}))
    for changed in ({"top_p": 0.9}, {"top_k": 50}, {"min_p": 0.05}, {"stop": ["\n"]}, {"presence_penalty": 0.5}):
        assert not plain(SamplingSettings(extra_kwargs=changed)), changed
    assert not plain(SamplingSettings(temperature=0.7))
