"""The example package's model plugin (``model=bigram``) as a third-party model author
would test it: the model kit, the same text on every backend, clear errors."""

from __future__ import annotations

import pytest

import plugstack
from plugstack.testing import ModelConformance
from plugstack_example.bigram import load
from plugstack_example.plugin import BigramConfig


class TestBigram(ModelConformance):
    @pytest.fixture(scope="class")
    def config(self):
        return BigramConfig()

    @pytest.fixture(scope="class")
    def model(self, config):
        return load(config)


@pytest.fixture(scope="module")
def bigram():
    return load(BigramConfig())


@pytest.mark.parametrize("params", [plugstack.SamplingParams(max_new_tokens=40),
                                    plugstack.SamplingParams(max_new_tokens=40, temperature=0.8, seed=3)],
                         ids=["greedy", "sampled"])
def test_the_same_text_on_cpu_and_onnx(bigram, params, tmp_path):
    cpu = plugstack.create_backend("cpu").prepare(bigram)
    onnx = plugstack.create_backend("onnx", cache_dir=str(tmp_path), threads=1).prepare(bigram)
    texts = [plugstack.generate(r, bigram.tokenizer, ["The harbour "], params)[0].text for r in (cpu, onnx)]
    assert texts[0] == texts[1] and len(texts[0]) > 10


def test_options_that_cannot_apply_are_refused_by_name(bigram, tmp_path):
    for options, match in (({"quantize": "int8"}, "found no MatMul to quantise"),
                           ({"kv_cache": "shared"}, r"has no KV cache \(its state is none\)")):
        with pytest.raises(plugstack.UnsupportedOptionError, match=match):
            plugstack.create_backend("onnx", cache_dir=str(tmp_path), threads=1, **options).prepare(bigram)
    with pytest.raises(plugstack.UnsupportedOptionError, match="has none"):
        plugstack.create_backend("cpu", quantize="int8").prepare(bigram)


def test_bad_corpus_and_smoothing_are_clear_errors(tmp_path):
    with pytest.raises(plugstack.ModelLoadError, match="cannot be read"):
        load(BigramConfig(corpus=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(plugstack.ModelLoadError, match="is empty"):
        load(BigramConfig(corpus=str(tmp_path / "empty.txt")))
    with pytest.raises(plugstack.ConfigError, match="must be > 0"):
        load(BigramConfig(smoothing=0))
