"""The OpenAI protocol of `git bake serve`: requests checked field by field, and responses shaped as OpenAI's.

Every field of a request is either honoured or refused with a 400 that names it: scalars go through
`Field` (type, range, and the values honoured where not all are), structured fields (`messages`,
`prompt`, `stop`, `tools`, `tool_choice`, `response_format`, `logit_bias`, `stream_options`) have their own
checks, and a field this server does not know is refused too, never ignored. Sampling follows
`gitbake.engine.sampling` (transformers' logits processors); `logprobs` are the model's own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from gitbake.engine.sampling import MAX_TOP_LOGPROBS, Sampling, TokenLogprob

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256  # chat; OpenAI's legacy completions default to 16
COMPLETION_MAX_TOKENS = 16
INT64 = 2**63
INT32_MAX = 2**31 - 1
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # each token is checked against every stop string's prefixes
MAX_TOOLS = 128


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Field:
    """A scalar request field: its JSON type (bool, int, or float for any number), its range, its default
    (for an absent or null value), and the values this server honours where it does not honour them all."""

    kind: type
    default: Any
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    supported: tuple[Any, ...] | None = None
    why: str = ""  # why the others are refused

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        what = "an integer" if self.kind is int else "a number"
        if self.lo_open:
            return f"{what} in ({self.lo:g}, {self.hi:g}]"
        return f"{what} from {self.lo:g} to {self.hi:g}"

    def check(self, name: str, value: Any) -> Any:
        """The value to use, or a 400 naming the field: the one gate every scalar of a request goes through."""
        if value is None:
            return self.default
        kinds = (int, float) if self.kind is float else (self.kind,)
        typed = isinstance(value, kinds) and (self.kind is bool or not isinstance(value, bool))
        in_range = typed and (
            self.kind is bool or (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi
        )
        if not in_range:  # NaN fails every comparison, so it lands here too
            raise ApiError(400, f"`{name}` must be {self.describe()}, not {_show(value)}", param=name)
        if self.supported is not None and value not in self.supported:
            allowed = " or ".join(json.dumps(v) for v in self.supported)
            raise ApiError(400, f"`{name}`: only {allowed} is supported ({self.why}), not {_show(value)}", param=name)
        return float(value) if self.kind is float else value


# The sampling scalars both endpoints take, in OpenAI's ranges (top_k, min_p and repetition_penalty as vLLM's)
SAMPLING_FIELDS: dict[str, Field] = {
    "max_tokens": Field(int, None, 1, MAX_TOKENS_LIMIT),
    "temperature": Field(float, 1.0, 0, 2),
    "top_p": Field(float, 1.0, 0, 1, lo_open=True),
    "top_k": Field(int, -1, -1, INT32_MAX),  # -1 or 0: off (vLLM's convention)
    "min_p": Field(float, 0.0, 0, 1),
    "seed": Field(int, None, -INT64, INT64 - 1),  # a signed 64-bit integer, as OpenAI's
    "n": Field(int, 1, 1, 128, supported=(1,), why="one choice per request; send several requests"),
    "presence_penalty": Field(float, 0.0, -2, 2),
    "frequency_penalty": Field(float, 0.0, -2, 2),
    "repetition_penalty": Field(float, 1.0, 0, 100, lo_open=True),
    "stream": Field(bool, False),
}
# Every scalar of a chat completion request that this server reads or refuses, with its range: huge,
# negative, fractional, boolean or NaN values get a 400 here, before anything reaches the model.
FIELDS: dict[str, Field] = {
    **SAMPLING_FIELDS,
    "max_completion_tokens": Field(int, None, 1, MAX_TOKENS_LIMIT),
    "logprobs": Field(bool, False),
    "top_logprobs": Field(int, 0, 0, MAX_TOP_LOGPROBS),
    "parallel_tool_calls": Field(bool, True),  # only says whether several calls may come in one answer
}
COMPLETION_FIELDS: dict[str, Field] = {
    **SAMPLING_FIELDS,
    "logprobs": Field(int, None, 0, MAX_TOP_LOGPROBS),  # the legacy API: how many alternatives per token
    "echo": Field(bool, False, supported=(False,), why="the prompt is not returned"),
    "best_of": Field(int, 1, 1, 20, supported=(1,), why="one candidate per request"),
}
INCLUDE_USAGE = Field(bool, False)  # stream_options.include_usage
# structured fields, checked by their own code below; `user` is an end-user id for the caller's records
CHAT_OTHER = {"model", "messages", "stop", "stream_options", "logit_bias", "tools", "tool_choice", "response_format"}
COMPLETION_OTHER = {"model", "prompt", "stop", "stream_options", "logit_bias", "suffix"}
METADATA = {"user"}


@dataclass
class Parsed:
    """A checked request: the served model's name, what to render, how to sample, how to answer."""

    model: str
    sampling: Sampling
    max_tokens: int
    stream: bool
    include_usage: bool
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat
    tools: list[dict[str, Any]] | None = None  # chat
    prompt: str | list[int] | None = None  # completions: text, or token ids


