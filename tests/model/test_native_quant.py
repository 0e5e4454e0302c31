"""Native quantisation: a GGUF's own blocks as ONNX Runtime ``MatMulNBits``, exactly.

``plugstack.nbits`` on single matrices first (each block type, both accuracy levels), then
whole tiny GGUF files written by the tests through the onnx backend against the eager
module, whose weights are the same file dequantised.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from plugstack.backends.eager import EagerRunner
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig, validate
from plugstack.builders import GraphRequest
from plugstack.errors import UnsupportedOptionError
from plugstack.nbits import BlockMatrix, concat_rows, nbits_nodes, nbits_terms, why_not, with_low_rank
from plugstack.plugins.llama.loader import load_path
from plugstack.testing import SlotDriver, tiny_decoder_model

KINDS = ("Q4_0", "Q4_1", "Q8_0")  # what gguf can write, so tiny files of them can be made


def quantised(kind: str, rows: int = 96, cols: int = 256, seed: int = 0) -> tuple[BlockMatrix, np.ndarray]:
    """A random matrix in ``kind`` blocks, and what the file means by it (gguf's dequantisation)."""
    import gguf

    rng = np.random.default_rng(seed)
    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "Q4_K":  # gguf cannot quantise to it: random blocks with sane fp16 d and dmin
        raw = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
        raw[..., 0:4] = np.array([0.004, 0.01], np.float16).view(np.uint8)
        raw = raw.reshape(rows, -1)
    else:
        raw = gguf.quants.quantize((rng.standard_normal((rows, cols)) * 0.05 + 0.02).astype(np.float32), qtype)
    return BlockMatrix(kind, raw.reshape(rows, -1), cols), gguf.quants.dequantize(raw, qtype).astype(np.float64)


def run_terms(terms, x: np.ndarray, level: int) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes, inits, out = nbits_nodes("x", terms, "w", accuracy_level=level)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, x.shape[1]])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 10
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kind", [*KINDS, "Q4_K"])
def test_each_block_type_computes_what_the_file_means(kind):
    m, w = quantised(kind)
    x = np.random.default_rng(1).standard_normal((3, m.cols)).astype(np.float32)
    want = x.astype(np.float64) @ w.T
    scale = np.abs(want).max()
    exact = run_terms(nbits_terms(m, 0), x, 0)
    assert np.abs(exact - want).max() / scale < 1e-5  # fp32 activations: only summation order differs
    fast = run_terms(nbits_terms(m, 4), x, 4)
    assert 1e-5 < np.abs(fast - want).max() / scale < 2e-2  # int8 activations: rounding, and no more


def test_q8_0_at_level_0_is_two_exact_4_bit_terms_and_8_bits_at_level_4():
    m, _ = quantised("Q8_0")
    assert [t.bits for t in nbits_terms(m, 0)] == [4, 4]
    assert [t.bits for t in nbits_terms(m, 4)] == [8]


def test_matrices_of_different_types_pack_into_one_exact_matmul():
    (a, wa), (b, wb) = quantised("Q4_0", rows=64), quantised("Q4_1", rows=32, seed=2)
    x = np.random.default_rng(3).standard_normal((2, a.cols)).astype(np.float32)
    packed = concat_rows([nbits_terms(a, 0), nbits_terms(b, 0)])
    want = x.astype(np.float64) @ np.concatenate([wa, wb]).T
    assert np.abs(run_terms(packed, x, 0) - want).max() / np.abs(want).max() < 1e-5
    c, _ = quantised("Q8_0", rows=32)
    assert concat_rows([nbits_terms(a, 4), nbits_terms(c, 4)]) is None  # 4 and 8 bits: no single node


@pytest.mark.parametrize("kind", [*KINDS, "Q4_K"])
def test_a_low_rank_term_beside_the_blocks_adds_exactly_b_times_a(kind):
    m, w = quantised(kind)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((4, m.cols)).astype(np.float32), rng.standard_normal((m.rows, 4)).astype(np.float32)
    x = rng.standard_normal((3, m.cols)).astype(np.float32)
    want = x.astype(np.float64) @ (w + b.astype(np.float64) @ a).T  # the adapter merged into the file's weights
    got = run_terms(with_low_rank(nbits_terms(m, 0), a * 0.5, b * 2.0), x, 0)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    with pytest.raises(ValueError, match=r"a low-rank term of shapes \[4, 256\] and \[95, 4\] does not fit"):
        with_low_rank(nbits_terms(m, 0), a, b[1:])


