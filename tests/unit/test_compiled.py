"""When the bake compiles its decoder layers: a bf16 model of a real size on a CPU with a C++ compiler
(the measured case), never tiny or fp32 or a GPU, and GITBAKE_COMPILE overrides either way."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from gitbake.engine import compiled


class Model:
    def __init__(self, params: int, dtype: str = "torch.bfloat16", device: str = "cpu") -> None:
        self.param = SimpleNamespace(device=SimpleNamespace(type=device), dtype=dtype, numel=lambda: params)

    def parameters(self) -> Iterator[SimpleNamespace]:
        yield self.param


@pytest.fixture
def with_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITBAKE_COMPILE", raising=False)
    monkeypatch.setattr(compiled.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_a_real_bf16_model_on_a_cpu_compiles(with_compiler: None) -> None:
    assert compiled.wanted(Model(135_000_000))


def test_tiny_fp32_and_gpu_models_stay_eager(with_compiler: None) -> None:
    assert not compiled.wanted(Model(3_300_000))  # tiny: the compile would cost more than it saves
    assert not compiled.wanted(Model(135_000_000, dtype="torch.float32"))
    assert not compiled.wanted(Model(135_000_000, device="cuda"))


def test_no_cxx_compiler_means_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITBAKE_COMPILE", raising=False)
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    assert not compiled.wanted(Model(135_000_000))


def test_the_environment_overrides_the_choice(with_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITBAKE_COMPILE", "0")
    assert not compiled.wanted(Model(135_000_000))
    monkeypatch.setenv("GITBAKE_COMPILE", "1")
    assert compiled.wanted(Model(3_300_000, dtype="torch.float32"))


def test_a_decoder_without_layers_is_left_alone() -> None:
    assert compiled.layers_of(SimpleNamespace()) == []
    with compiled.compiled_layers(SimpleNamespace(), True) as on:
        assert not on
