"""The conformance kit on the real ``cuda`` backend. Without a usable GPU the runner tests
skip with the probe's reason; probe, capability and option tests run everywhere."""

from __future__ import annotations

import pytest

from plugstack.backends.cuda.backend import CudaBackend
from plugstack.backends.cuda.config import CudaBackendConfig
from plugstack.testing import BackendConformance


def make_cuda(**overrides) -> CudaBackend:
    return CudaBackend(CudaBackendConfig(**overrides))


class TestCudaFp32StaticCache(BackendConformance):
    atol = 1e-3  # GPU kernels reduce in another order than the CPU reference
    # cuDNN convolutions run in TF32 by default: the denoiser's noise is 4e-4 (convolutions)
    # to 7e-4 (and the Linears) off in relative error, emulating TF32's rounding on the CPU.
    rtol = 3e-3

    @pytest.fixture
    def backend(self):
        return make_cuda(dtype="fp32")

    @pytest.fixture
    def make_backend(self):
        return make_cuda

    @pytest.fixture
    def unsupported_options(self):
        return [{"dtype": "int8"}, {"cuda_graphs": True, "static_cache": False}]


class TestCudaFp32Graphs(BackendConformance):
    atol = 1e-3
    kit_models = ("tiny-llama",)  # graphs replay the static KV cache: other state is refused

    @pytest.fixture
    def backend(self):
        return make_cuda(dtype="fp32", cuda_graphs=True)


class TestCudaFp16Graphs(BackendConformance):
    atol = 1e-2  # fp16 against the fp32 reference
    kit_models = ("tiny-llama",)

    @pytest.fixture
    def backend(self):
        return make_cuda(dtype="fp16", cuda_graphs=True)