def _show(value: Any) -> str:
    """A request value in an error message: short, whatever was sent."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError, TypeError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_body(body: bytes) -> dict[str, Any]:
    try:
        req = json.loads(body or b"", parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses per level: thousands of [[[[ exhaust the stack
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(req, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return req


def _unknown(req: dict[str, Any], known: set[str], endpoint: str) -> None:
    extra = sorted(set(req) - known)
    if extra:
        raise ApiError(
            400,
            f"`{extra[0]}` is not supported by this server's {endpoint}"
            + (f" (nor {', '.join(f'`{x}`' for x in extra[1:])})" if len(extra) > 1 else "")
            + "; leave it out",
            param=extra[0],
        )


def _text(content: Any, where: str) -> str:
    """OpenAI message content: a string, null, or a list of text parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"`{where}.content` must be a string or a list of content parts, not {_show(content)}",
            param="messages",
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise ApiError(
                400,
                f'`{where}.content[{j}]` must be a text part ({{"type": "text", "text": ...}}): '
                "this server serves text models",
                param="messages",
            )
        if not isinstance(part.get("text"), str):
            raise ApiError(
                400, f"`{where}.content[{j}].text` must be a string, not {_show(part.get('text'))}", param="messages"
            )
        texts.append(part["text"])
    return "".join(texts)


ROLES = ("system", "developer", "user", "assistant", "tool")


def _messages(msgs: Any) -> list[dict[str, Any]]:
    """The conversation, as the chat template takes it: tool calls and tool results pass through."""
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "`messages` must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"`messages[{i}]` needs a `role` of system, user, assistant or tool", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out: dict[str, Any] = {"role": role, "content": _text(m.get("content"), f"messages[{i}]")}
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list) or not all(_is_call(c) for c in calls):
                raise ApiError(
                    400,
                    f"`messages[{i}].tool_calls` must be an assistant's list of "
                    '{"id", "type": "function", "function": {"name", "arguments"}}',
                    param="messages",
                )
            # templates expect the arguments as an object; OpenAI sends them as a JSON string
            out["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"], i)}}
                for c in calls
            ]
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise ApiError(400, f"`messages[{i}]` (a tool result) needs its `tool_call_id`", param="messages")
            out["tool_call_id"] = m["tool_call_id"]
        messages.append(out)
    return messages


def _is_call(c: Any) -> bool:
    fn = c.get("function") if isinstance(c, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), (str, dict))


def _arguments(args: Any, i: int) -> Any:
    if isinstance(args, dict):
        return args
    try:
        return json.loads(args)
    except ValueError:
        raise ApiError(
            400, f"`messages[{i}].tool_calls[].function.arguments` is not valid JSON", param="messages"
        ) from None


