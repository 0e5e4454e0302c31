"""model=digits-diffusion: the model kit's checks, and clear errors for weights that do not fit."""

from __future__ import annotations

import pytest

from plugstack.errors import ConfigError, ModelLoadError
from plugstack.plugins.diffusion.config import DigitsDiffusionConfig
from plugstack.plugins.diffusion.loader import load
from plugstack.testing import ModelConformance


class TestDigitsDiffusion(ModelConformance):
    """The shipped model, as users get it."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return DigitsDiffusionConfig()

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, config):
        return load(config)

    @pytest.fixture(scope="class")
    @classmethod
    def onnx_cache(cls, digits_onnx_cache):
        return digits_onnx_cache


def test_the_model_declares_a_stateless_guided_step_and_offers_train_and_image():
    model = load(DigitsDiffusionConfig(weights="random"))
    sig = model.signature
    assert sig.state_kind == "none" and sig.new_axis is None
    assert sig.input_names == ["sample", "timestep", "tokens", "guidance"] and sig.output_names == ["noise"]
    assert model.kind == "denoiser" and set(model.offers) == {"train", "image"}
    assert model.source.startswith("random init")


def test_random_weights_follow_the_seed():
    import torch

    a, b, c = (load(DigitsDiffusionConfig(weights="random", seed=s)).module for s in (1, 1, 2))
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


@pytest.mark.parametrize(("content", "says"), [
    (None, "no file at"),
    (b"not a safetensors file at all", "not a readable safetensors file"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", "not a readable safetensors file"),
])
def test_weights_that_cannot_be_read_are_a_clear_error(tmp_path, content, says):
    path = tmp_path / "model.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=says):
        load(DigitsDiffusionConfig(weights=str(path)))


def test_weights_of_another_architecture_name_what_to_set(tmp_path):
    from safetensors.torch import save_file

    small = load(DigitsDiffusionConfig(weights="random", channels=[8, 16]))
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.module.unet.state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match=r"Set model\.channels/size/text_width"):
        load(DigitsDiffusionConfig(weights=str(path)))
    assert load(DigitsDiffusionConfig(weights=str(path), channels=[8, 16])).source == str(path)


@pytest.mark.parametrize(("overrides", "says"), [
    ({"channels": [12, 24]}, "multiples of 8"),
    ({"channels": []}, "multiples of 8"),
    ({"size": 18}, "divisible by 4"),
    ({"text_width": 10}, "multiple of 4"),
    ({"timesteps": 1}, "at least 2"),
    ({"caption_dropout": 1.0}, r"\[0, 1\)"),
])
def test_impossible_sizes_are_refused_before_anything_is_built(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load(DigitsDiffusionConfig(weights="random", **overrides))


def test_weights_trained_with_another_schedule_or_size_name_the_options(tmp_path):
    import json

    from safetensors.torch import save_file

    model = load(DigitsDiffusionConfig(weights="random"))
    path = tmp_path / "model.safetensors"
    facts = {**model.info, "timesteps": 50}
    save_file({k: v.contiguous() for k, v in model.module.unet.state_dict().items()}, str(path),
              metadata={"plugstack.trainable": json.dumps(facts)})
    with pytest.raises(ModelLoadError, match=r"trained with model\.timesteps=50.*Set model\.timesteps=50"):
        load(DigitsDiffusionConfig(weights=str(path)))
    assert load(DigitsDiffusionConfig(weights=str(path), timesteps=50, sample_steps=20)).source == str(path)


def test_what_training_prints_is_a_command_that_loads_the_weights():
    trainable = load(DigitsDiffusionConfig(weights="random", channels=[8, 16], text_width=8)).offers["train"]()
    usage = trainable.usage("/w/model.safetensors")
    assert "model.weights=/w/model.safetensors 'model.channels=[8,16]' 'model.text_width=8'" in usage
    assert "timesteps" not in usage and "size" not in usage


def test_a_batch_larger_than_the_data_is_refused_not_waited_for():
    trainable = load(DigitsDiffusionConfig(weights="random", channels=[8, 16])).offers["train"]()
    with pytest.raises(ConfigError, match=r"app\.batch_size=5000"):
        next(trainable.batches("train", batch_size=5000, seed=0))


def test_ranks_stay_in_step_across_epochs():
    import itertools

    trainable = load(DigitsDiffusionConfig(weights="random", channels=[8, 16])).offers["train"]()
    # 4851 images, 2 ranks of 1213: one whole batch each per epoch, the 2425 left over dropped
    a, b = ([x for x, _ in itertools.islice(trainable.batches("train", batch_size=1213, seed=0, rank=r,
                                                             world_size=2), 3)] for r in (0, 1))
    assert [len(x) for x in a] == [len(x) for x in b] == [1213] * 3
    assert all(not (xa == xb).all() for xa, xb in zip(a, b, strict=True))
