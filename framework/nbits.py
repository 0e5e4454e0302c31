"""Block-quantised matrices from a GGUF file, as ONNX Runtime's ``MatMulNBits`` takes them.

A graph builder that has a model's weights as a file stores them (``BlockMatrix``: the
ggml type and the raw blocks) asks :func:`nbits_terms` for the ``MatMulNBits`` weights that
compute exactly what the file means, without dequantising and quantising again. What each
type becomes, and why (measured on this machine with ONNX Runtime 1.32's CPU kernels):

``Q4_0`` (``w = d·(q-8)``)
    4 bits, scale ``d``, ORT's default zero point 8: the same numbers.
``Q4_1`` (``w = d·q + m``)
    4 bits, scale ``d``, zero point 0, plus a block-sum term ``y += blocksum(x)·mᵀ``:
    float zero points would be exact too, but ORT runs them hundreds of times slower. At
    ``accuracy_level=4`` the zero point stays 8 and the term adds ``m + 8d``: weights centred
    on 0 keep the int8 activations' rounding errors from adding up (half the error).
``Q4_K`` (super-blocks of 256: ``w = (d·sc_j)·q - dmin·m_j`` per sub-block ``j`` of 32)
    As Q4_1, with the sub-block's scale ``d·sc_j`` and min ``-dmin·m_j`` (both exact in fp32).
``Q8_0`` (``w = d·q``, q int8)
    ``accuracy_level=4``: 8 bits, ``q+128`` with the default zero point 128.
    ``accuracy_level=0``: ORT has no fast fp32 kernel for 8 bits (tens of times slower), so
    ``q = 16·h + l`` is split into two exact 4-bit terms, ``(16d)·h + d·l``, summed.

:func:`with_low_rank` adds a term ``y += (x·aᵀ)·bᵀ`` beside a matrix's blocks (a LoRA
adapter, which merging into the weights would make the blocks no longer describe); it
shares the two small MatMuls that compute the block sums, so it adds no node.

Every other type returns ``None`` with the reason (:func:`why_not`), and the builder keeps
that matrix in fp32: exact, only slower. :func:`dequantize` is the fp32 form of any type
(what the Llama loader builds its eager module from).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["BLOCK", "EXACT_TYPES", "BlockMatrix", "NBits", "concat_rows", "dequantize", "gather_q8_0", "nbits_nodes",
           "nbits_terms", "why_not", "with_low_rank"]

#: Elements per MatMulNBits block (ggml's QK4_0 = QK4_1 = QK8_0 = 32; Q4_K's sub-blocks).
BLOCK = 32
#: ggml types :func:`nbits_terms` maps exactly -> (elements, bytes) per block of the file.
EXACT_TYPES = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34), "Q4_K": (256, 144)}


@dataclass(frozen=True)
class BlockMatrix:
    """A ``[rows, cols]`` weight as a GGUF file stores it (rows are output features)."""

    #: ggml type name (``"Q4_1"``, ``"F16"``, ...).
    kind: str
    #: uint8 ``[rows, row_bytes]``: each row's blocks, as in the file.
    raw: np.ndarray
    #: Elements per row.
    cols: int

    @property
    def rows(self) -> int:
        return int(self.raw.shape[0])

    def take_rows(self, order: np.ndarray) -> BlockMatrix:
        """The same matrix with its rows reordered (a row is whole blocks)."""
        return BlockMatrix(self.kind, self.raw[order], self.cols)


@dataclass(frozen=True)
class NBits:
    """One ``MatMulNBits`` weight ``[N, K]`` and what it needs beside the node."""

    bits: int
    #: uint8 ``[N, K/32, 32·bits/8]``: the node's ``B``.
    b: np.ndarray
    #: float32 ``[N, K/32]``: one scale per block.
    scales: np.ndarray
    #: uint8 ``[N, zp_bytes]`` packed zero points, or ``None`` for ORT's default ``2**(bits-1)``.
    zero_points: np.ndarray | None = None
    #: float32 ``[N, K/32]`` added per block (``y += blocksum(x)·minsᵀ``), or ``None``.
    mins: np.ndarray | None = None
    #: float32 ``(a [R, K], b [N, R])``: a low-rank term ``y += (x·aᵀ)·bᵀ`` (a LoRA adapter's,
    #: its scale in ``b``), or ``None``.
    low_rank: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return int(self.b.shape[0])

    @property
    def k(self) -> int:
        return int(self.b.shape[1]) * BLOCK


def why_not(m: BlockMatrix) -> str:
    """Why :func:`nbits_terms` cannot map ``m`` exactly; ``""`` when it can."""
    if m.kind not in EXACT_TYPES:
        return f"{m.kind} has no exact MatMulNBits form (exact: {', '.join(EXACT_TYPES)})"
    size, nbytes = EXACT_TYPES[m.kind]
    if m.cols % size or m.raw.shape[1] != m.cols // size * nbytes:
        return f"a {m.kind} row of {m.cols} elements is not whole blocks of {size} elements in {nbytes} bytes"
    return ""


def nbits_terms(m: BlockMatrix, accuracy_level: int) -> list[NBits] | None:
    """``MatMulNBits`` weights whose outputs sum to ``x·Wᵀ`` exactly as the file means ``W``;
    ``None`` when the type cannot map (see :func:`why_not`)."""
    if why_not(m):
        return None
    if m.kind == "Q4_K":
        return _with_mins(*_q4_k(m), accuracy_level)
    blocks = m.raw.reshape(m.rows, m.cols // BLOCK, EXACT_TYPES[m.kind][1])  # [N, K/32, bytes]
    d = _f16(blocks, 0)
    if m.kind == "Q4_0":
        return [NBits(4, _pack4(_nibbles(blocks[..., 2:])), d)]
    if m.kind == "Q4_1":
        return _with_mins(_nibbles(blocks[..., 4:]), d, _f16(blocks, 2), accuracy_level)
    q = blocks[..., 2:].view(np.int8).astype(np.int16)  # [N, K/32, 32] in -128..127
    if accuracy_level != 0:
        return [NBits(8, (q + 128).astype(np.uint8), d)]
    high, low = q >> 4, q & 0x0F  # q = 16·high + low, high in -8..7, low in 0..15
    return [NBits(4, _pack4((high + 8).astype(np.uint8)), d * 16),
            NBits(4, _pack4(low.astype(np.uint8)), d, _zero_points(m.rows, d.shape[1], 0))]


def _with_mins(q: np.ndarray, d: np.ndarray, mins: np.ndarray, accuracy_level: int) -> list[NBits]:
    """``w = d·q + mins`` per block (q in 0..15): zero point 0 and the block-sum term."""
    if accuracy_level == 0:
        return [NBits(4, _pack4(q), d, _zero_points(*d.shape, 0), mins)]
    # int8 activations: centred weights d·(q-8) keep their rounding errors from adding up
    return [NBits(4, _pack4(q), d, None, mins + 8 * d)]


def _q4_k(m: BlockMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_K matrix as ``(q [N, K/32, 32], scale [N, K/32], min [N, K/32])``, ``w = scale·q + min``."""
    blocks = m.raw.reshape(m.rows, m.cols // 256, 144)  # f16 d, f16 dmin, 12 bytes of 6-bit pairs, 128 of nibbles
    d, dmin, sc = _f16(blocks, 0), _f16(blocks, 2), blocks[..., 4:16]
    scale = np.concatenate([sc[..., 0:4] & 63, (sc[..., 8:12] & 0x0F) | (sc[..., 0:4] >> 6 << 4)], axis=-1)
    low = np.concatenate([sc[..., 4:8] & 63, (sc[..., 8:12] >> 4) | (sc[..., 4:8] >> 6 << 4)], axis=-1)  # [N, S, 8]
    qs = blocks[..., 16:].reshape(m.rows, -1, 4, 32)  # 4 chunks: sub-block 2c in low nibbles, 2c+1 in high
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(m.rows, -1, BLOCK)
    return q, (d[..., None] * scale).reshape(m.rows, -1), -(dmin[..., None] * low).reshape(m.rows, -1)


def with_low_rank(terms: list[NBits], a: np.ndarray, b: np.ndarray) -> list[NBits]:
    """``terms`` plus ``y += (x·aᵀ)·bᵀ`` (``a`` ``[R, K]``, ``b`` ``[N, R]``): a LoRA adapter kept
    beside the file's blocks, which merging it in would no longer match."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = terms[0]
    if a.shape[1] != t.k or b.shape != (t.n, a.shape[0]):
        raise ValueError(f"a low-rank term of shapes {list(a.shape)} and {list(b.shape)} does not fit a "
                         f"[{t.n}, {t.k}] matrix")
    if t.low_rank is not None:
        a, b = np.concatenate([t.low_rank[0], a]), np.concatenate([t.low_rank[1], b], axis=1)
    return [replace(t, low_rank=(a, b)), *terms[1:]]


def _stack_low_rank(terms: tuple[NBits, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """The low-rank terms of matrices stacked along N: ``a`` stacked, ``b`` block-diagonal."""
    if all(t.low_rank is None for t in terms):
        return None
    parts = [t.low_rank or (np.zeros((0, t.k), np.float32), np.zeros((t.n, 0), np.float32)) for t in terms]
    b = np.zeros((sum(t.n for t in terms), sum(a.shape[0] for a, _ in parts)), np.float32)
    row = col = 0
    for a, part in parts:
        b[row : row + part.shape[0], col : col + a.shape[0]] = part
        row, col = row + part.shape[0], col + a.shape[0]
    return np.concatenate([a for a, _ in parts]), b


def concat_rows(parts: list[list[NBits]]) -> list[NBits] | None:
    """Terms of matrices stacked along N (a packed QKV), or ``None`` when their forms differ."""
    if len({len(p) for p in parts}) != 1 or any(len({p[i].bits for p in parts}) != 1 for i in range(len(parts[0]))):
        return None
    out = []
    for terms in zip(*parts, strict=True):
        zps = [t.zero_points if t.zero_points is not None
               else _zero_points(t.n, t.scales.shape[1], 2 ** (t.bits - 1), bits=t.bits) for t in terms]
        has_zp = any(t.zero_points is not None for t in terms)
        has_mins = any(t.mins is not None for t in terms)
        out.append(NBits(
            terms[0].bits, np.concatenate([t.b for t in terms]), np.concatenate([t.scales for t in terms]),
            np.concatenate(zps) if has_zp else None,
            np.concatenate([t.mins if t.mins is not None else np.zeros_like(t.scales) for t in terms])
            if has_mins else None,
            _stack_low_rank(terms),
        ))
    return out


def nbits_nodes(x: str, terms: list[NBits], name: str, *, accuracy_level: int) -> tuple[list, list, str]:
    """ONNX nodes computing ``x·Wᵀ`` from ``terms`` (``x``: float ``[..., K]``):
    ``(nodes, initializers, output name)``, for a builder to add to its graph."""
    from onnx import helper, numpy_helper

    nodes, inits, outs = [], [], []
    for i, t in enumerate(terms):
        p = f"{name}.nbits{i}"
        inputs = [x, p + ".B", p + ".scales"]
        inits += [numpy_helper.from_array(t.b, inputs[1]), numpy_helper.from_array(t.scales.reshape(-1), inputs[2])]
        if t.zero_points is not None:
            inits.append(numpy_helper.from_array(t.zero_points.reshape(-1), p + ".zero_points"))
            inputs.append(p + ".zero_points")
        nodes.append(helper.make_node("MatMulNBits", inputs, [p + ".out"], name=p, domain="com.microsoft", K=t.k,
                                      N=t.n, bits=t.bits, block_size=BLOCK, accuracy_level=accuracy_level))
        outs.append(p + ".out")
        low = _low_rank(t)
        if low is not None:  # y += (x·uᵀ)·vᵀ: two small float MatMuls
            inits += [numpy_helper.from_array(np.ascontiguousarray(low[0].T), p + ".u"),
                      numpy_helper.from_array(np.ascontiguousarray(low[1].T), p + ".v")]
            nodes += [helper.make_node("MatMul", [x, p + ".u"], [p + ".low"], name=p + ".low"),  # [..., R]
                      helper.make_node("MatMul", [p + ".low", p + ".v"], [p + ".low_out"], name=p + ".low_out")]
            outs.append(p + ".low_out")
    while len(outs) > 1:
        out = f"{name}.sum{len(outs)}"
        nodes.append(helper.make_node("Add", outs[-2:], [out], name=out))
        outs[-2:] = [out]
    return nodes, inits, outs[0]


def _low_rank(t: NBits) -> tuple[np.ndarray, np.ndarray] | None:
    """``(u [R, K], v [N, R])`` with ``x·uᵀ·vᵀ`` = the block-sum term plus the low-rank one.

    The block sums are ``x·sᵀ`` with ``s`` 0/1 ``[K/32, K]``, so both terms share one pair of
    MatMuls: an adapter costs no node more than the file's own mins (measured as fast as
    Reshape + ReduceSum)."""
    us, vs = [], []
    if t.mins is not None:
        us.append(np.kron(np.eye(t.k // BLOCK, dtype=np.float32), np.ones((1, BLOCK), np.float32)))
        vs.append(t.mins)
    if t.low_rank is not None:
        us.append(t.low_rank[0])
        vs.append(t.low_rank[1])
    return (np.concatenate(us), np.concatenate(vs, axis=1)) if us else None


def gather_q8_0(m: BlockMatrix) -> tuple[np.ndarray, np.ndarray] | None:
    """``(data, scales)`` for ``GatherBlockQuantized`` (8 bits, default zero point 128, blocks
    of 32 along axis 1) looking rows of a Q8_0 matrix up exactly; ``None`` for other types."""
    if m.kind != "Q8_0" or why_not(m):
        return None
    blocks = m.raw.reshape(m.rows, m.cols // BLOCK, EXACT_TYPES["Q8_0"][1])
    data = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8).reshape(m.rows, m.cols)
    return data, _f16(blocks, 0)


def dequantize(m: BlockMatrix) -> np.ndarray:
    """``m`` as float32 ``[rows, cols]``: every type the gguf package decodes. Q4_0, Q4_1 and
    Q8_0 in whole-matrix numpy: gguf.quants works row group by row group, several times
    slower; these are the same float32 operations, so the same bits (tested)."""
    import gguf

    if m.kind in ("Q4_0", "Q4_1", "Q8_0") and not why_not(m):
        blocks = m.raw.reshape(m.rows, m.cols // BLOCK, EXACT_TYPES[m.kind][1])  # [N, K/32, bytes]
        d = _f16(blocks, 0)[..., None]
        if m.kind == "Q8_0":
            w = d * blocks[..., 2:].view(np.int8).astype(np.float32)
        elif m.kind == "Q4_0":
            w = d * (_nibbles(blocks[..., 2:]).astype(np.float32) - 8.0)
        else:
            w = d * _nibbles(blocks[..., 4:]).astype(np.float32) + _f16(blocks, 2)[..., None]
        return w.reshape(m.rows, m.cols)
    return np.asarray(gguf.quants.dequantize(m.raw, gguf.GGMLQuantizationType[m.kind]), np.float32).reshape(
        m.rows, m.cols)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at byte ``start`` of every block, as float32 ``[N, K/32]``."""
    return np.ascontiguousarray(blocks[..., start : start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes of a 4-bit block -> its 32 values (low nibbles first, then high)."""
    return np.concatenate((qs & 0x0F, qs >> 4), axis=-1)  # [N, K/32, 32]


def _pack4(q: np.ndarray) -> np.ndarray:
    """32 values in 0..15 per block -> MatMulNBits' 16 bytes (element 2i low, 2i+1 high)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _zero_points(rows: int, blocks: int, value: int, *, bits: int = 4) -> np.ndarray:
    """Packed zero points all equal to ``value``: ``[rows, ceil(blocks·bits/8)]`` uint8."""
    if bits == 8:
        return np.full((rows, blocks), value, np.uint8)
    return np.full((rows, (blocks + 1) // 2), value | value << 4, np.uint8)
