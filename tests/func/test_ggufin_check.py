"""The checks on a GGUF file (gitbake/engine/ggufin.py), on small files written here with gguf's
GGUFWriter: no torch, no model (in func/ because the supported architectures are transformers' table)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf", reason="needs the gguf package: pip install 'gitbake[gguf]'")
np = pytest.importorskip("numpy")

from gitbake.engine import ggufin  # noqa: E402  (after the skip: it names the gguf extra)

from helpers import crafted_gguf  # noqa: E402


def test_a_good_file_is_read(tmp_path: Path) -> None:
    info = ggufin.inspect(crafted_gguf(tmp_path / "m.gguf", qtype="Q8_0"))
    assert info.architecture == "llama" and info.tensor_types == ("F32", "Q8_0") and info.tensors == 2


def test_truncated_file(tmp_path: Path) -> None:
    good = crafted_gguf(tmp_path / "good.gguf").read_bytes()
    for cut in (len(good) - 8, len(good) // 2, 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(good[:cut])
        with pytest.raises(ggufin.GgufError) as err:
            ggufin.inspect(bad)
        assert str(bad) in err.value.message and "truncated or damaged" in err.value.message, cut
        assert err.value.exit_code == 2 and err.value.hint and "again" in err.value.hint


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "noise.gguf"
    bad.write_bytes(os.urandom(4096).replace(b"GGUF", b"XXXX"))
    with pytest.raises(ggufin.GgufError) as err:
        ggufin.inspect(bad)
    assert f"{bad} is not a GGUF file" in err.value.message and "--base-model" in (err.value.hint or "")


def test_unsupported_architecture_names_what_was_found_and_what_is_supported(tmp_path: Path) -> None:
    bad = crafted_gguf(tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(ggufin.GgufError) as err:
        ggufin.inspect(bad)
    msg = err.value.message
    assert str(bad) in msg and "architecture `bert`" in msg and "supported: " in msg and "llama" in msg
    assert "t5" not in msg.split("supported: ")[1].split(", ")  # not a causal LM: not offered


def test_unsupported_quantisation_names_it_and_the_supported_ones(tmp_path: Path) -> None:
    bad = crafted_gguf(tmp_path / "q81.gguf", qtype="Q8_1")
    with pytest.raises(ggufin.GgufError) as err:
        ggufin.inspect(bad)
    msg = err.value.message
    assert str(bad) in msg and "type Q8_1" in msg
    supported = msg.split("supported: ")[1].split(", ")
    assert {"F32", "F16", "Q4_1", "Q8_0"} <= set(supported) and "Q8_1" not in supported
    assert "llama-quantize" in (err.value.hint or "")


def test_a_file_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ggufin.GgufError, match="no tokenizer"):
        ggufin.inspect(crafted_gguf(tmp_path / "notok.gguf", tokenizer=False))


def test_missing_gguf_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = crafted_gguf(tmp_path / "m.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` sees when it is not installed
    with pytest.raises(ggufin.GgufError) as err:
        ggufin.inspect(path)
    assert "`gguf` package" in err.value.message and "pip install 'gitbake[gguf]'" in (err.value.hint or "")
