"""GGUF files: the real SmolLM2 against transformers' own GGUF loading, tiny files written
the way llama.cpp writes them, and every way a file can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugstack import ModelLoadError
from plugstack.plugins.llama.loader import load_path

# Chat prompts whose greedy path has comfortable logit margins (no near-ties, see the notes).
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "List three primary colors."}],
]


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2, hf_smollm2, ours, reference):
    tok = smollm2.tokenizer
    cfg = smollm2.module.cfg
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert smollm2.info["tensor_types"] == {"F32": 61, "Q8_0": 1, "Q4_1": 210}
    assert smollm2.weights_digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    ids = tok.encode(tok.apply_chat_template(CHATS[0]))
    diff = (ours.prefill_all(smollm2.module, ids) - reference.prefill_all(hf_smollm2, ids)).abs().max()
    assert diff < 1e-4, f"prompt logits differ by {diff}"

    texts = []
    for chat in CHATS:
        ids = tok.encode(tok.apply_chat_template(chat))
        mine, my_logits = ours.greedy(smollm2.module, ids, 64, logits=True)
        theirs, their_logits = reference.greedy(hf_smollm2, ids, 64, logits=True)
        # Row 0 is the prompt pass, rows 1..16 the first 16 cached decode steps.
        diff = (my_logits[:17] - their_logits[:17]).abs().max()
        assert diff < 5e-4, f"decode logits differ by {diff}"
        assert mine == theirs, f"ours: {tok.decode(mine)!r}\ntransformers: {tok.decode(theirs)!r}"
        texts.append(tok.decode(mine))
    assert texts[0].startswith("The capital of France is Paris.")


# -- tiny files ---------------------------------------------------------------------------


@pytest.mark.parametrize(("qtype", "tol"), [("F32", 1e-5), ("F16", 2e-2), ("Q8_0", 5e-2), ("Q4_1", 0.1)])
def test_tiny_gguf_undoes_llama_cpp_permutation(qtype, tol, tmp_path, tiny_state, gguf_writer, ours):
    """q/k rows permuted by the writer (as llama.cpp does) come back in rotate_half layout."""
    state, module = tiny_state
    path = gguf_writer(tmp_path / "tiny.gguf", state, module.cfg, qtype=qtype)
    model = load_path(path)
    # 2 layers: 7 matrices each + the embedding are quantised; the 5 norms stay F32.
    assert model.info["tensor_types"] == ({"F32": 20} if qtype == "F32" else {qtype: 15, "F32": 5})
    q = model.module.layers[0].self_attn.q_proj.weight
    assert (q - module.layers[0].self_attn.q_proj.weight).abs().max() < tol
    prompt = [3, 9, 27, 81, 50, 100]
    diff = (ours.prefill_all(model.module, prompt) - ours.prefill_all(module, prompt)).abs().max()
    assert diff < 50 * tol
    if qtype == "F32":
        assert ours.greedy(model.module, prompt, 32) == ours.greedy(module, prompt, 32)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_fast_dequantisation_is_bit_identical_to_gguf(qtype):
    import gguf

    from plugstack.nbits import BlockMatrix, dequantize

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(dequantize(BlockMatrix(qtype, raw, x.shape[1])), expected)


def test_tiny_gguf_untied_head_and_tokenizer(tmp_path, tiny_llama_config, gguf_writer):
    from plugstack.plugins.llama.model import Llama, LlamaConfig, init_weights

    cfg = LlamaConfig(**{**tiny_llama_config.to_dict(), "tie_embeddings": False})
    module = init_weights(Llama(cfg), seed=3)
    state = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    model = load_path(gguf_writer(tmp_path / "untied.gguf", state, cfg))
    assert model.module.lm_head.weight is not model.module.embed_tokens.weight
    assert torch.equal(model.module.lm_head.weight, module.lm_head.weight)
    tok = model.tokenizer
    assert tok.encode("abc!<|end|>") == [125, 0, 126]  # merges applied, control token whole
    assert tok.eos_token_ids == (126,) and tok.decode([125, 0, 126], skip_special_tokens=True) == "abc!"


def test_tiny_qwen2_gguf_with_qkv_bias(tmp_path, tiny_llama_config, gguf_writer, ours):
    """qwen2 files carry q/k/v biases and are not row-permuted (NeoX-style RoPE)."""
    from plugstack.plugins.llama.model import Llama, LlamaConfig, init_weights

    cfg = LlamaConfig(**{**tiny_llama_config.to_dict(), "qkv_bias": True, "rope_theta": 1e6})
    module = init_weights(Llama(cfg), seed=4, std=0.1)
    state = {k: v.detach().numpy().copy() for k, v in module.state_dict().items() if k != "lm_head.weight"}
    model = load_path(gguf_writer(tmp_path / "qwen.gguf", state, cfg, arch="qwen2"))
    assert model.info["architecture"] == "qwen2" and model.module.cfg.qkv_bias
    assert model.module.cfg.rope_theta == 1e6
    prompt = [1, 2, 3, 40, 50, 60, 70]
    assert (ours.prefill_all(model.module, prompt) - ours.prefill_all(module, prompt)).abs().max() < 1e-5
    assert ours.greedy(model.module, prompt, 24) == ours.greedy(module, prompt, 24)


# -- what can be wrong with a file ----------------------------------------------------------


def test_missing_file_and_bad_magic(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_path(tmp_path / "nope.gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match=r"not a GGUF file: it starts with b'PK\\x03\\x04'"):
        load_path(bad)


@pytest.mark.parametrize("cut", [1_000, 600_000, 60_000_000])
def test_truncated_file(cut, tmp_path, smollm2_gguf):
    """Cut in the metadata, in the tokenizer arrays, and in the tensor data."""
    short = tmp_path / "short.gguf"
    with open(smollm2_gguf, "rb") as src:
        short.write_bytes(src.read(cut))
    with pytest.raises(ModelLoadError, match=r"model file is broken: .*truncated.*short\.gguf"):
        load_path(short)


def test_unknown_architecture(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / "mamba.gguf", state, module.cfg, arch="mamba")
    with pytest.raises(ModelLoadError, match=r"mamba\.gguf: architecture 'mamba' is not supported.*llama, qwen2"):
        load_path(path)


def test_missing_tensor(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / "holey.gguf", state, module.cfg, drop="blk.1.ffn_up.weight")
    with pytest.raises(ModelLoadError, match=r"broken: tensor\(s\) 'blk\.1\.ffn_up\.weight' are missing.*holey\.gguf"):
        load_path(path)


def test_shape_mismatch(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / "odd.gguf", state, module.cfg, reshape=("blk.0.ffn_down.weight", (128, 64)))
    with pytest.raises(
        ModelLoadError,
        match=r"broken: tensor 'blk\.0\.ffn_down\.weight' has shape \[128, 64\], expected \[64, 128\].*odd\.gguf",
    ):
        load_path(path)


def test_unsupported_tensor_type(tmp_path, tiny_state, gguf_writer):
    state, module = tiny_state
    path = gguf_writer(tmp_path / "ints.gguf", state, module.cfg, raw_types={"blk.0.attn_v.weight": "I32"})
    with pytest.raises(ModelLoadError, match=r"ints\.gguf: tensor 'blk\.0\.attn_v\.weight' is stored as I32"):
        load_path(path)
