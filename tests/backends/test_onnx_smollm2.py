"""The real default model on the onnx backend: same logits and same text as eager PyTorch.

Runs the default configuration, i.e. the fused-operator graph built from SmolLM2's weights
(seconds). The generic torch.onnx export of SmolLM2 takes 1-5 minutes on two cores, more
than this suite's budget; it is verified against eager on every first build
(``backend.verify``) and by benchmarks/bench_decode.py (variant export-fp32).
"""

from __future__ import annotations

import copy

import pytest
import torch

from plugstack.backends.eager import EagerRunner
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.config import OnnxBackendConfig

# A prompt whose greedy path has comfortable logit margins (see the notes: some prompts
# start on a near tie that any change of summation order may flip).
PROMPT = "What is the capital of France?"


def greedy(runner, prompt_ids: list[int], steps: int):
    t = len(prompt_ids)
    feed = {"input_ids": torch.tensor([prompt_ids]), "position_ids": torch.arange(t)[None],
            "attention_mask": torch.ones(1, t, dtype=torch.int64)}
    out = runner.run(feed, runner.new_state(1))
    logits, tokens = [out.outputs["logits"][0]], []
    for i in range(steps - 1):
        tokens.append(int(logits[-1].argmax()))
        feed = {"input_ids": torch.tensor([[tokens[-1]]]), "position_ids": torch.tensor([[t + i]]),
                "attention_mask": torch.ones(1, t + i + 1, dtype=torch.int64)}
        out = runner.run(feed, out.state)
        logits.append(out.outputs["logits"][0])
    tokens.append(int(logits[-1].argmax()))
    return tokens, torch.stack(logits)


@pytest.mark.slow
def test_smollm2_onnx_fp32_matches_eager_logits_and_greedy_text(smollm2, tmp_path_factory):
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("onnx-smollm2")
    runner = OnnxBackend(OnnxBackendConfig(cache_dir=str(cache), threads=2)).prepare(smollm2)
    manifest = runner.cache_entry.manifest
    assert runner.cache_entry.built and manifest["graph"] == "fused" and manifest["verify"]["variant"] == "fp32"
    tok = smollm2.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)

    eager = EagerRunner(copy.deepcopy(smollm2.module), smollm2.signature)
    want_tokens, want_logits = greedy(eager, ids, 32)
    got_tokens, got_logits = greedy(runner, ids, 32)

    assert (got_logits - want_logits).abs().max().item() <= 1e-4
    assert tok.decode(got_tokens) == tok.decode(want_tokens)
    assert "Paris" in tok.decode(got_tokens)
    runner.close()
