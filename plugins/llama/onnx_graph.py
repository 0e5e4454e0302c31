"""The Llama plugin's ONNX graph builder: its step written with ONNX Runtime's fused operators.

Offered to the ``onnx`` backend as ``Model.builders["onnx"]`` (see ``plugstack.builders``).
The backend's generic path exports the eager module with ``torch.onnx``, which spells
attention out op by op and takes minutes; this builder writes the same step straight from
the weights with ONNX Runtime's contrib operators: ``GroupQueryAttention`` (GQA without
repeating K/V, fed the packed QKV projection and applying the rotary embedding itself),
``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm), and packed QKV and gate/up
projections (one MatMul each, so MatMulNBits quantises bigger matrices). It takes seconds,
and decodes faster.

State layout ``"ragged"``: every row's cache holds its own positions from 0, and
GroupQueryAttention writes a step's new positions right after the row's prefix, whose
length it reads from the attention mask (``seqlens_k = sum(mask) - 1``; the runner fills
the mask with ones then zeros). So the cache of a row never holds padding, and past and
present may share one preallocated buffer that the operator appends to in place (the
runner binds both to it: ``inplace_state``). The rotary embedding is applied at each new
token's cache slot, which in this layout is its position in the sequence: the graph does
not read ``position_ids``. ONNX Runtime's CPU kernel refuses several new tokens on several
rows that already hold a cache (``multi_row_chunks=False``): the runner splits such steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from plugstack.builders import BuiltGraph, GraphRequest
from plugstack.model import Model
from plugstack.nbits import (
    EXACT_TYPES,
    BlockMatrix,
    NBits,
    concat_rows,
    gather_q8_0,
    nbits_nodes,
    nbits_terms,
    why_not,
    with_low_rank,
)

from .hparams import LlamaConfig

log = structlog.get_logger("plugstack.onnx")
#: A LoRA term ``(A [rank, in], scale·B [out, rank])``, float32.
LowRank = tuple[np.ndarray, np.ndarray]


class LlamaOnnxBuilder:
    """``Model.builders["onnx"]`` of the Llama plugin (an ``OnnxGraphBuilder``).

    ``blocks``: the weights as a GGUF file stores them (``GGUFContents.block_matrices``),
    which a ``quantize="native"`` request writes as ``MatMulNBits`` (``plugstack.nbits``);
    ``low_rank``: called on a native build for a LoRA adapter's terms (``Adapter.low_rank``),
    each added beside its matrix's blocks."""

    #: Bump when the graph this module writes changes: part of the backend's cache key.
    version = 8

    def __init__(self, blocks: Mapping[str, BlockMatrix] | None = None, *, cfg: LlamaConfig | None = None,
                 no_blocks: str = "", low_rank: Callable[[], Mapping[str, LowRank]] | None = None) -> None:
        self.blocks = dict(blocks or {})
        #: The hyper-parameters of the Llama this builder was made for (its module may not be built yet).
        self.cfg = cfg
        #: Why there are no blocks though the file had some (fully fine-tuned weights replace them).
        self.no_blocks = no_blocks
        self.low_rank = low_rank

    def declines(self, model: Model, request: GraphRequest) -> str:
        if model.module_built:  # else the plugin made this builder for the module it will build
            from .model import Llama

            if not isinstance(model.module, Llama):
                return f"the module is a {type(model.module).__name__}, not the Llama plugin's Llama"
            if model.module.all_logits:
                return "the model returns logits for every position (all_logits); this graph returns the last"
        elif self.cfg is None:
            return "the module is not built and this builder was not made for it (pass cfg=)"
        if request.dtype != "fp32":
            return f"it writes fp32 graphs, and dtype {request.dtype!r} was asked for"
        if request.quantize not in (None, "native"):
            return f"it writes float or native graphs, not quantize={request.quantize!r}"
        if request.quantize == "native" and self.no_blocks:
            return self.no_blocks
        if request.quantize == "native" and not any(b.kind in EXACT_TYPES for b in self.blocks.values()):
            kinds = sorted({b.kind for b in self.blocks.values()})
            return ("the weights did not come block-quantised from a GGUF file" if not kinds else
                    f"no matrix of the file is in a type native quantisation maps ({', '.join(kinds)}; "
                    f"it maps {', '.join(EXACT_TYPES)})")
        return ""

    def build(self, model: Model, path: Path, request: GraphRequest) -> BuiltGraph:
        native = self.blocks if request.quantize == "native" else None
        low_rank = self.low_rank() if native is not None and self.low_rank is not None else None
        build_llama(model, path, native=native, low_rank=low_rank, accuracy_level=request.accuracy_level)
        return BuiltGraph(state_layout="ragged", inplace_state=True, multi_row_chunks=False)


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _native_terms(blocks: Mapping[str, BlockMatrix], names: list[str], level: int, fallbacks: dict[str, str],
                  low_rank: Mapping[str, LowRank]) -> list[NBits] | None:
    """The MatMulNBits terms of the matrices ``names`` stacked by rows, with the low-rank
    terms of those that have one, or ``None`` (fp32: the module's weights, adapter merged)."""
    parts = []
    for n in names:
        m = blocks.get(n)
        if m is None or m.kind in ("F32", "F16", "BF16"):
            return None  # float in the file: a float MatMul is what it means
        terms = nbits_terms(m, level)
        if terms is None:
            fallbacks[n] = why_not(m)
            return None
        parts.append(with_low_rank(terms, *low_rank[n]) if n in low_rank else terms)
    joined = concat_rows(parts)
    if joined is None:
        kinds = ", ".join(blocks[n].kind for n in names)
        fallbacks[", ".join(names)] = f"packed matrices of different forms ({kinds})"
    return joined


