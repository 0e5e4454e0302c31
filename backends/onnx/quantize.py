"""Weight-only quantisation of an exported fp32 graph: ``int8`` and ``int4``.

Both use ONNX Runtime's block-wise ``MatMulNBits`` contrib operator (weights stored in
8 or 4 bits with one scale per block of 32 input channels; activations stay float, or
are quantised per block on the fly with ``accuracy_level=4``). Measured on SmolLM2
(benchmarks/bench_quality.py measures them): block-wise 8-bit keeps closer to fp32 than
per-channel dynamic int8 (``quantize_dynamic``) does,
and ``quantize_dynamic`` also mistakes opset 23's standard ``Attention`` for Microsoft's.
At 4 bits a small model loses noticeably: offered, with a warning.

The exporter turns a Linear layer on 2-D activations (a last-position head, a denoiser's
time MLP) into ``Gemm``, which the quantiser skips; each is rewritten as a ``MatMul`` (plus
an ``Add`` of its bias) first so those matrices are quantised too.
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
    """Rewrite ``Gemm(A, W[, C])`` with a constant W as ``MatMul(A, W')`` (then ``Add C``);
    returns how many. A Linear layer on 2-D activations exports as such a Gemm (its bias as
    C): a denoiser's time and conditioning MLPs, a last-position head."""
    inits = {t.name: t for t in model.graph.initializer}
    # made: (weight, transposed) -> its MatMul initializer, so a shared weight is written once.
    nodes, made, rewritten = [], {}, 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or (bias and attrs.get("beta", 1.0) != 1.0) or node.input[1] not in inits):
            nodes.append(node)
            continue
        key = (node.input[1], bool(attrs.get("transB", 0)))
        if key not in made:  # W as it is, or transposed into a new initializer
            made[key] = node.input[1] + ".matmul" if key[1] else node.input[1]
            if key[1]:
                w = np.ascontiguousarray(numpy_helper.to_array(inits[node.input[1]]).T)
                model.graph.initializer.append(numpy_helper.from_array(w, made[key]))
        product = node.output[0] if bias is None else node.output[0] + ".matmul"
        base = node.name or node.output[0]  # node names must be unique where given
        nodes.append(helper.make_node("MatMul", [node.input[0], made[key]], [product], name=base + ".matmul"))
        if bias is not None:  # C broadcasts to [M, N] under Add as it does inside Gemm
            nodes.append(helper.make_node("Add", [product, bias], list(node.output), name=base + ".bias"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Drop initializers no node reads any more (the original transposed weights).
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
