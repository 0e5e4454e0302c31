"""The generate app's default on the real SmolLM2-135M-Instruct: a stable greedy answer."""

from __future__ import annotations

import io

import pytest
import structlog

from plugstack.app import RunContext
from plugstack.generation import generate
from plugstack.plugins.generate.app import GenerateApp
from plugstack.plugins.generate.config import GenerateAppConfig
from plugstack.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_runner(smollm2):
    from plugstack.backends.eager import EagerRunner

    return EagerRunner(smollm2.module, smollm2.signature)


def test_default_prompt_prints_the_expected_answer(smollm2, smol_runner, tmp_path):
    out = io.StringIO()
    ctx = RunContext(
        cfg=None,
        log=structlog.get_logger("test"),
        run_id="t",
        output_dir=tmp_path,
        stdout=out,
        _model=smollm2,
        _runner=smol_runner,
    )
    assert GenerateApp(GenerateAppConfig()).run(ctx) == 0
    # The default prompt was chosen for its greedy margins (>= 0.86 logits at every step).
    assert out.getvalue() == "The capital of France is Paris.\n"


def test_batched_chat_prompts_stop_at_eos(smollm2, smol_runner):
    tok = smollm2.tokenizer
    questions = ["What is the capital of Japan?", "What is the capital of France? Answer in one sentence."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    results = generate(smol_runner, tok, prompts, SamplingParams(max_new_tokens=16))
    assert [r.text for r in results] == ["The capital of Japan is Tokyo.", "The capital of France is Paris."]
    assert [r.finish_reason for r in results] == ["stop", "stop"]
