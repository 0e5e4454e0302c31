"""The Llama plugin's ONNX graph builder (``Model.builders["onnx"]``): what it accepts, and
that its graph computes what the eager module computes, on tiny models and on SmolLM2.

The real model runs the default configuration, i.e. the fused-operator graph built from
SmolLM2's weights (seconds). The generic torch.onnx export of SmolLM2 takes minutes on two
cores, more than this suite's budget; it is verified against eager on every first build
(``backend.verify``) and by benchmarks/bench_decode.py (variant export-fp32).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from structlog.testing import capture_logs

from plugstack.backends.eager import EagerRunner
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig
from plugstack.builders import GraphRequest, OnnxGraphBuilder
from plugstack.errors import UnsupportedOptionError
from plugstack.plugins.llama.onnx_graph import LlamaOnnxBuilder
from plugstack.testing import SlotDriver, tiny_decoder_model, tiny_recurrent_model

# A prompt whose greedy path has comfortable logit margins (see the notes: some prompts
# start on a near tie that any change of summation order may flip).
PROMPT = "What is the capital of France?"


def greedy(runner, prompt_ids: list[int], steps: int):
    driver = SlotDriver(runner)
    logits, tokens = [driver.feed([prompt_ids])[0]], []
    for _ in range(steps - 1):
        tokens.append(int(logits[-1].argmax()))
        logits.append(driver.feed([[tokens[-1]]])[0])
    tokens.append(int(logits[-1].argmax()))
    return tokens, torch.stack(logits)


def test_the_llama_model_offers_its_builder_through_the_public_door():
    model = tiny_decoder_model()
    builder = model.builders["onnx"]
    assert isinstance(builder, OnnxGraphBuilder) and isinstance(builder, LlamaOnnxBuilder)
    assert builder.declines(model, GraphRequest()) == ""
    assert "fp32" in builder.declines(model, GraphRequest(dtype="fp16"))
    assert "all_logits" in builder.declines(tiny_decoder_model(all_logits=True), GraphRequest())
    other = dataclasses.replace(tiny_recurrent_model(), builders={"onnx": builder})
    assert "not the Llama plugin's Llama" in builder.declines(other, GraphRequest())


def test_the_backend_says_which_path_it_took_and_why(tmp_path):
    cfg = OnnxBackendConfig(cache_dir=str(tmp_path), threads=1)
    with capture_logs() as logs:
        OnnxBackend(cfg).prepare(tiny_decoder_model()).close()
    [path] = [e for e in logs if e["event"] == "onnx.graph"]
    assert path["path"] == "builder" and path["builder"].endswith("LlamaOnnxBuilder")
    all_logits = tiny_decoder_model(all_logits=True)
    with pytest.raises(UnsupportedOptionError, match=r"graph=fused needs the model's own graph builder.*all_logits"):
        OnnxBackend(dataclasses.replace(cfg, graph="fused")).prepare(all_logits)


@pytest.mark.parametrize("kv_cache", ["shared", "concat"])
def test_fused_graph_with_qkv_biases_matches_eager(kv_cache, tmp_path):
    """Qwen2-style q/k/v biases are packed into the fused projection like the weights."""
    from plugstack.plugins.llama.model import Llama, as_model, init_weights
    from plugstack.testing import tiny_llama_config

    cfg = dataclasses.replace(tiny_llama_config(), qkv_bias=True)
    module = init_weights(Llama(cfg), seed=3, std=0.3)
    model = as_model(module, name="tiny-qwen2", weights_digest=f"qwen2-seed3-{kv_cache}")
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(tmp_path), threads=1, kv_cache=kv_cache)).prepare(model)
    assert runner.kv_cache == kv_cache
    eager = EagerRunner(copy.deepcopy(module), model.signature)
    want_tokens, want_logits = greedy(eager, [5, 17, 99, 3], 6)
    got_tokens, got_logits = greedy(runner, [5, 17, 99, 3], 6)
    assert (got_logits - want_logits).abs().max().item() <= 1e-4
    assert got_tokens == want_tokens


@pytest.mark.slow
@pytest.mark.parametrize(("quantize", "level", "variant", "bound"),
                         [(None, None, "fp32", 1e-4), ("auto", None, "native", 1e-3)])
def test_smollm2_onnx_matches_eager_logits_and_greedy_text(quantize, level, variant, bound, smollm2,
                                                           tmp_path_factory):
    """fp32, and the default: the file's own Q4_1/Q8_0 blocks computed in fp32 (native, accuracy_level 0)."""
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("onnx-smollm2")
    options = OnnxBackendConfig(cache_dir=str(cache), threads=2, quantize=quantize, accuracy_level=level)
    runner = OnnxBackend(options).prepare(smollm2)
    manifest = runner.cache_entry.manifest
    assert runner.cache_entry.built and manifest["inputs"]["graph"].endswith("LlamaOnnxBuilder")
    assert manifest["verify"]["variant"] == variant and manifest["graph_features"]["inplace_state"]
    tok = smollm2.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)

    eager = EagerRunner(copy.deepcopy(smollm2.module), smollm2.signature)
    want_tokens, want_logits = greedy(eager, ids, 32)
    got_tokens, got_logits = greedy(runner, ids, 32)

    assert (got_logits - want_logits).abs().max().item() <= bound  # logits reach ~20
    assert tok.decode(got_tokens) == tok.decode(want_tokens)
    assert "Paris" in tok.decode(got_tokens)
    runner.close()


def test_smollm2_native_at_level_4_stays_near_eager(smollm2, tmp_path_factory):
    """int8 activations over the file's own blocks (accuracy_level=4): near eager, not equal to it.
    Teacher-forced on eager's greedy answer, as benchmarks/bench_decode.py measures top-1."""
    cache = tmp_path_factory.mktemp("onnx-smollm2-native4")
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(cache), threads=2, accuracy_level=4)).prepare(smollm2)
    assert runner.cache_entry.manifest["inputs"]["quantize"] == "native"
    tok = smollm2.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]), add_special_tokens=False)
    want_tokens, want_logits = greedy(EagerRunner(copy.deepcopy(smollm2.module), smollm2.signature), ids, 8)
    driver = SlotDriver(runner)
    got_logits = torch.stack([driver.feed([ids])[0]] + [driver.feed([[t]])[0] for t in want_tokens[:-1]])
    runner.close()
    agree = (got_logits.argmax(-1) == torch.tensor(want_tokens)).sum().item()
    assert agree >= 6, f"{agree}/8 steps agree with eager"  # the first is a near tie (margin 0.08)
    assert 1e-4 < (got_logits - want_logits).abs().max().item() / want_logits.abs().max().item() < 0.1
