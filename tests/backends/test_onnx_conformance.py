"""The onnx backend against plugstack's backend conformance kit.

Default configuration (``graph=auto``: the fused-operator graph for Llama), the generic
torch.onnx export (``graph=export``), and block-wise int8 weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig
from plugstack.testing import BackendConformance


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    # The same session-wide directory as test_onnx.py: the tiny graph is exported once.
    path = tmp_path_factory.getbasetemp() / "onnx-shared-cache"
    path.mkdir(exist_ok=True)
    return path


class TestOnnxFp32(BackendConformance):
    @pytest.fixture
    def backend(self, onnx_cache):
        return OnnxBackend(OnnxBackendConfig(cache_dir=str(onnx_cache), threads=1))

    @pytest.fixture
    def make_backend(self, onnx_cache):
        return lambda **overrides: OnnxBackend(
            OnnxBackendConfig(**{"cache_dir": str(onnx_cache), "threads": 1, **overrides})
        )

    @pytest.fixture
    def unsupported_options(self):
        return [{"dtype": "fp16"}, {"dtype": "bf16"}, {"quantize": "int3"},
                {"providers": ["NoSuchExecutionProvider"]}, {"graph_optimization": "max"},
                {"graph": "compiled"}, {"kv_cache": "paged"}, {"max_cache_len": -5}]


class TestOnnxExportFp32(TestOnnxFp32):
    @pytest.fixture
    def backend(self, onnx_cache):
        return OnnxBackend(OnnxBackendConfig(cache_dir=str(onnx_cache), threads=1, graph="export"))


class TestOnnxInt8(TestOnnxFp32):
    """Block-wise 8-bit weights: close to fp32, same greedy path on the tiny model."""

    #: Measured max |logit diff| on the tiny model ~6e-3 (logits ~0.5); 8-bit weights
    #: with int8 activations per block cannot meet fp32's 1e-4.
    atol = 3e-2
    min_top1_agreement = 0.75

    @pytest.fixture
    def backend(self, onnx_cache):
        return OnnxBackend(OnnxBackendConfig(cache_dir=str(onnx_cache), threads=1, quantize="int8"))
