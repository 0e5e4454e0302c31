"""Build a Llama decoder's step graph directly from its weights, with ONNX Runtime's fused ops.

The exported graph (``export.py``) is generic but spells attention out op by op. For
plugstack's own Llama module this builder writes the same step with ONNX Runtime's
contrib operators instead: ``GroupQueryAttention`` (GQA without repeating K/V, fed the
packed QKV projection and applying the rotary embedding itself),
``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm), and packed QKV and
gate/up projections (one MatMul each, so MatMulNBits quantises bigger matrices). It
takes seconds instead of the exporter's minutes, and decodes faster.

The step keeps the signature's outputs and its ``attention_mask``: padded positions are
excluded through an additive ``attention_bias`` and GroupQueryAttention masks causally
itself. Padding therefore stays inside the KV cache as it does with the eager module.
(The eager ``causal_mask`` also lets a padded query see itself; a padded position's own
output is never read, so only real positions are compared, and they agree.)

Rotary positions: GroupQueryAttention rotates each new token by its *cache slot*
(``T - S + s``), not by ``position_ids``. For a left-padded row the two differ by the
row's padding, the same for every token of the row, and attention only sees position
differences (RoPE rotates q and k alike, ``<R(a)q, R(b)k> = <q, R(b-a)k>``), so the
result is the same up to float rounding; padded positions are masked either way. Hence
the graph does not even take ``position_ids`` (the runner feeds only the graph's inputs,
one fewer per step): this holds for any caller whose positions advance with the
cache, as the generation loop's do (``cumsum(mask) - 1``). Doing the rotary inside GQA
instead of a Split and two RotaryEmbedding nodes per layer takes 90 nodes off SmolLM2's
step. Verification against the eager module (with the real ``position_ids``) still runs
on the first build, and the conformance kit compares left-padded batches row by row.

The same graph serves both ``backend.kv_cache`` schemes: GroupQueryAttention appends in
place when the runner binds ``past.i.*`` and ``present.i.*`` to one preallocated buffer
(``runner.py``), and concatenates otherwise; the valid length always comes from the
attention mask's width (``seqlens_k``, ``total_sequence_length``), never from the buffer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from plugstack.model import Model

log = structlog.get_logger("plugstack.onnx")

#: Bump when the graph this module writes changes: part of the cache key.
FUSED_FORMAT_VERSION = 4


def supports(model: Model) -> bool:
    """Is ``model`` plugstack's Llama decoder (last-position logits), which this builder knows?"""
    m = model.module
    needed = ("embed_tokens", "layers", "norm", "lm_head", "rotary", "cfg")
    if model.kind != "decoder" or not all(hasattr(m, a) for a in needed):
        return False
    if getattr(m, "all_logits", False) or getattr(m.cfg, "qkv_bias", False):
        return False
    return model.signature.input_names[:3] == ["input_ids", "position_ids", "attention_mask"]


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def build_llama(model: Model, path: Path) -> float:
    """Write the fused fp32 step graph of ``model`` to ``path``; returns seconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    start = time.perf_counter()
    m, cfg, sig = model.module, model.module.cfg, model.signature
    nq, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    eps = float(cfg.rms_norm_eps)
    nodes: list[Any] = []
    inits: list[Any] = []

    def init(name: str, array: np.ndarray) -> str:
        # (not np.ascontiguousarray: it turns 0-d scalars into 1-d arrays)
        inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outputs

    def linear(x: str, weight: np.ndarray, name: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out] (and MatMulNBits quantises it).
        return node("MatMul", [x, init(name, weight.T)], [name + ".out"])[0]

    # -- shared: rotary tables, sequence lengths, attention bias --------------------------
    inv_freq = _np(m.rotary.inv_freq)
    positions = np.arange(cfg.context_length, dtype=np.float32)[:, None] * inv_freq[None, :]
    init("cos_cache", np.cos(positions).astype(np.float32))
    init("sin_cache", np.sin(positions).astype(np.float32))
    init("one_i64", np.array([1], dtype=np.int64))
    init("one_s_i64", np.array(1, dtype=np.int64))
    init("one_s_i32", np.array(1, dtype=np.int32))
    init("ones_2", np.array([1, 1], dtype=np.int64))
    init("axes_1_2", np.array([1, 2], dtype=np.int64))
    init("bias_keep", np.array(0.0, dtype=np.float32))
    init("bias_drop", np.array(np.finfo(np.float32).min, dtype=np.float32))
    init("last_index", np.array(-1, dtype=np.int64))

    # Every row is "full length" T for GQA (seqlens_k = T - 1): the cache holds a row's
    # padding where the eager module's does, and GQA masks causally within that layout.
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", "one_s_i64"], ["total_len"], axis=0)  # scalar T
    node("Cast", ["total_len"], ["total_len_i32"], to=TensorProto.INT32)
    node("Sub", ["total_len_i32", "one_s_i32"], ["last_pos"])
    node("Shape", ["attention_mask"], ["batch_1d"], end=1)  # [B]
    node("Expand", ["last_pos", "batch_1d"], ["seqlens_k"])
    # The bias only drops padded positions: bias[b, 0, s, t] = 0 if mask[b, t] else min.
    node("Shape", ["input_ids"], ["seq_1d"], start=1)  # [S]
    node("Concat", ["ones_2", "seq_1d", "one_i64"], ["bias_shape"], axis=0)  # [1, 1, S, 1]
    node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL)
    node("Where", ["mask_bool", "bias_keep", "bias_drop"], ["bias_bt"])
    node("Unsqueeze", ["bias_bt", "axes_1_2"], ["bias_b11t"])
    node("Expand", ["bias_b11t", "bias_shape"], ["attention_bias"])  # [B, 1, S, T]

    # -- layers ----------------------------------------------------------------------------
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
        qkv_w = np.concatenate([_np(a.q_proj.weight), _np(a.k_proj.weight), _np(a.v_proj.weight)], axis=0)
        qkv = linear(h, qkv_w, f"{p}.self_attn.qkv_proj")
        # Packed QKV straight into GroupQueryAttention, which applies the rotary itself at
        # each new token's cache slot (see the module docstring for why that is exact).
        k_out, v_out = f"present.{i}.key", f"present.{i}.value"
        attn = node(
            "GroupQueryAttention",
            [qkv, "", "", f"past.{i}.key", f"past.{i}.value", "seqlens_k", "total_len_i32",
             "cos_cache", "sin_cache", "", "attention_bias"],
            [f"{p}.attn", k_out, v_out],
            domain="com.microsoft", num_heads=nq, kv_num_heads=nkv, scale=float(hd) ** -0.5,
            do_rotary=1, rotary_interleaved=0,
        )[0]
        present[i] = (k_out, v_out)
        o = linear(attn, _np(a.o_proj.weight), f"{p}.self_attn.o_proj")
        post_w = init(f"{p}.post_attention_layernorm.weight", _np(layer.post_attention_layernorm.weight))
        h2, _, _, residual = node(
            "SkipSimplifiedLayerNormalization", [o, residual, post_w],
            [f"{p}.ln_post", "", "", f"{p}.residual_mid"], domain="com.microsoft", epsilon=eps,
        )
        mlp = layer.mlp
        gate_up = linear(h2, np.concatenate([_np(mlp.gate_proj.weight), _np(mlp.up_proj.weight)], axis=0),
                         f"{p}.mlp.gate_up_proj")
        gate, up = node("Split", [gate_up], [f"{p}.gate", f"{p}.up"], axis=-1, num_outputs=2)
        sig_g = node("Sigmoid", [gate], [f"{p}.gate_sigmoid"])[0]
        silu = node("Mul", [gate, sig_g], [f"{p}.gate_silu"])[0]
        act = node("Mul", [silu, up], [f"{p}.act"])[0]
        hidden_in = linear(act, _np(mlp.down_proj.weight), f"{p}.mlp.down_proj")

    norm_w = init("norm.weight", _np(m.norm.weight))
    final, _, _, _ = node("SkipSimplifiedLayerNormalization", [hidden_in, residual, norm_w],
                          ["final_norm", "", "", "final_residual"], domain="com.microsoft", epsilon=eps)
    last = node("Gather", [final, "last_index"], ["last_hidden"], axis=1)[0]  # [B, H]
    head = linear(last, _np(m.lm_head.weight), "lm_head")
    node("Identity", [head], ["logits"])

    # -- graph inputs/outputs follow the signature ---------------------------------------------
    def value_info(name: str) -> Any:
        spec = sig.spec(name)
        elem = TensorProto.FLOAT if spec.dtype in ("float", "float32") else TensorProto.INT64
        return helper.make_tensor_value_info(name, elem, list(spec.shape))

    graph = helper.make_graph(
        nodes, f"{model.name}-fused-step",
        [value_info(n) for n in sig.input_names if n != "position_ids"],  # not read: see the docstring
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
    log.info("onnx.fused.done", model=model.name, layers=len(layers), seconds=round(seconds, 2),
             bytes=path.stat().st_size, path=str(path))
    return seconds
