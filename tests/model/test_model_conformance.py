"""The model kit (plugstack.testing.ModelConformance) on the built-in Llama plugin, loaded
for real from a Hugging Face directory and from a GGUF file, and on the kit's recurrent
model and stateless denoiser: the same checks a third-party model plugin runs."""

from __future__ import annotations

import pytest

from plugstack.testing import ModelConformance, tiny_denoiser_model, tiny_recurrent_model


def _shared_onnx_cache(tmp_path_factory) -> str:
    # The onnx backend tests' session-wide directory: a kit model's graph is exported once.
    path = tmp_path_factory.getbasetemp() / "onnx-shared-cache"
    path.mkdir(exist_ok=True)
    return str(path)


class TestLlamaFromHuggingFaceDirectory(ModelConformance):
    onnx_graphs = ("auto", "export")  # the plugin's fused graph and the generic export

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls, tiny_model_dir):
        from plugstack.plugins.llama.config import LlamaModelConfig

        return LlamaModelConfig(path=str(tiny_model_dir), source=None)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, config):
        from plugstack.plugins.llama.loader import load

        return load(config)


class TestTinyRecurrentModel(ModelConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        return tiny_recurrent_model()

    @pytest.fixture(scope="class")
    @classmethod
    def onnx_cache(cls, tmp_path_factory):
        return _shared_onnx_cache(tmp_path_factory)


class TestTinyDenoiserModel(ModelConformance):
    """A stateless step with float inputs (a diffusion model's): the generic export on onnx."""

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        return tiny_denoiser_model()

    @pytest.fixture(scope="class")
    @classmethod
    def onnx_cache(cls, tmp_path_factory):
        return _shared_onnx_cache(tmp_path_factory)


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
