"""Who writes `oneshot_qs` questions: the parent model, an OpenAI-compatible endpoint, or Anthropic's API.

- `model` unset: the parent model of the bake (local, offline).
- `model: openai:NAME` (or any `model` with `base_url`): `<base_url>/chat/completions`; the base URL
  comes from the generator's `base_url` or `OPENAI_BASE_URL`, the key from the variable `api_key_env`
  names (default `OPENAI_API_KEY`; local servers need none).
- `model: claude-...` (bgit's values): Anthropic's OpenAI-compatible endpoint (`ANTHROPIC_BASE_URL`, default
  https://api.anthropic.com/v1/) when `ANTHROPIC_API_KEY` is set.
Every request goes through the official `openai` client, with its retries (connection errors, 408, 409,
429 and 5xx, with exponential backoff and the server's Retry-After) and its timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gitbake.contract import config as cfg
from gitbake.errors import GitbakeError, UsageError

RETRIES = 3
TIMEOUT_S = 120.0


class EndpointError(GitbakeError):
    pass


def writer_for(
    gen: cfg.OneshotGenerator, local: Callable[[str, float, int], str] | None
) -> Callable[[cfg.OneshotGenerator, str], str]:
    """A function (generator, prompt) -> reply text, for this generator's `model`/`base_url`."""
    model = gen.model
    if model is None and gen.base_url is None:
        if local is None:
            raise UsageError("oneshot_qs without `model` needs the parent model, which is not loaded")
        return lambda g, prompt: local(prompt, g.temperature, g.max_tokens or 2048)
    base_url = gen.base_url or os.environ.get("OPENAI_BASE_URL")
    if model is not None and model.startswith("claude") and gen.base_url is None:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise UsageError(
                f"oneshot_qs model `{model}` is Anthropic's, and ANTHROPIC_API_KEY is not set",
                "set ANTHROPIC_API_KEY; or use `model: openai:NAME` with `base_url:` pointing at any OpenAI-compatible "
                "server (e.g. `git bake serve` of another model); or remove `model` to let the parent model write them",
            )
        api_key: str = key
        anthropic = os.environ.get("ANTHROPIC_BASE_URL", ANTHROPIC_OPENAI_URL)
        return lambda g, prompt: complete(anthropic, model, prompt, g.temperature, g.max_tokens or 4096, api_key)
    if base_url is None:
        raise UsageError(
            f"oneshot_qs model `{model}` needs an endpoint",
            "set `base_url:` on the generator (or OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1",
        )
    name = model.removeprefix("openai:") if model else "default"
    key = os.environ.get(gen.api_key_env or "OPENAI_API_KEY")
    return lambda g, prompt: complete(base_url, name, prompt, g.temperature, g.max_tokens or 2048, key)


ANTHROPIC_OPENAI_URL = "https://api.anthropic.com/v1/"
NO_KEY = "none"  # the client needs a key; a local server that asks for none ignores it


def _client(base_url: str, api_key: str | None) -> Any:
    from openai import OpenAI

    # RETRIES attempts in all: the first and RETRIES - 1 retries
    return OpenAI(base_url=base_url, api_key=api_key or NO_KEY, max_retries=RETRIES - 1, timeout=TIMEOUT_S)


def complete(base_url: str, model: str, prompt: str, temperature: float, max_tokens: int, key: str | None) -> str:
    """The reply of one chat completion with a single user turn `prompt`; EndpointError says why not."""
    import openai

    try:
        reply = _client(base_url, key).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
    except openai.APIStatusError as exc:
        detail = str(exc.message)[:300]
        raise EndpointError(
            f"{base_url} failed after {RETRIES} attempts: HTTP {exc.status_code}: {detail}"
            if exc.status_code >= 500 or exc.status_code in (408, 409, 429)
            else f"{base_url} refused the request: HTTP {exc.status_code}: {detail}",
            "check the model name and the API key (nothing was stored)",
        ) from None
    except openai.APIError as exc:  # connection refused, a timeout, an answer that is not JSON
        raise EndpointError(
            f"{base_url} failed after {RETRIES} attempts: {exc}",
            "check that the server is running and the URL ends with /v1 (nothing was stored)",
        ) from None
    try:
        return str(reply.choices[0].message.content or "")
    except (AttributeError, IndexError, TypeError):
        raise EndpointError(f"{base_url} answered without choices[0].message.content: {str(reply)[:200]}") from None