def build_llama(model: Model, path: Path, *, native: Mapping[str, BlockMatrix] | None = None,
                low_rank: Mapping[str, LowRank] | None = None, accuracy_level: int = 4) -> float:
    """Write the fused step graph of ``model`` to ``path``; returns seconds. With ``native``,
    every matrix the file stores in a type ``plugstack.nbits`` maps becomes MatMulNBits, with
    its ``low_rank`` term (a LoRA adapter's) beside it where it has one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    start = time.perf_counter()
    m, cfg, sig = model.module, model.module.cfg, model.signature
    nq, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    eps = float(cfg.rms_norm_eps)
    nodes: list[Any] = []
    inits: list[Any] = []
    blocks = dict(native or {})
    if native is not None and cfg.tie_embeddings and "embed_tokens.weight" in blocks:
        blocks["lm_head.weight"] = blocks["embed_tokens.weight"]  # the file stores the tied matrix once
    fallbacks: dict[str, str] = {}

    def init(name: str, array: np.ndarray) -> str:
        # (not np.ascontiguousarray: it turns 0-d scalars into 1-d arrays)
        inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outputs

    def linear(x: str, params: list[str], name: str) -> str:
        """``x @ Wᵀ`` for the matrices ``params`` stacked by rows (one packed MatMul)."""
        terms = _native_terms(blocks, params, accuracy_level, fallbacks, low_rank or {}) if native is not None else None
        if terms is not None:
            more_nodes, more_inits, out = nbits_nodes(x, terms, name, accuracy_level=accuracy_level)
            nodes.extend(more_nodes)
            inits.extend(more_inits)
            return out
        # torch Linear stores [out, in]; MatMul wants [in, out] (and MatMulNBits quantises it).
        weight = np.concatenate([_np(m.get_parameter(p)) for p in params], axis=0)
        return node("MatMul", [x, init(name, weight.T)], [name + ".out"])[0]

    # -- shared: rotary tables and sequence lengths ---------------------------------------
    inv_freq = _np(m.rotary.inv_freq)
    # One position past the context: the runner parks tokens of rows a step skips there.
    positions = np.arange(cfg.context_length + 1, dtype=np.float32)[:, None] * inv_freq[None, :]
    init("cos_cache", np.cos(positions).astype(np.float32))
    init("sin_cache", np.sin(positions).astype(np.float32))
    init("axis_1", np.array([1], dtype=np.int64))
    init("one_s_i64", np.array(1, dtype=np.int64))
    init("one_s_i32", np.array(1, dtype=np.int32))
    init("last_index", np.array(-1, dtype=np.int64))

    # Each row's cache holds its own positions from 0 ("ragged"): GQA reads a row's length
    # from the mask, which the runner fills with ones then zeros (seqlens_k = ones - 1).
    node("ReduceSum", ["attention_mask", "axis_1"], ["mask_ones"], keepdims=0)  # [B]
    node("Cast", ["mask_ones"], ["mask_ones_i32"], to=TensorProto.INT32)
    node("Sub", ["mask_ones_i32", "one_s_i32"], ["seqlens_k"])
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", "one_s_i64"], ["total_len"], axis=0)  # scalar T
    node("Cast", ["total_len"], ["total_len_i32"], to=TensorProto.INT32)

    # -- layers ----------------------------------------------------------------------------
    lookup = gather_q8_0(blocks["embed_tokens.weight"]) if "embed_tokens.weight" in blocks else None
    if lookup is not None:  # the file's int8 rows, looked up exactly
        node("GatherBlockQuantized", [init("embed_tokens.q8", lookup[0]), "input_ids", init("embed_tokens.scales",
             lookup[1])], ["embeds"], domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=32, bits=8)
    else:
        node("Gather", [init("embed_tokens.weight", _np(m.embed_tokens.weight)), "input_ids"], ["embeds"], axis=0)
    layers = list(m.layers)
    present = {}
    hidden_in = "embeds"
    residual = None
    for i, layer in enumerate(layers):
        p = f"layers.{i}"
        ln_w = init(f"{p}.input_layernorm.weight", _np(layer.input_layernorm.weight))
        if residual is None:
            h = node("SimplifiedLayerNormalization", [hidden_in, ln_w], [f"{p}.ln_in"], axis=-1, epsilon=eps)[0]
            residual = hidden_in
        else:
            h, _, _, residual = node(
                "SkipSimplifiedLayerNormalization", [hidden_in, residual, ln_w],
                [f"{p}.ln_in", "", "", f"{p}.residual_in"], domain="com.microsoft", epsilon=eps,
            )
        a = layer.self_attn
        qkv = linear(h, [f"{p}.self_attn.{x}_proj.weight" for x in "qkv"], f"{p}.self_attn.qkv_proj")
        if a.q_proj.bias is not None:  # Qwen2: q/k/v biases, packed like the weights
            bias = np.concatenate([_np(a.q_proj.bias), _np(a.k_proj.bias), _np(a.v_proj.bias)])
            qkv = node("Add", [qkv, init(f"{p}.self_attn.qkv_bias", bias)], [f"{p}.qkv_biased"])[0]
        # Packed QKV straight into GroupQueryAttention, which applies the rotary itself at
        # each new token's cache slot: its position in the ragged layout.
        k_out, v_out = f"present.{i}.key", f"present.{i}.value"
        attn = node(
            "GroupQueryAttention",
            [qkv, "", "", f"past.{i}.key", f"past.{i}.value", "seqlens_k", "total_len_i32",
             "cos_cache", "sin_cache"],
            [f"{p}.attn", k_out, v_out],
            domain="com.microsoft", num_heads=nq, kv_num_heads=nkv, scale=float(hd) ** -0.5,
            do_rotary=1, rotary_interleaved=0,
        )[0]
        present[i] = (k_out, v_out)
        o = linear(attn, [f"{p}.self_attn.o_proj.weight"], f"{p}.self_attn.o_proj")
        post_w = init(f"{p}.post_attention_layernorm.weight", _np(layer.post_attention_layernorm.weight))
        h2, _, _, residual = node(
            "SkipSimplifiedLayerNormalization", [o, residual, post_w],
            [f"{p}.ln_post", "", "", f"{p}.residual_mid"], domain="com.microsoft", epsilon=eps,
        )
        gate_up = linear(h2, [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"], f"{p}.mlp.gate_up_proj")
        gate, up = node("Split", [gate_up], [f"{p}.gate", f"{p}.up"], axis=-1, num_outputs=2)
        sig_g = node("Sigmoid", [gate], [f"{p}.gate_sigmoid"])[0]
        silu = node("Mul", [gate, sig_g], [f"{p}.gate_silu"])[0]
        act = node("Mul", [silu, up], [f"{p}.act"])[0]
        hidden_in = linear(act, [f"{p}.mlp.down_proj.weight"], f"{p}.mlp.down_proj")

    norm_w = init("norm.weight", _np(m.norm.weight))
    final, _, _, _ = node("SkipSimplifiedLayerNormalization", [hidden_in, residual, norm_w],
                          ["final_norm", "", "", "final_residual"], domain="com.microsoft", epsilon=eps)
    last = node("Gather", [final, "last_index"], ["last_hidden"], axis=1)[0]  # [B, H]
    head = linear(last, ["lm_head.weight"], "lm_head")
    node("Identity", [head], ["logits"])

    # -- graph inputs/outputs follow the signature ---------------------------------------------
    def value_info(name: str) -> Any:
        spec = sig.spec(name)
        elem = TensorProto.FLOAT if spec.dtype in ("float", "float32") else TensorProto.INT64
        return helper.make_tensor_value_info(name, elem, list(spec.shape))

    graph = helper.make_graph(
        nodes, f"{model.name}-fused-step",
        [value_info(n) for n in sig.input_names if n != sig.positions],  # not read: see the docstring
        [value_info(n) for n in sig.output_names],
        initializer=inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        producer_name="plugstack.onnx.fused",
    )
    proto.ir_version = 10
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - start
    if fallbacks:
        log.warning("onnx.native.fallback", model=model.name, matrices=len(fallbacks),
                    first=next(iter(fallbacks.items())), hint="these stay fp32 (exact, slower)")
    log.info("onnx.fused.done", model=model.name, layers=len(layers), seconds=round(seconds, 2),
             native=native is not None, accuracy_level=accuracy_level if native is not None else None,
             bytes=path.stat().st_size, path=str(path))
    return seconds
