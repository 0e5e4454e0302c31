"""Fixtures of the model-loading tests: transformers as the oracle, tiny checkpoints, greedy loops.

Greedy decoding drives the ``Llama`` module directly (prefill, then argmax steps with
the KV cache), independent of the framework's generation loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run these tests with one intra-op thread, restored afterwards.

    The suite shares 2 cores with other processes; measured here with the machine busy
    (load ~7), SmolLM2 decoded at 1.1 tok/s with 2 threads (threads spin waiting for a
    descheduled sibling) and 9.9 tok/s with 1. What the tests check does not depend on it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- decoding helpers ----------------------------------------------------------------------


def _ours_step(module, ids, past, start):
    import torch

    b, t = ids.shape
    pos = torch.arange(start, start + t)[None].expand(b, t)
    mask = torch.ones(b, start + t, dtype=torch.int64)
    out = module(ids, pos, mask, *past)
    return out[0], list(out[1:])


def _empty_past(module, batch=1):
    import torch

    c = module.cfg
    return [torch.zeros(batch, c.num_kv_heads, 0, c.head_dim) for _ in range(2 * c.num_layers)]


class Ours:
    """Prefill/decode helpers around a ``plugstack.plugins.llama.model.Llama``."""

    @staticmethod
    def prefill_all(module, ids):
        """Logits of every position ``[T, V]`` for ``ids`` (a list)."""
        import torch

        old = module.all_logits
        module.all_logits = True
        try:
            with torch.inference_mode():
                logits, _ = _ours_step(module, torch.tensor([ids]), _empty_past(module), 0)
        finally:
            module.all_logits = old
        return logits[0]

    @staticmethod
    def greedy(module, ids, n, *, logits=False):
        """``n`` greedy tokens; with ``logits=True`` also the ``[n, V]`` logits they were picked from."""
        import torch

        out, rows = [], []
        with torch.inference_mode():
            step, past = _ours_step(module, torch.tensor([ids]), _empty_past(module), 0)
            for i in range(n):
                rows.append(step[0])
                tok = int(step[0].argmax())
                out.append(tok)
                if i + 1 < n:
                    step, past = _ours_step(module, torch.tensor([[tok]]), past, len(ids) + i)
        return (out, torch.stack(rows)) if logits else out


class Reference:
    """The same helpers around a transformers causal LM (the oracle)."""

    @staticmethod
    def prefill_all(hf, ids):
        import torch

        with torch.inference_mode():
            return hf(torch.tensor([ids])).logits[0].float()

    @staticmethod
    def greedy(hf, ids, n, *, logits=False):
        import torch

        out, rows = [], []
        with torch.inference_mode():
            res = hf(torch.tensor([ids]), use_cache=True)
            for i in range(n):
                rows.append(res.logits[0, -1].float())
                tok = int(rows[-1].argmax())
                out.append(tok)
                if i + 1 < n:
                    res = hf(torch.tensor([[tok]]), past_key_values=res.past_key_values, use_cache=True)
        return (out, torch.stack(rows)) if logits else out


@pytest.fixture
def ours():
    return Ours


@pytest.fixture
def reference():
    return Reference


# -- the real model through transformers (slow: load once per session) ----------------------


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own GGUF loading of the same file (dequantised to fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(Path(smollm2_gguf).parent), gguf_file=Path(smollm2_gguf).name, dtype=torch.float32
    )
    return hf.eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(smollm2_gguf).parent), gguf_file=Path(smollm2_gguf).name)


# -- tiny GGUF files written with gguf.GGUFWriter ----------------------------------------------

#: A toy byte-level vocabulary: 124 single "bytes", two merges and two control tokens.
_ALPHABET = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(0xA1, 0xA1 + 30)]


def tiny_vocab(size: int) -> tuple[list[str], list[str], list[int]]:
    tokens = [*_ALPHABET[: size - 4], "ab", "abc", "<|end|>", "<|start|>"]
    merges = ["a b", "ab c"]
    types = [1] * (size - 2) + [3, 3]
    return tokens, merges, types


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows for the llama architecture."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(
    path: Path,
    state: dict[str, np.ndarray],
    cfg,
    *,
    arch: str = "llama",
    qtype: str = "F32",
    drop: str | None = None,
    reshape: tuple[str, tuple[int, ...]] | None = None,
    raw_types: dict[str, str] | None = None,
) -> Path:
    """A GGUF of ``state`` (our parameter names, HF layout) as llama.cpp would write it."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens, merges, types = tiny_vocab(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(cfg.vocab_size - 1)
    w.add_eos_token_id(cfg.vocab_size - 2)
    w.add_add_bos_token(False)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for ours, arr in state.items():
        base, _, suffix = ours.rpartition(".")
        if base.startswith("layers."):
            _, i, rest = base.split(".", 2)
            name = f"blk.{i}.{block[rest]}.{suffix}"
        else:
            name = f"{names[base]}.{suffix}"
        if name == drop:
            continue
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arch == "llama" and ".attn_q." in name:
            arr = llama_cpp_permute(arr, cfg.num_heads)
        elif arch == "llama" and ".attn_k." in name:
            arr = llama_cpp_permute(arr, cfg.num_kv_heads)
        if reshape and reshape[0] == name:
            arr = np.ascontiguousarray(arr.reshape(reshape[1]))
        kind = (raw_types or {}).get(name) or (qtype if arr.ndim == 2 else "F32")
        if kind == "F32":
            w.add_tensor(name, arr)
        elif kind == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        elif kind == "I32":
            w.add_tensor(name, arr.astype(np.int32), raw_dtype=gguf.GGMLQuantizationType.I32)
        else:
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, gguf.quants.quantize(arr, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_state(tiny_llama_config):
    """A random tiny Llama's weights as numpy arrays (HF layout, our names)."""
    from plugstack.plugins.llama.model import Llama, init_weights

    module = init_weights(Llama(tiny_llama_config), seed=1, std=0.1)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items() if k != "lm_head.weight"}, module


@pytest.fixture
def gguf_writer():
    return write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory) -> Path:
    """A valid 2-block llama GGUF (vocab 128, hidden 64, 4 heads over 2 KV heads, F32), written
    once: the base the broken-file tests change."""
    from plugstack.plugins.llama.model import Llama, init_weights
    from plugstack.testing import tiny_llama_config

    cfg = tiny_llama_config(context_length=256)
    module = init_weights(Llama(cfg), seed=1, std=0.1)
    state = {k: v.detach().numpy().copy() for k, v in module.state_dict().items() if k != "lm_head.weight"}
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", state, cfg)
