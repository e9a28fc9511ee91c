"""gitbake.engine.ggufout: a transformers llama model written as GGUF reads back (transformers' GGUF loader)
to the same logits, tokens and chat template; a source GGUF's metadata is kept; failures leave no file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'gitbake[train]'")
pytest.importorskip("gguf", reason="needs gguf: pip install 'gitbake[gguf]'")
import gguf
import torch

from gitbake.engine.ggufout import GgufExportError, write_gguf
from gitbake.engine.models import load_base

from helpers import read_gguf, smollm2_gguf, tiny_gguf

IDS = [10, 72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101]
# the largest logit difference each type may make on tiny (f32 is exact up to float reordering)
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 1e-1}


pytestmark = pytest.mark.usefixtures("tiny_on_the_cpu_in_fp32")


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_base("tiny", device="cpu", dtype="float32")  # compared with transformers' CPU read-back


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(torch.tensor([IDS])).logits[0]
        return out


def test_tiny_gguf_reads_back_to_tinys_logits_tokens_and_template(tiny: Any, tmp_path: Path) -> None:
    path = tiny_gguf(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]  # no temporary file left beside it
    model, tokenizer = read_gguf(path)
    assert torch.allclose(logits(model), logits(tiny.model), atol=TOLERANCE["f32"])
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <there> é"}]
    text = tiny.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == text
    assert tokenizer(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|eos|>", "<|bos|>")
    fields = gguf.GGUFReader(path).fields
    assert fields["general.architecture"].contents() == "llama" and fields["general.name"].contents() == "tiny"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    # the special tokens are control tokens, which llama.cpp matches whole in a prompt
    assert fields["tokenizer.ggml.token_type"].contents()[256:262] == [gguf.TokenType.CONTROL] * 6


@pytest.mark.parametrize("ftype", ["f16", "q8_0"])
def test_smaller_types_stay_within_their_tolerance(tiny: Any, tmp_path: Path, ftype: str) -> None:
    path = tmp_path / f"tiny-{ftype}.gguf"
    write_gguf(tiny.model, tiny.tokenizer, path, ftype)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    want = gguf.GGMLQuantizationType.F16 if ftype == "f16" else gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight"] == want and types["token_embd.weight"] == want
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32
    diff = (logits(read_gguf(path)[0]) - logits(tiny.model)).abs().max().item()
    assert 0 < diff < TOLERANCE[ftype]  # rounded (not f32), yet close


def test_source_metadata_is_kept(tiny: Any, tmp_path: Path) -> None:
    source = tmp_path / "src" / "source.gguf"
    source.parent.mkdir()
    w = gguf.GGUFWriter(source, "llama")
    w.add_name("Source Model")
    w.add_license("apache-2.0")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)  # the source's own encoding: not carried over
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([f"t{i}" for i in range(4)])
    w.add_uint32("llama.block_count", 99)  # a tensor-shaped key: never copied
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out.gguf"
    write_gguf(tiny.model, tiny.tokenizer, out, "f16", source=source, name="ignored")
    fields = gguf.GGUFReader(out).fields
    assert fields["general.name"].contents() == "Source Model"
    assert fields["general.license"].contents() == "apache-2.0"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.ggml.tokens"].contents() == ["t0", "t1", "t2", "t3"]
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert fields["llama.block_count"].contents() == 4


def test_refusals_leave_no_file(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(GgufExportError, match="q4_0") as bad:
        write_gguf(tiny.model, tiny.tokenizer, tmp_path / "x.gguf", "q4_0")
    assert bad.value.exit_code == 2 and "f32, f16, q8_0" in str(bad.value.hint)
    model = load_base("tiny", dtype="float32").model
    model.config.model_type = "gpt2"
    with pytest.raises(GgufExportError, match="gemma3_text and llama architectures"):
        write_gguf(model, tiny.tokenizer, tmp_path / "x.gguf")
    # a failure while writing (a tensor with no llama.cpp name) leaves no temporary file behind
    model.config.model_type = "llama"
    model.register_buffer("stray", torch.zeros(2))
    with pytest.raises(GgufExportError, match="stray"):
        write_gguf(model, tiny.tokenizer, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
def test_real_model_f16_reads_back_with_its_metadata_and_answers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    out = tmp_path / "smollm2-f16.gguf"
    write_gguf(model, tokenizer, out, "f16", source=source)
    fields = gguf.GGUFReader(out).fields
    assert fields["general.organization"].contents() == "HuggingFaceTB"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    back, back_tokenizer = read_gguf(out)
    diff = (logits(back) - logits(model)).abs().max().item()
    assert 0 < diff < 0.5  # f16 rounding of 135M weights, on logits of magnitude ~20
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = back_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reply = back.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in back_tokenizer.decode(reply[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _gemma3(layers: int = 6, **overrides: Any) -> Any:
    """A small Gemma 3 with random weights (and random norm weights: Gemma's norms scale by 1 + weight, which
    the file stores as llama.cpp reads it), on tiny's vocabulary."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=262,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,  # transformers' GGUF loader takes Gemma 3's query scale to be 1/sqrt(256), as it is for
        # every Gemma 3 but the 27B, whatever the file's head size; llama.cpp takes 1/sqrt(head size)
        max_position_embeddings=512,
        sliding_window=8,  # shorter than IDS: the local layers' window shows in the logits
        **{"query_pre_attn_scalar": 256, **overrides},
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)
    return model


def test_a_gemma3_model_reads_back_to_its_logits(tiny: Any, tmp_path: Path) -> None:
    """Gemma 3 (one global layer in six, sliding-window attention on the others, q/k norms) as llama.cpp's
    gemma3: transformers' GGUF loader reads it back to the same logits."""
    model = _gemma3()
    path = tmp_path / "g.gguf"
    write_gguf(model, tiny.tokenizer, path, "f32", name="g")
    fields = gguf.GGUFReader(path).fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["gemma3.attention.sliding_window"].contents() == 8
    assert fields["gemma3.rope.freq_base"].contents() == 1_000_000.0  # the global layers' base
    back, _ = read_gguf(path)
    assert back.config.model_type == "gemma3_text" and back.config.layer_types == model.config.layer_types
    assert torch.allclose(logits(back), logits(model), atol=TOLERANCE["f32"])


def test_a_gemma3_that_llama_cpp_would_run_otherwise_is_refused(tiny: Any, tmp_path: Path) -> None:
    odd = _gemma3(layers=2, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(GgufExportError, match="attention pattern") as refused:
        write_gguf(odd, tiny.tokenizer, tmp_path / "g.gguf")
    assert refused.value.exit_code == 2 and "--merged" in str(refused.value.hint)
    with pytest.raises(GgufExportError, match="query scale"):
        write_gguf(_gemma3(layers=2, query_pre_attn_scalar=64), tiny.tokenizer, tmp_path / "g.gguf")
    assert list(tmp_path.iterdir()) == []
