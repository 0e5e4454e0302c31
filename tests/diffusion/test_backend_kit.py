"""The shipped digits-diffusion model through the backend conformance kit, on cpu and onnx:
the kit runs every test that fits a stateless step (one step against eager fp32, rows of
a batch against rows alone, nothing carried between steps, precision, options)."""

from __future__ import annotations

import pytest

from plugstack.backends.cpu.backend import CpuBackend
from plugstack.backends.cpu.config import CpuBackendConfig
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig
from plugstack.testing import BackendConformance


def shipped(seed: int = 0):
    """The model as users get it (its weights are the checkpoint's, whatever the seed)."""
    from plugstack.plugins.diffusion.loader import load

    return load()


class TestDigitsOnCpu(BackendConformance):
    kit_models = (shipped,)

    @pytest.fixture
    def backend(self):
        return CpuBackend(CpuBackendConfig(threads=1))

    @pytest.fixture
    def make_backend(self):
        return lambda **overrides: CpuBackend(CpuBackendConfig(**{"threads": 1, **overrides}))

    @pytest.fixture
    def unsupported_options(self):
        return [{"dtype": "fp16"}, {"quantize": "int4"}]


class TestDigitsOnOnnx(BackendConformance):
    kit_models = (shipped,)

    @pytest.fixture
    def backend(self, digits_onnx_cache):
        return OnnxBackend(OnnxBackendConfig(cache_dir=digits_onnx_cache, threads=1))

    @pytest.fixture
    def make_backend(self, digits_onnx_cache):
        return lambda **overrides: OnnxBackend(
            OnnxBackendConfig(**{"cache_dir": digits_onnx_cache, "threads": 1, **overrides}))

    @pytest.fixture
    def unsupported_options(self):
        return [{"dtype": "bf16"}, {"quantize": "int3"}]