def test_packed_matrices_keep_each_ones_low_rank_term_to_its_own_rows():
    (q, wq), (k, wk), (v, wv) = (quantised(kind, rows=r, seed=s) for kind, r, s in
                                 (("Q4_1", 64, 5), ("Q4_0", 32, 6), ("Q4_1", 32, 7)))
    rng = np.random.default_rng(8)
    aq, bq = rng.standard_normal((4, 256)).astype(np.float32), rng.standard_normal((64, 4)).astype(np.float32)
    av, bv = rng.standard_normal((2, 256)).astype(np.float32), rng.standard_normal((32, 2)).astype(np.float32)
    packed = concat_rows([with_low_rank(nbits_terms(q, 0), aq, bq), nbits_terms(k, 0),
                          with_low_rank(nbits_terms(v, 0), av, bv)])  # k has no adapter
    assert packed[0].low_rank[0].shape == (6, 256) and packed[0].low_rank[1].shape == (128, 6)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    want = x.astype(np.float64) @ np.concatenate([wq + bq @ aq, wk, wv + bv @ av]).T
    assert np.abs(run_terms(packed, x, 0) - want).max() / np.abs(want).max() < 1e-5


def test_a_type_without_an_exact_form_says_why():
    import gguf

    raw = gguf.quants.quantize(np.ones((4, 64), np.float32), gguf.GGMLQuantizationType.Q5_0)
    m = BlockMatrix("Q5_0", raw.reshape(4, -1), 64)
    assert nbits_terms(m, 4) is None
    assert why_not(m) == "Q5_0 has no exact MatMulNBits form (exact: Q4_0, Q4_1, Q8_0, Q4_K)"


# -- whole files through the backend ---------------------------------------------------------


def prepare(path, tmp_path, **options):
    model = load_path(path)
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(tmp_path / "cache"), threads=1, **options)).prepare(model)
    return model, runner


def logits_of(runner, prompt: list[int], steps: int = 6) -> torch.Tensor:
    driver = SlotDriver(runner)
    out = [driver.feed([prompt])[0]]
    for _ in range(steps - 1):
        out.append(driver.feed([[int(out[-1].argmax())]])[0])
    return torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
def test_a_native_graph_matches_eager_on_a_tiny_gguf_of_each_type(kind, tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / f"{kind}.gguf", state, module.cfg, qtype=kind)
    prompt = [3, 9, 27, 81, 50, 100]
    for level in (0, 4):
        model, runner = prepare(path, tmp_path, quantize="native", accuracy_level=level)
        manifest = json.loads((runner.cache_entry.path / "manifest.json").read_text())
        assert manifest["inputs"]["quantize"] == "native" and manifest["inputs"]["accuracy_level"] == level
        with torch.inference_mode():
            want = logits_of(EagerRunner(model.module, model.signature), prompt)
        got = logits_of(runner, prompt)
        runner.close()
        err = float((got - want).abs().max() / want.abs().max())
        assert err < (1e-5 if level == 0 else 5e-2), (kind, level, err)


def test_a_matrix_of_a_type_without_exact_form_stays_fp32_with_a_log_line(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / "mixed.gguf", state, module.cfg, qtype="Q4_1",
                       raw_types={"blk.1.ffn_down.weight": "Q5_0"})
    with capture_logs() as logs:
        model, runner = prepare(path, tmp_path, quantize="native", accuracy_level=0)
    [fallback] = [e for e in logs if e["event"] == "onnx.native.fallback"]
    assert fallback["matrices"] == 1
    assert fallback["first"] == ("layers.1.mlp.down_proj.weight", "Q5_0 has no exact MatMulNBits form "
                                 "(exact: Q4_0, Q4_1, Q8_0, Q4_K)")
    with torch.inference_mode():
        want = logits_of(EagerRunner(model.module, model.signature), [5, 6, 7])
    assert float((logits_of(runner, [5, 6, 7]) - want).abs().max() / want.abs().max()) < 1e-5
    runner.close()


