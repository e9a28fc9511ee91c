"""The exact bytes of a token, for the OpenAI API's `logprobs[].bytes`.

A token need not be valid UTF-8 on its own: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2) splits a
character such as `é` or an emoji across tokens, and SentencePiece's byte fallback (Llama 2, Gemma,
Mistral) spells a rare one as `<0xC3><0xA9>`. Decoding such a token alone gives U+FFFD, so bytes taken
from the decoded text are wrong exactly where a client needs them (to join tokens back into text). They
are read instead from the token's piece through the tokenizer's own decoder settings (tokenizer.json):
ByteLevel's byte-to-character table inverted, ByteFallback's `<0xNN>` pieces, Replace rules such as
`▁` -> space. A tokenizer with none of these keeps its decoded text's bytes.
"""

from __future__ import annotations

import json
import re
import weakref
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_CACHE: weakref.WeakKeyDictionary[Any, TokenBytes] = weakref.WeakKeyDictionary()


class TokenBytes:
    """Reads one tokenizer's tokens' bytes; the decoder settings are read once. It holds no reference to the
    tokenizer (the cache below is keyed by it, weakly): `reader(tokenizer, token_id)`."""

    def __init__(self, tokenizer: Any) -> None:
        decoders = _decoders(tokenizer)
        kinds = {d.get("type") for d in decoders}
        self.byte_fallback = "ByteFallback" in kinds
        self.unbyte: dict[str, int] = {}
        if "ByteLevel" in kinds:
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self.unbyte = {char: byte for byte, char in bytes_to_unicode().items()}
        # Replace rules with a plain string pattern (SentencePiece's `▁` for a space), and Metaspace's marker
        self.replace = [
            (d["pattern"]["String"], str(d.get("content", "")))
            for d in decoders
            if d.get("type") == "Replace" and isinstance(d.get("pattern"), dict) and "String" in d["pattern"]
        ] + [(str(d.get("replacement", "▁")), " ") for d in decoders if d.get("type") == "Metaspace"]
        # added tokens (specials, chat markers) are stored as their text, not through the byte table
        self.added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}

    def __call__(self, tok: Any, token: int) -> bytes:
        piece = tok.convert_ids_to_tokens(token)
        if isinstance(piece, str):
            if self.byte_fallback and (m := _BYTE_PIECE.fullmatch(piece)):  # also when listed as added
                return bytes([int(m.group(1), 16)])
            if token not in self.added:
                if self.unbyte and all(c in self.unbyte for c in piece):
                    return bytes(self.unbyte[c] for c in piece)
                if self.replace and not self.unbyte:
                    for pattern, content in self.replace:
                        piece = piece.replace(pattern, content)
                    return piece.encode("utf-8")
        return str(tok.decode([token])).encode("utf-8")


def bytes_of(tokenizer: Any, token: int) -> bytes:
    """The exact bytes of `token` (see the module's docstring)."""
    try:
        reader = _CACHE[tokenizer]
    except (KeyError, TypeError):
        reader = TokenBytes(tokenizer)
        try:
            _CACHE[tokenizer] = reader
        except TypeError:  # a tokenizer that cannot be weakly referenced: read each time
            pass
    return reader(tokenizer, token)


def _decoders(tokenizer: Any) -> list[dict[str, Any]]:
    """The tokenizer's decoder settings as a flat list (a Sequence's parts in order); [] without a fast
    backend (a slow tokenizer keeps its decoded text's bytes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:  # the decoder's own settings, not the whole tokenizer.json (tens of MB for a large vocabulary)
        decoder = json.loads(backend.decoder.__getstate__()) if backend is not None and backend.decoder else None
    except (AttributeError, ValueError, TypeError):
        return []
    out: list[dict[str, Any]] = []

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            out.append(d)
            for child in d.get("decoders") or []:
                walk(child)

    walk(decoder)
    return out
