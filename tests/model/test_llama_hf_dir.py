"""Hugging Face directories (config.json + safetensors) load into a module that computes
exactly what transformers computes."""

from __future__ import annotations

import json

import pytest
import torch

from plugstack import Model, ModelLoadError
from plugstack.plugins.llama.loader import load_path

PROMPT = [5, 17, 99, 3, 42, 64, 7, 120, 1, 33, 8]
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, initializer_range=0.2)  # fmt: skip


def _tiny_hf(kind: str, tmp_path, *, shard: bool = False):
    """A random transformers model saved with save_pretrained (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed({"llama-untied": 0, "llama-tied": 1, "qwen2-bias": 2}[kind])
    if kind.startswith("llama"):
        cfg = LlamaConfig(**TINY, tie_word_embeddings=(kind == "llama-tied"), rope_theta=10000.0)
        hf = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**TINY, tie_word_embeddings=False, rope_theta=1000000.0)
        hf = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # transformers initialises biases to zero: make them count
            for layer in hf.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    hf = hf.float().eval()
    out = tmp_path / kind
    hf.save_pretrained(out, max_shard_size="100KB" if shard else "10GB")
    return hf, out


@pytest.mark.parametrize("kind", ["llama-untied", "llama-tied", "qwen2-bias"])
def test_hf_directory_matches_transformers(kind, tmp_path, ours, reference):
    hf, out = _tiny_hf(kind, tmp_path)
    model = load_path(out)
    assert isinstance(model, Model) and model.kind == "decoder"
    assert model.module.cfg.tie_embeddings == (kind == "llama-tied")
    assert (model.module.lm_head.weight is model.module.embed_tokens.weight) == (kind == "llama-tied")
    assert model.module.cfg.qkv_bias == (kind == "qwen2-bias")
    assert len(model.weights_digest) == 64
    assert set(model.info["tensor_types"]) == {"F32"} and model.info["format"] == "safetensors"

    # Prompt pass: every position.
    diff = (ours.prefill_all(model.module, PROMPT) - reference.prefill_all(hf, PROMPT)).abs().max()
    assert diff < 1e-4, f"prompt logits differ by {diff}"

    # 64 greedy tokens identical; the prompt pass and 16 cached decode steps within 5e-4.
    mine, my_logits = ours.greedy(model.module, PROMPT, 64, logits=True)
    theirs, their_logits = reference.greedy(hf, PROMPT, 64, logits=True)
    diff = (my_logits[:17] - their_logits[:17]).abs().max()
    assert diff < 5e-4, f"decode logits differ by {diff}"
    assert mine == theirs


def test_sharded_checkpoint_loads_and_digest_covers_every_shard(tmp_path, ours, reference):
    hf, out = _tiny_hf("llama-untied", tmp_path, shard=True)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    model = load_path(out)
    diff = (ours.prefill_all(model.module, PROMPT) - reference.prefill_all(hf, PROMPT)).abs().max()
    assert diff < 1e-4
    # Changing one shard changes the digest.
    before = model.weights_digest
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    shards[-1].write_bytes(bytes(data))
    assert load_path(out).weights_digest != before


def test_context_length_cap(tmp_path):
    from plugstack.plugins.llama.config import LlamaModelConfig
    from plugstack.plugins.llama.loader import load

    _, out = _tiny_hf("llama-tied", tmp_path)
    model = load(LlamaModelConfig(path=str(out), context_length=100))
    assert model.context_length == 100
    assert model.signature.meta["context_length"] == 100
    assert load(LlamaModelConfig(path=str(out), context_length=10_000)).context_length == 256


def test_tokenizer_and_chat_template_from_directory(tmp_path, smollm2_gguf, hf_smollm2_tokenizer):
    """A directory written by transformers (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    _, out = _tiny_hf("llama-tied", tmp_path)
    hf_smollm2_tokenizer.save_pretrained(out)
    model = load_path(out)
    tok = model.tokenizer
    text = "Hello <|im_start|>user 12345 ünïcode 🙂"
    assert tok.encode(text) == hf_smollm2_tokenizer.encode(text, add_special_tokens=True)
    msgs = [{"role": "user", "content": "Hi there"}]
    assert tok.apply_chat_template(msgs) == hf_smollm2_tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )
    assert tok.eos_token_ids and tok.decode(tok.encode(text)) == text


def test_directory_errors(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_path(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(ModelLoadError, match=r"model_type 'gpt_neox'.*Supported model types: llama, qwen2"):
        load_path(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **TINY}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_path(tmp_path)


def test_missing_and_misshapen_tensors_in_directory(tmp_path):
    from safetensors.torch import load_file, save_file

    _, out = _tiny_hf("llama-untied", tmp_path)
    weights = load_file(out / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, out / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"layers\.1\.mlp\.up_proj\.weight.*missing"):
        load_path(out)
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 128)
    save_file(weights, out / "model.safetensors")
    with pytest.raises(
        ModelLoadError, match=r"broken: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' has shape \[64, 128\], exp"
    ):
        load_path(out)