def write_lora(path, model, targets, rank=4, seed=0):
    """A LoRA adapter file for ``model`` as app=train writes one, with random A and B."""
    from safetensors.numpy import save_file

    from plugstack.plugins.llama.adapter import adapter_metadata, lora_name
    from plugstack.plugins.llama.checks import expected_shapes

    hparams, rng = model.info["hparams"], np.random.default_rng(seed)
    shapes, tensors = expected_shapes(hparams), {}
    for i in range(hparams["num_layers"]):
        for t in targets:
            rows, cols = shapes[lora_name(i, t, "A").rsplit(".lora_", 1)[0] + ".weight"]
            tensors[lora_name(i, t, "A")] = (rng.standard_normal((rank, cols)) * 0.1).astype(np.float16)
            tensors[lora_name(i, t, "B")] = (rng.standard_normal((rows, rank)) * 0.1).astype(np.float16)
    save_file(tensors, path, metadata=adapter_metadata("lora", base_digest=model.weights_digest,
                                                       base_source=model.source, rank=rank, alpha=8.0, scale=2.0,
                                                       targets=list(targets)))
    return path


def test_a_lora_adapter_runs_beside_the_files_blocks_in_the_base_graphs_shape(tmp_path, tiny_state, gguf_writer):
    import onnx

    state, module = tiny_state
    path = gguf_writer(tmp_path / "q.gguf", state, module.cfg, qtype="Q4_1")
    adapter = write_lora(tmp_path / "lora.safetensors", load_path(path), ["q_proj", "v_proj", "o_proj", "down_proj"])
    prompt = [3, 9, 27, 81, 50, 100]
    _, base_runner = prepare(path, tmp_path)
    model = load_path(path, adapter=adapter)
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(tmp_path / "cache"), threads=1)).prepare(model)
    inputs = runner.cache_entry.manifest["inputs"]
    assert (inputs["quantize"], inputs["accuracy_level"]) == ("native", 0)  # auto: the file's blocks, adapter and all
    with torch.inference_mode():
        want = logits_of(EagerRunner(model.module, model.signature), prompt)  # eager: the adapter merged in fp32
        base_logits = logits_of(base_runner, prompt)
    got = logits_of(runner, prompt)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert float((base_logits - want).abs().max() / want.abs().max()) > 1e-2  # the adapter does something
    graphs = [onnx.load(str(r.cache_entry.path / "model.onnx"), load_external_data=False).graph
              for r in (base_runner, runner)]
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]  # no node more than the base
    base_runner.close()
    runner.close()


def test_auto_is_native_for_block_quantised_files_and_fp32_otherwise(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    q = gguf_writer(tmp_path / "q.gguf", state, module.cfg, qtype="Q8_0")
    f = gguf_writer(tmp_path / "f.gguf", state, module.cfg, qtype="F32")
    assert OnnxBackendConfig().quantize == "auto"
    _, runner = prepare(q, tmp_path)
    inputs = runner.cache_entry.manifest["inputs"]
    assert (inputs["quantize"], inputs["accuracy_level"]) == ("native", 0)  # exact by default
    runner.close()
    with capture_logs() as logs:
        _, runner = prepare(f, tmp_path)
    assert runner.cache_entry.manifest["inputs"]["quantize"] is None
    [auto] = [e for e in logs if e["event"] == "onnx.quantize.auto"]
    assert "no matrix of the file is in a type native quantisation maps (F32" in auto["reason"]
    runner.close()
    with pytest.raises(UnsupportedOptionError, match=r"backend.quantize=native cannot apply: no matrix of the file"):
        prepare(f, tmp_path, quantize="native")


def test_native_needs_weights_that_came_as_blocks(tmp_path):
    model = tiny_decoder_model()
    assert "did not come block-quantised from a GGUF file" in model.builders["onnx"].declines(
        model, GraphRequest(quantize="native"))
    backend = OnnxBackend(OnnxBackendConfig(cache_dir=str(tmp_path), threads=1, quantize="native"))
    with pytest.raises(UnsupportedOptionError, match=r"Use backend.quantize=null \(fp32\), int8 or int4"):
        backend.prepare(model)


@pytest.mark.parametrize(("options", "message"), [
    ({"accuracy_level": 2}, r"backend.accuracy_level=2 is not supported .* 4 \(int8 activations, fast\) or 0"),
    ({"quantize": "native", "graph": "export"}, r"backend.quantize='native' .* Native weights are written by the "
                                                r"model's own graph builder"),
    ({"quantize": "int3"}, r"Valid values: auto, native, null, int8, int4"),
])
def test_bad_quantisation_options_are_refused_naming_the_valid_ones(options, message):
    with pytest.raises(UnsupportedOptionError, match=message):
        validate(OnnxBackendConfig(**options))
