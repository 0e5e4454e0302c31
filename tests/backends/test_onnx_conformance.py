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
    #: The denoiser's noise: measured relative error 0.010 (worst of 20 seeded examples 0.012).
    rtol = 4e-2

    @pytest.fixture
    def backend(self, onnx_cache):
        return OnnxBackend(OnnxBackendConfig(cache_dir=str(onnx_cache), threads=1, quantize="int8"))


def test_int8_quantises_every_linear_of_a_stateless_model(onnx_cache):
    """The denoiser's Linears all act on 2-D activations, which the exporter writes as Gemm
    with a bias: rewritten as MatMul + Add before quantising, each becomes a MatMulNBits
    (before, int8 found nothing to quantise in this graph and refused the model)."""
    import onnx
    import torch

    from plugstack.testing import tiny_denoiser_model

    model = tiny_denoiser_model()
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(onnx_cache), threads=1, quantize="int8")).prepare(model)
    runner.close()
    nodes = onnx.load(str(runner.cache_entry.model_path)).graph.node
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.module.modules())
    assert [n.op_type for n in nodes].count("MatMulNBits") == linears == 5
    assert "Gemm" not in {n.op_type for n in nodes}


def test_gemm_rewrite_for_the_quantiser_computes_the_same():
    """Every Gemm form a Linear exports as (bias or none, W transposed or not, one weight
    shared) becomes MatMul [+ Add] with equal results; a scaled bias (beta) stays a Gemm."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from plugstack.backends.onnx.quantize import gemm_to_matmul

    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((6, 4)), "w_kn": rng.standard_normal((4, 6)), "b": rng.standard_normal(6)}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y1"], transB=1),
             helper.make_node("Gemm", ["x", "w"], ["y2"], transB=1),
             helper.make_node("Gemm", ["x", "w_kn", "b"], ["y3"]),
             helper.make_node("Gemm", ["x", "w", "b"], ["y4"], transB=1, beta=0.5)]
    graph = helper.make_graph(
        nodes, "linears", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["n", 6]) for i in range(1, 5)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    want = ort.InferenceSession(proto.SerializeToString()).run(None, x)
    assert gemm_to_matmul(proto) == 3
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Add", "MatMul", "MatMul", "Add", "Gemm"]
    assert sorted(t.name for t in proto.graph.initializer) == ["b", "w", "w.matmul", "w_kn"]  # w transposed once
    got = ort.InferenceSession(proto.SerializeToString()).run(None, x)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
