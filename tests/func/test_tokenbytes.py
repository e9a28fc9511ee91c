"""`logprobs[].bytes`: a token's exact bytes, also where it holds part of a character (decoded alone it is
U+FFFD), for byte-level BPE and for SentencePiece's byte fallback."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from gitbake.engine.tiny import ensure_tiny
from gitbake.engine.tokenbytes import TokenBytes, bytes_of


def _sentencepiece() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer with byte fallback and the `▁` space marker, as Llama 2, Gemma and
    Mistral ship: ids 1 and 2 are the two bytes of "é"."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "▁caf": 3, "▁the": 4}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_byte_level_bpe_gives_each_token_its_bytes() -> None:
    path, _ = ensure_tiny()
    tok = AutoTokenizer.from_pretrained(path)  # byte-level BPE, as GPT-2, Llama 3, Qwen, SmolLM2
    c3, a9 = tok.convert_tokens_to_ids(["Ã", "©"])  # the two bytes of "é", a token each
    assert tok.decode([c3]) == tok.decode([a9]) == "\ufffd"  # what the decoded text's bytes used to give
    assert (bytes_of(tok, c3), bytes_of(tok, a9)) == (b"\xc3", b"\xa9")
    assert (bytes_of(tok, c3) + bytes_of(tok, a9)).decode() == "é" == tok.decode([c3, a9])
    space = tok.convert_tokens_to_ids("Ġ")
    assert bytes_of(tok, space) == b" "
    eos = tok.convert_tokens_to_ids("<|eos|>")
    assert bytes_of(tok, eos) == b"<|eos|>"  # an added token is its text, not read through the byte table
    for i in range(len(tok)):  # every whole token: its bytes are its text's
        text = tok.decode([i])
        if "\ufffd" not in text:
            assert bytes_of(tok, i) == text.encode(), (i, text)


def test_sentencepiece_byte_fallback_and_the_space_marker() -> None:
    tok = _sentencepiece()
    reader = TokenBytes(tok)
    assert reader.byte_fallback and not reader.unbyte
    assert [reader(tok, i) for i in (4, 3, 1, 2)] == [b" the", b" caf", b"\xc3", b"\xa9"]
    assert b"".join(reader(tok, i) for i in (3, 1, 2)).decode() == " café"
    assert tok.decode([1]) == "\ufffd"  # decoded alone, the byte is lost


def test_logprobs_text_keeps_a_sentencepiece_tokens_leading_space() -> None:
    from gitbake.engine.sampling import TokenLogprob
    from gitbake.use.openai_api import chat_logprobs, completion_logprobs

    tok = _sentencepiece()
    assert tok.decode([4]) == "the"  # decoded alone, the piece's space is gone
    items = [TokenLogprob(3, -0.5, ((4, -1.0),)), TokenLogprob(1, -0.1), TokenLogprob(2, -0.2)]
    content = chat_logprobs(tok, items)["content"]
    assert [c["token"] for c in content] == [" caf", "\ufffd", "\ufffd"]  # part of a character: U+FFFD
    assert [c["bytes"] for c in content] == [list(b" caf"), [0xC3], [0xA9]]
    assert content[0]["top_logprobs"][0]["token"] == " the"
    legacy = completion_logprobs(tok, items, 10)
    assert legacy["tokens"][0] == " caf" and legacy["text_offset"] == [10, 14, 15]


def test_a_tokenizer_without_a_fast_backend_keeps_its_text() -> None:
    class Plain:
        added_tokens_decoder: dict[int, str] = {}

        def convert_ids_to_tokens(self, token: int) -> str:
            return "x"

        def decode(self, ids: list[int]) -> str:
            return "héllo"

    assert bytes_of(Plain(), 5) == "héllo".encode()


def test_the_cache_lets_a_tokenizer_go() -> None:
    import gc
    import weakref

    from gitbake.engine import tokenbytes

    path, _ = ensure_tiny()
    tok = AutoTokenizer.from_pretrained(path)
    bytes_of(tok, 5)
    assert tok in tokenbytes._CACHE
    gone = weakref.ref(tok)
    del tok
    gc.collect()
    assert gone() is None  # its reader does not keep it alive
