"""Tool calls in a served chat answer, as OpenAI's `tool_calls`.

A model that calls a tool writes the call as text in its own format (Qwen's and Hermes'
`<tool_call>{...}</tool_call>`, Mistral's `[TOOL_CALLS]`, ...). A checkpoint that ships a response template
(`response_template` in tokenizer_config.json, which transformers' `parse_response` and vLLM read) says how
to read an answer back into a message: content, tool calls, reasoning. When the request offers `tools` and
the model has one, `git bake serve` parses the answer with it, whole or as it streams, through the
tokenizer's own parser (`get_response_parser`); otherwise the answer's text is its content, as before.

Nothing here imports the ML stack: the tokenizer object does the parsing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

REASONING_FIELDS = ("thinking", "reasoning_content", "reasoning")  # what templates call it; vLLM's name out


class ToolCallReader:
    """One answer's parser: `feed` each piece of text as it is decoded, then `finish`. Both return the
    OpenAI chat deltas the text makes (content, reasoning_content, a whole tool call each). A parse that
    fails (a call cut off by max_tokens, JSON the model got wrong) turns the reader into a pass-through,
    and nothing is lost: streamed, the text not yet sent goes out as content, and so does the rest; whole,
    the message is the model's own text (a half-parsed call is worse than the text it came from)."""

    def __init__(self, parser: Any) -> None:
        self.parser: Any = parser
        self.calls: list[dict[str, Any]] = []
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.raw: list[str] = []  # everything fed: the whole message when the parse fails
        self.unsent = ""  # fed since the parser last gave something out: what a failed parse would lose
        self.failed = False

    @classmethod
    def of(cls, tokenizer: Any, prompt: list[int], tools: list[dict[str, Any]] | None) -> ToolCallReader | None:
        """A reader when the request offers tools and the tokenizer has a response template, else None."""
        if not tools or not getattr(tokenizer, "response_template", None):
            return None
        try:
            parser = tokenizer.get_response_parser(prefix=list(prompt), tools=tools)
        except (AttributeError, TypeError, ValueError):  # an older transformers, or a template it cannot read
            return None
        return cls(parser)

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.raw.append(text)
        if self.parser is None:
            return self._content(text)
        self.unsent += text
        try:
            events = self.parser.feed(text)
        except (ValueError, TypeError, KeyError):
            return self._give_up()
        # given out: text (a clean chunk) or a call; a region that merely closes (the content, when a call
        # opens) gives out nothing, and its delimiter stays unsent until the call is out
        if any(_gives_out(e) for e in events):
            self.unsent = ""
        return self._deltas(events)

    def finish(self) -> list[dict[str, Any]]:
        if self.parser is None:
            return []
        try:
            _, events = self.parser.finalize()
        except (ValueError, TypeError, KeyError, RuntimeError):
            return self._give_up()
        return self._deltas(events)

    def message(self) -> dict[str, Any]:
        """The whole answer as OpenAI's assistant message (after `finish`)."""
        if self.failed:
            return {"role": "assistant", "content": "".join(self.raw)}
        out: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.reasoning:
            out["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            out["tool_calls"] = self.calls
        elif out["content"] is None:
            out["content"] = ""
        return out

    # ------------------------------------------------------------------------------------- internals
    def _deltas(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in events:
            name, kind = e.get("field"), e.get("type")
            if kind == "region_chunk" and not e.get("dirty") and name == "content":
                out += self._content(str(e.get("text", "")))
            elif kind == "region_chunk" and not e.get("dirty") and name in REASONING_FIELDS:
                self.reasoning.append(str(e.get("text", "")))
                out.append({"reasoning_content": e.get("text", "")})
            elif kind == "region_close" and name == "tool_calls":
                values = e.get("value")
                for value in values if isinstance(values, list) else [values]:
                    call = _openai_call(value, len(self.calls))
                    if call is not None:
                        self.calls.append({k: v for k, v in call.items() if k != "index"})
                        out.append({"tool_calls": [call]})
        return out

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.content.append(text)
        return [{"content": text}]

    def _give_up(self) -> list[dict[str, Any]]:
        self.parser, self.failed = None, True  # the rest is content
        text, self.unsent = self.unsent, ""
        return self._content(text)


def _gives_out(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if kind == "region_chunk":
        return not event.get("dirty")
    return kind == "region_close" and event.get("field") == "tool_calls"


def _openai_call(value: Any, index: int) -> dict[str, Any] | None:
    """A parsed call (`{"type": "function", "function": {"name", "arguments": {...}}}`, as templates
    give it) in OpenAI's shape: an id, and the arguments as a JSON string."""
    fn = value.get("function", value) if isinstance(value, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        return None
    args = fn.get("arguments", {})
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": fn["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
    }
