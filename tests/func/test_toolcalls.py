"""Tool calls read back from an answer with the model's response template (transformers' parser), into
OpenAI's shapes: whole, streamed piece by piece, typed by the tool's schema, and a pass-through when the
answer cannot be parsed or the model has no template."""

from __future__ import annotations

import json
from typing import Any

import pytest
from transformers import AutoTokenizer

from gitbake.engine.tiny import ensure_tiny
from gitbake.use.toolcalls import ToolCallReader

# Qwen's and Hermes' format, for tiny's chat template (`<|assistant|>` opens the answer)
HERMES = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "thinking": {"open": "<think>", "close": "</think>", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close": "<|eos|>", "content": "text"},
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}
ANSWER = (
    "<think>Paris, then.</think>Let me check."
    '<tool_call>{"name": "weather", "arguments": {"city": "Paris", "days": "3"}}</tool_call>'
    '<tool_call>{"name": "weather", "arguments": {"city": "Lyon", "days": 1}}</tool_call>'
)


@pytest.fixture
def tok() -> Any:
    path, _ = ensure_tiny()
    t = AutoTokenizer.from_pretrained(path)
    t.response_template = HERMES
    return t


def read(tok: Any, *pieces: str) -> tuple[ToolCallReader, list[dict[str, Any]]]:
    """A reader fed `pieces` one after the other and finished, and the deltas it gave out."""
    reader = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert reader is not None
    return reader, [d for p in pieces for d in reader.feed(p)] + reader.finish()


def prompt(tok: Any) -> list[int]:
    return list(
        tok.apply_chat_template([{"role": "user", "content": "Weather?"}], add_generation_prompt=True)["input_ids"]
    )


def test_a_whole_answer_becomes_content_reasoning_and_typed_calls(tok: Any) -> None:
    reader = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert reader is not None
    reader.feed(ANSWER)
    reader.finish()
    msg = reader.message()
    assert msg["content"] == "Let me check." and msg["reasoning_content"] == "Paris, then."
    calls = msg["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["weather", "weather"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris", "days": 3},  # "3" typed by the tool's schema
        {"city": "Lyon", "days": 1},
    ]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2


def test_streamed_piece_by_piece_it_gives_the_same_message(tok: Any) -> None:
    reader = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert reader is not None
    deltas = [d for ch in ANSWER for d in reader.feed(ch)] + reader.finish()
    assert "".join(d.get("content", "") for d in deltas) == "Let me check."
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Paris, then."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 1]  # each whole, once its region closes
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Lyon", "days": 1}
    assert [c["id"] for c in calls] == [c["id"] for c in reader.message()["tool_calls"]]


def test_an_answer_without_calls_is_its_content(tok: Any) -> None:
    reader = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert reader is not None
    deltas = reader.feed("It is sunny.") + reader.finish()
    assert reader.message() == {"role": "assistant", "content": "It is sunny."} and not reader.calls
    assert "".join(d.get("content", "") for d in deltas) == "It is sunny."


@pytest.mark.parametrize(
    "answer",
    [
        'Sure.<tool_call>{"name": "weather", "arguments": {"city": </tool_call>',  # JSON the model got wrong
        'Sure.<tool_call>{"name": "weather", "argu',  # cut off by max_tokens
    ],
)
def test_a_call_that_cannot_be_parsed_is_kept_as_text(tok: Any, answer: str) -> None:
    whole = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert whole is not None
    whole.feed(answer)
    whole.finish()
    assert whole.message() == {"role": "assistant", "content": answer}  # the model's own text, all of it
    streamed = ToolCallReader.of(tok, prompt(tok), [WEATHER])
    assert streamed is not None
    deltas = [d for ch in answer for d in streamed.feed(ch)] + streamed.finish()
    assert "".join(d.get("content", "") for d in deltas) == answer and not streamed.calls


def test_no_reader_without_tools_or_a_template(tok: Any) -> None:
    assert ToolCallReader.of(tok, prompt(tok), None) is None  # no tools offered (or tool_choice "none")
    tok.response_template = None
    assert ToolCallReader.of(tok, prompt(tok), [WEATHER]) is None  # the answer stays its text


def test_text_given_out_with_a_delimiter_is_not_lost_when_the_call_fails(tok: Any) -> None:
    """A piece that holds the end of the content and the start of a call's delimiter (as one BPE token can):
    the parser gives out the content and holds the rest; when the call then fails, the rest goes out."""
    pieces = ["Sure. <", 'tool_call>{"name": "weather", "argu']
    _, deltas = read(tok, *pieces)
    assert "".join(d.get("content", "") for d in deltas) == "".join(pieces)


def test_a_later_call_that_fails_makes_the_whole_answer_text(tok: Any) -> None:
    answer = '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call><tool_call>{"name": '
    reader, _ = read(tok, answer)
    assert reader.message() == {"role": "assistant", "content": answer} and not reader.called  # not "tool_calls"


def test_whitespace_around_calls_is_not_content(tok: Any) -> None:
    answer = '\n<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>\n'
    reader, _ = read(tok, answer)
    msg = reader.message()
    assert msg["content"] is None and len(msg["tool_calls"]) == 1 and reader.called


def test_special_tokens_stay_in_the_text_a_template_reads(tok: Any) -> None:
    """A template's delimiter may be a special token (Mistral's [TOOL_CALLS]): serve decodes an answer it
    reads back with special tokens kept."""
    from gitbake.engine.infer import TextDecoder

    bos = tok.convert_tokens_to_ids("<|bos|>")
    kept, skipped = TextDecoder(tok, skip_special=False), TextDecoder(tok)
    assert kept.push(bos) == "<|bos|>" and skipped.push(bos) == ""
