"""Who writes `oneshot_qs` questions: the parent model, an OpenAI-compatible endpoint, or Anthropic's API.

- `model` unset: the parent model of the bake (local, offline).
- `model: openai:NAME` (or any `model` with `base_url`): POST `<base_url>/chat/completions`; the base URL
  comes from the generator's `base_url` or `OPENAI_BASE_URL`, the key from the variable `api_key_env`
  names (default `OPENAI_API_KEY`; none is sent when unset, as local servers need none).
- `model: claude-...` (bgit's values): Anthropic's Messages API when `ANTHROPIC_API_KEY` is set.
HTTP goes through urllib (no extra dependency), with retries and exponential backoff.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from gitbake.contract import config as cfg
from gitbake.errors import GitbakeError, UsageError

RETRIES = 3
BACKOFF_S = 0.5
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
        return lambda g, prompt: anthropic_messages(model, prompt, g.temperature, g.max_tokens or 4096, api_key)
    if base_url is None:
        raise UsageError(
            f"oneshot_qs model `{model}` needs an endpoint",
            "set `base_url:` on the generator (or OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1",
        )
    name = model.removeprefix("openai:") if model else "default"
    key = os.environ.get(gen.api_key_env or "OPENAI_API_KEY")
    return lambda g, prompt: openai_chat(
        base_url, name, [{"role": "user", "content": prompt}], g.temperature, g.max_tokens or 2048, key
    )


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float = TIMEOUT_S) -> dict[str, Any]:
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(RETRIES):
        req = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json", **headers}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                result: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            last = f"HTTP {exc.code}: {detail}"
            if exc.code < 500 and exc.code != 429:
                break  # a client error will not go away by retrying
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < RETRIES - 1:
            time.sleep(BACKOFF_S * 2**attempt)
    raise EndpointError(
        f"{url} failed after {RETRIES} attempts: {last}",
        "check that the server is running and the URL ends with /v1 (nothing was stored)",
    )


def openai_chat(
    base_url: str, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int, api_key: str | None
) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = _post(
        base_url.rstrip("/") + "/chat/completions",
        {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens},
        headers,
    )
    try:
        return str(reply["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"{base_url} answered without choices[0].message.content: {str(reply)[:200]}") from None


def anthropic_messages(model: str, prompt: str, temperature: float, max_tokens: int, api_key: str) -> str:
    reply = _post(
        os.environ.get("ANTHROPIC_BASE_URL", "https://api.anthropic.com") + "/v1/messages",
        {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [{"role": "user", "content": prompt}],
        },
        {"x-api-key": api_key, "anthropic-version": "2023-06-01"},
    )
    parts = reply.get("content") or []
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict))
