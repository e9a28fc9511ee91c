"""engine/templating.py: prompts to token ids, and models without a chat template (a base model's GGUF)."""

from __future__ import annotations

import types
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")

from gitbake.engine import infer, templating
from gitbake.engine.models import load_base
from gitbake.engine.rollout import SamplingSettings, generate_batches
from gitbake.engine.sampling import Sampling
from gitbake.engine.templating import FALLBACK_TURN_STOP, adds_bos, render, with_turn_stops
from gitbake.engine.tiny import build_tokenizer
from gitbake.use.chat import Session


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_base("tiny")


def _untemplated(bos: bool) -> Any:
    """tiny's tokenizer without its chat template; `bos`: it puts BOS before every text, as Gemma's and
    Llama's do."""
    tok = build_tokenizer()
    tok.chat_template = None
    if bos:
        from tokenizers import processors

        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
        )
    return tok


def test_the_plain_layout_starts_with_the_bos_the_tokenizer_puts_before_a_text() -> None:
    tok = _untemplated(bos=True)
    assert adds_bos(tok)
    ids = render(tok, [{"role": "system", "content": "Be brief."}], None, "Hi?")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[1:]) == "system: Be brief.\nuser: Hi?\nassistant:"
    plain = _untemplated(bos=False)  # a tokenizer that adds nothing gets nothing added
    assert not adds_bos(plain)
    assert render(plain, [], None, "Hi?") == plain("user: Hi?\nassistant:", add_special_tokens=False)["input_ids"]


def test_a_chat_template_places_every_special_token_itself() -> None:
    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = _untemplated(bos=True).backend_tokenizer.post_processor
    ids = render(tok, [], None, "Hi?")
    assert (
        ids
        == tok(
            tok.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
    )


def test_turn_stops_are_added_only_without_a_chat_template() -> None:
    sampling = Sampling(temperature=0, stop=("END",))
    assert with_turn_stops(build_tokenizer(), sampling) is sampling
    stopped = with_turn_stops(_untemplated(bos=False), sampling)
    assert stopped.stop == ("END", FALLBACK_TURN_STOP) and stopped.temperature == 0
    assert with_turn_stops(_untemplated(bos=False), stopped) == stopped  # once


def test_rollout_chat_and_eval_end_an_untemplated_answer_where_the_next_turn_starts(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = _untemplated(bos=False)
    prompt = render(tok, [], None, "What is tea?")
    settings = SamplingSettings(temperature=0, max_tokens=16)
    full = tok.decode(generate_batches(tiny.model, tok, [prompt], settings)[0].ids, skip_special_tokens=True)
    streamed = "".join(infer.stream(tiny.model, tok, prompt, Sampling(temperature=0), 16))
    assert streamed == full
    # tiny's noise never writes "\nuser:": let three of its own characters (whole ones, after the first)
    # stand for the next turn's start
    turn = next(full[i : i + 3] for i in range(1, len(full) - 2) if "\ufffd" not in full[i : i + 3])
    monkeypatch.setattr(templating, "FALLBACK_TURN_STOP", turn)
    cut = generate_batches(tiny.model, tok, [prompt], settings)[0]
    shown = tok.decode(cut.ids, skip_special_tokens=True)
    assert shown == full[: full.index(turn)] and not cut.finished  # none of the turn's tokens is kept
    session = Session(repo=None, version=None, model=None, sampling=Sampling(temperature=0), max_tokens=16)  # type: ignore[arg-type]
    said = session.answer(
        types.SimpleNamespace(model=tiny.model, tokenizer=tok), [{"role": "user", "content": "What is tea?"}], None
    )
    assert said == full[: full.index(turn)]
    assert infer.complete(tiny.model, tok, [prompt], 16) == [said]  # eval's behaviour check


def test_a_row_a_stop_ended_is_cut_there_when_its_padding_is_the_eos(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tokenizer without a pad token pads with its EOS: a row that a stop string ended, padded while the
    other rows go on, must not be read as an answer that ended with that EOS, stop string and all."""
    tok = _untemplated(bos=False)
    tok.pad_token = tok.eos_token
    prompts = [render(tok, [], None, q) for q in ("What is tea?", "Tell me a story.")]
    settings = SamplingSettings(temperature=0, max_tokens=16)
    full = [tok.decode(r.ids, skip_special_tokens=True) for r in generate_batches(tiny.model, tok, prompts, settings)]
    turn = next(full[0][i : i + 3] for i in range(1, len(full[0]) - 2) if "\ufffd" not in full[0][i : i + 3])
    assert turn not in full[1]  # only the first row meets it
    monkeypatch.setattr(templating, "FALLBACK_TURN_STOP", turn)
    first, second = generate_batches(tiny.model, tok, prompts, settings)
    assert tok.decode(first.ids, skip_special_tokens=True) == full[0][: full[0].index(turn)] and not first.finished
    assert tok.eos_token_id not in first.ids
    assert tok.decode(second.ids, skip_special_tokens=True) == full[1]