def _tools(req: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`tools` for the chat template, as `tool_choice` allows: "auto" (the default) or "none"."""
    tools, choice = req.get("tools"), req.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise ApiError(
            400,
            f'`tool_choice`: only "auto" or "none" is supported (the answer is not constrained to a call), '
            f"not {_show(choice)}",
            param="tool_choice",
        )
    if tools is None:
        return None
    if (
        not isinstance(tools, list)
        or len(tools) > MAX_TOOLS
        or not all(
            isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        )
    ):
        raise ApiError(
            400,
            f'`tools` must be a list of up to {MAX_TOOLS} {{"type": "function", "function": {{"name", ...}}}}, '
            f"not {_show(tools)}",
            param="tools",
        )
    return None if choice == "none" or not tools else tools


def _response_format(value: Any) -> None:
    if value is None or value == {"type": "text"}:
        return
    raise ApiError(
        400,
        f'`response_format`: only {{"type": "text"}} is supported (this server does not constrain output to '
        f"JSON), not {_show(value)}",
        param="response_format",
    )


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_STOP_CHARS for x in stops)
    ):
        raise ApiError(
            400,
            f"`stop` must be a string or a list of up to {MAX_STOPS} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters, not {_show(stop)}",
            param="stop",
        )
    return tuple(stops)


def _common(req: dict[str, Any], opts: dict[str, Any]) -> tuple[str, Sampling, bool, bool]:
    name = req.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "`model` is required", param="model")
    options = req.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"`stream_options` must be an object, not {_show(options)}", param="stream_options")
    if set(options or {}) - {"include_usage"}:
        bad = sorted(set(options or {}) - {"include_usage"})[0]
        raise ApiError(400, f"`stream_options.{bad}` is not supported; leave it out", param="stream_options")
    if req.get("logit_bias") not in (None, {}):
        raise ApiError(400, "`logit_bias` is not supported", param="logit_bias")
    if "user" in req and not isinstance(req["user"], str):
        raise ApiError(400, f"`user` must be a string, not {_show(req['user'])}", param="user")
    sampling = Sampling(
        temperature=opts["temperature"],
        top_p=opts["top_p"],
        top_k=opts["top_k"] if opts["top_k"] > 0 else None,
        min_p=opts["min_p"] or None,
        presence_penalty=opts["presence_penalty"],
        frequency_penalty=opts["frequency_penalty"],
        repetition_penalty=opts["repetition_penalty"],
        seed=opts["seed"],
        stop=_stops(req.get("stop")),
    )
    include_usage = INCLUDE_USAGE.check("stream_options.include_usage", (options or {}).get("include_usage"))
    return name, sampling, opts["stream"], include_usage


def parse_chat(body: bytes) -> Parsed:
    """A chat completion request, every field checked, or the 400 that says what is wrong."""
    req = load_body(body)
    _unknown(req, set(FIELDS) | CHAT_OTHER | METADATA, "/v1/chat/completions")
    opts = {key: f.check(key, req.get(key)) for key, f in FIELDS.items()}
    name, sampling, stream, include_usage = _common(req, opts)
    messages = _messages(req.get("messages"))
    tools = _tools(req)
    _response_format(req.get("response_format"))
    if opts["top_logprobs"] and not opts["logprobs"]:
        raise ApiError(400, "`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    sampling = _with_logprobs(sampling, opts["logprobs"], opts["top_logprobs"])
    max_tokens = opts["max_completion_tokens"] or opts["max_tokens"] or DEFAULT_MAX_TOKENS
    return Parsed(name, sampling, max_tokens, stream, include_usage, messages=messages, tools=tools)


def parse_completion(body: bytes) -> Parsed:
    """A (legacy) completion request: a raw prompt, no chat template."""
    req = load_body(body)
    _unknown(req, set(COMPLETION_FIELDS) | COMPLETION_OTHER | METADATA, "/v1/completions")
    opts = {key: f.check(key, req.get(key)) for key, f in COMPLETION_FIELDS.items()}
    name, sampling, stream, include_usage = _common(req, opts)
    if req.get("suffix") not in (None, ""):
        raise ApiError(400, "`suffix` is not supported (no fill-in-the-middle)", param="suffix")
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    ids_ok = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not ids_ok:
        raise ApiError(
            400,
            f"`prompt` must be a non-empty string or a list of token ids (one prompt per request), not {_show(prompt)}",
            param="prompt",
        )
    top = opts["logprobs"]
    sampling = _with_logprobs(sampling, top is not None, top or 0)
    return Parsed(name, sampling, opts["max_tokens"] or COMPLETION_MAX_TOKENS, stream, include_usage, prompt=prompt)


def _with_logprobs(sampling: Sampling, on: bool, top: int) -> Sampling:
    from dataclasses import replace

    return replace(sampling, logprobs=on, top_logprobs=top) if on else sampling


# ------------------------------------------------------------------------------------------ responses


def usage(info: dict[str, Any]) -> dict[str, int]:
    prompt, completion = info.get("prompt_tokens", 0), info.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    """The token's text and its exact bytes, which a client joins to get the answer's text back
    (gitbake.engine.tokenbytes). The text is those bytes where they are whole UTF-8: decoding a token alone
    drops a SentencePiece piece's leading space (`▁the` decodes to "the"), which the answer has; where
    the token holds part of a character, it is the tokenizer's text (U+FFFD), as OpenAI's is."""
    from gitbake.engine.tokenbytes import bytes_of

    raw = bytes_of(tokenizer, token)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = str(tokenizer.decode([token]))
    return text, list(raw)


def chat_logprobs(tokenizer: Any, items: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = []
    for lp in items:
        text, raw = _token(tokenizer, lp.token)
        top = []
        for t, v in lp.top:
            alt, alt_raw = _token(tokenizer, t)
            top.append({"token": alt, "logprob": v, "bytes": alt_raw})
        content.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tokenizer: Any, items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions `logprobs`: parallel lists, and the text offset of each token."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in items:
        text, _ = _token(tokenizer, lp.token)
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({_token(tokenizer, t)[0]: v for t, v in lp.top} if lp.top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
