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
    and nothing is lost: streamed, the text not yet given out goes out as content, and so does the rest;
    whole, the message is the model's own text (a half-parsed call is worse than the text it came from)."""

    def __init__(self, parser: Any) -> None:
        self.parser: Any = parser
        self.calls: list[dict[str, Any]] = []
        self.content: list[str] = []
        self.raw: list[str] = []  # everything fed: the whole message when the parse fails
        self.unsent = ""  # fed since the last call went out
        self.given: list[str] = []  # the text given out since then, in order (pieces of `unsent`)
        self.final: dict[str, Any] | None = None  # the parser's own message (its text fields trimmed)
        self.failed = False

    @classmethod
    def wanted(cls, tokenizer: Any, tools: list[dict[str, Any]] | None) -> bool:
        """Whether an answer to a request offering `tools` is read back (the model has a response template)."""
        return bool(tools) and bool(getattr(tokenizer, "response_template", None))

    @classmethod
    def of(cls, tokenizer: Any, prompt: list[int], tools: list[dict[str, Any]] | None) -> ToolCallReader | None:
        """A reader when the request offers tools and the tokenizer has a response template, else None."""
        if not cls.wanted(tokenizer, tools):
            return None
        try:
            parser = tokenizer.get_response_parser(prefix=list(prompt), tools=tools)
        except Exception:  # noqa: BLE001 - a template this transformers cannot run: the answer stays text
            return None
        return cls(parser)

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.raw.append(text)
        if self.parser is None:
            return self._content(text)
        self.unsent += text
        try:
            events = self.parser.feed(text)
        except Exception:  # noqa: BLE001 - a parse that fails must not end the answer
            return self._give_up()
        return self._deltas(events)

    def finish(self) -> list[dict[str, Any]]:
        if self.parser is None:
            return []
        try:
            self.final, events = self.parser.finalize()
        except Exception:  # noqa: BLE001
            return self._give_up()
        return self._deltas(events)

    def message(self) -> dict[str, Any]:
        """The whole answer as OpenAI's assistant message (after `finish`)."""
        if self.failed or self.final is None:
            return {"role": "assistant", "content": "".join(self.raw)}
        content = self.final.get("content")
        content = content if isinstance(content, str) and content.strip() else None
        out: dict[str, Any] = {"role": "assistant", "content": content}
        reasoning = next((self.final[k] for k in REASONING_FIELDS if isinstance(self.final.get(k), str)), None)
        if reasoning:
            out["reasoning_content"] = reasoning
        if self.calls:
            out["tool_calls"] = self.calls
        elif out["content"] is None:
            out["content"] = "".join(self.content)
        return out

    @property
    def called(self) -> bool:
        """Whether the answer is tool calls (finish_reason `tool_calls`)."""
        return bool(self.calls) and not self.failed

    # ------------------------------------------------------------------------------------- internals
    def _deltas(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in events:
            name, kind, text = e.get("field"), e.get("type"), str(e.get("text", ""))
            if kind == "region_chunk" and not e.get("dirty") and name == "content":
                out += self._content(text)
                self.given.append(text)
            elif kind == "region_chunk" and not e.get("dirty") and name in REASONING_FIELDS and text:
                self.given.append(text)
                out.append({"reasoning_content": text})
            elif kind == "region_close" and name == "tool_calls":
                values = e.get("value")
                for value in values if isinstance(values, list) else [values]:
                    call = _openai_call(value, len(self.calls))
                    if call is None:  # a call without a name: its text, not nothing
                        out += self._content(value if isinstance(value, str) else json.dumps(value))
                        continue
                    self.calls.append({k: v for k, v in call.items() if k != "index"})
                    out.append({"tool_calls": [call]})
                self.unsent, self.given = "", []  # everything up to the call is out
        return out

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.content.append(text)
        return [{"content": text}]

    def _give_up(self) -> list[dict[str, Any]]:
        """The parse failed: from here the text is content. What was fed since the last call and not yet
        given out (a delimiter, a call's body, text the parser held back) goes out now."""
        self.parser, self.failed = None, True
        rest, at = self.unsent, 0
        for piece in self.given:  # the pieces given out are the unsent text's, in order
            found = rest.find(piece, at)
            if found < 0:
                at = 0  # not found in order: send it all rather than lose any
                break
            at = found + len(piece)
        self.unsent, self.given = "", []
        return self._content(rest[at:])


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
