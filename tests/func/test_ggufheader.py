"""engine/ggufheader.py: a GGUF's metadata and tensor table, read as gguf's GGUFReader reads them (every
value type, arrays, both byte orders, quantised tensors), and a file cut short is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="needs gguf: pip install 'gitbake[gguf]'")
import gguf
import numpy as np

from gitbake.engine.ggufheader import read_header


def _written(path: Path, endianess: object) -> Path:
    w = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    w.add_name("a model é")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 1e-300)
    w.add_token_list(["<s>", "héllo", "", "x" * 300])
    w.add_token_scores([0.5, -1.0, 2.0, 3.0])
    w.add_token_types([1, 2, 3, 4])
    w.add_array("t.bools", [True, False])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    quantised = gguf.quants.quantize(np.ones((4, 32), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("endianess", ["LITTLE", "BIG"])
def test_the_header_is_what_ggufs_reader_reads(tmp_path: Path, endianess: str) -> None:
    path = _written(tmp_path / "m.gguf", getattr(gguf.GGUFEndian, endianess))
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys and ours.version == 3
    for key in keys:
        field, value = theirs.fields[key], ours.fields[key]
        assert value.vtype == field.types[0], key
        assert value.sub_type == (field.types[1] if len(field.types) > 1 else None), key
        got = [x for part in value.value for x in part] if key == "t.nested" else value.value  # theirs: flattened
        assert got == pytest.approx(field.contents()) if "f" in key else got == field.contents(), key
    assert ours.string("general.name") == "a model é" and ours.string("t.u8") is None
    assert ours.fields["tokenizer.ggml.tokens"].value == ["<s>", "héllo", "", "x" * 300]
    assert ours.fields["t.nested"].value == [[1, 2], [3]]
    assert [(t.name, t.qtype, t.n_elements, ours.data_start + t.offset) for t in ours.tensors] == [
        (t.name, int(t.tensor_type), int(t.n_elements), int(t.data_offset)) for t in theirs.tensors
    ]


def test_a_file_cut_inside_its_header_is_an_error(tmp_path: Path) -> None:
    whole = _written(tmp_path / "m.gguf", gguf.GGUFEndian.LITTLE).read_bytes()
    end = read_header(tmp_path / "m.gguf").data_start
    for cut in (6, 30, end // 2, end - 32):  # the header ends at most 31 bytes of padding before its data
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(EOFError):
            read_header(tmp_path / "cut.gguf")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ValueError, match="version 1"):
        read_header(tmp_path / "v1.gguf")
