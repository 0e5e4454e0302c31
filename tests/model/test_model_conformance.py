"""The model kit (plugstack.testing.ModelConformance) on the built-in Llama plugin, loaded
for real from a Hugging Face directory and from a GGUF file, and on the kit's recurrent
model: the same checks a third-party model plugin runs."""

from __future__ import annotations

import pytest

from plugstack.testing import ModelConformance, tiny_recurrent_model


class TestLlamaFromHuggingFaceDirectory(ModelConformance):
    onnx_graphs = ("auto", "export")  # the plugin's fused graph and the generic export

    @pytest.fixture(scope="class")
    def config(self, tiny_model_dir):
        from plugstack.plugins.llama.config import LlamaModelConfig

        return LlamaModelConfig(path=str(tiny_model_dir), source=None)

    @pytest.fixture(scope="class")
    def model(self, config):
        from plugstack.plugins.llama.loader import load

        return load(config)


class TestTinyRecurrentModel(ModelConformance):
    @pytest.fixture(scope="class")
    def model(self):
        return tiny_recurrent_model()


def test_a_models_context_length_is_one_value():
    import dataclasses

    from plugstack import Model, ModelLoadError
    from plugstack.testing import tiny_decoder_model

    base = tiny_decoder_model(context_length=48)
    assert base.context_length == 48 and base.signature.meta["context_length"] == 48
    bare = dataclasses.replace(base.signature, meta={})
    fields = {"name": "m", "kind": "decoder", "module": base.module, "example_inputs": base.example_inputs}
    assert Model(signature=bare, context_length=32, **fields).signature.meta["context_length"] == 32
    assert Model(signature=dataclasses.replace(bare, meta={"context_length": 16}), **fields).context_length == 16
    with pytest.raises(ModelLoadError, match="give one value"):
        Model(signature=dataclasses.replace(bare, meta={"context_length": 16}), context_length=32, **fields)
