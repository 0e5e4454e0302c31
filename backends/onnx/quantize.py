"""Weight-only quantisation of an exported fp32 graph: ``int8`` and ``int4``.

Both use ONNX Runtime's block-wise ``MatMulNBits`` contrib operator (weights stored in
8 or 4 bits with one scale per block of 32 input channels; activations stay float, or
are quantised per block on the fly with ``accuracy_level=4``). Measured on SmolLM2
(benchmarks/bench_quality.py measures them): block-wise 8-bit keeps closer to fp32 than
per-channel dynamic int8 (``quantize_dynamic``) does,
and ``quantize_dynamic`` also mistakes opset 23's standard ``Attention`` for Microsoft's.
At 4 bits a small model loses noticeably: offered, with a warning.

The exporter turns a last-position head into ``Gemm``, which the quantiser skips; it is
rewritten as a ``MatMul`` first so the (largest) head matrix is quantised too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
import structlog
from onnx import helper, numpy_helper

log = structlog.get_logger("plugstack.onnx")

BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, W)`` with a constant W and no bias as ``MatMul(A, W')``; returns count."""
    inits = {t.name: t for t in model.graph.initializer}
    rewritten = 0
    for idx, node in enumerate(list(model.graph.node)):
        if node.op_type != "Gemm" or (len(node.input) > 2 and node.input[2]):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        name = node.input[1] + ".matmul"
        model.graph.initializer.append(numpy_helper.from_array(w, name))
        new = helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name + ".matmul")
        model.graph.node.remove(node)
        model.graph.node.insert(idx, new)
        rewritten += 1
    # Drop initializers no node reads any more (the original transposed head).
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return rewritten


def quantize_graph(src: Path, dst: Path, quantize: str, accuracy_level: int = 4) -> int:
    """Write a ``quantize`` (int8|int4) version of the fp32 graph ``src`` to ``dst``; returns
    how many MatMuls it quantised (0: the graph has none, nothing changed)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantiser logs every node it visits at INFO; keep the user's console readable.
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    bits = BITS[quantize]
    if bits == 4:
        log.warning("onnx.quantize.int4_quality", hint="4-bit weights cost small models much quality "
                    "(benchmarks/bench_quality.py measures how much); prefer int8 where quality matters")
    model = onnx.load(str(src))
    heads = gemm_to_matmul(model)
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=BLOCK_SIZE, is_symmetric=True,
        accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    onnx.save(quantizer.model.model, str(dst))
    seconds = time.perf_counter() - start
    counts: dict[str, int] = {}
    for n in quantizer.model.model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    log.info("onnx.quantize.done", quantize=quantize, bits=bits, block_size=BLOCK_SIZE, seconds=round(seconds, 2),
             matmulnbits=counts.get("MatMulNBits", 0), float_matmul=counts.get("MatMul", 0),
             gemm_rewritten=heads, bytes=dst.stat().st_size)
    return counts.get("MatMulNBits", 0)
