"""The shipped checkpoint draws what the prompt asks: measured by a classifier trained on
the real digits and by the same ink and slant measures the training captions came from."""

from __future__ import annotations

import pytest

#: Denoising steps and guidance of the measurements (the model's defaults).
STEPS, GUIDANCE = 25, 3.0


@pytest.fixture(scope="module")
def generate():
    import plugstack
    from plugstack.plugins.diffusion.loader import load

    model = load()
    runner = plugstack.create_backend("cpu").prepare(model)
    sampler = model.offers["image"]

    def make(prompt, count, seed, guidance=GUIDANCE):
        return sampler.sample(runner, prompt, num_images=count, seed=seed, steps=STEPS, guidance=guidance)

    return make


@pytest.fixture(scope="module")
def classify():
    from plugstack.plugins.diffusion.quality import digit_classifier

    return digit_classifier()


def test_twenty_images_per_digit_are_mostly_that_digit(generate, classify):
    from plugstack.plugins.diffusion.quality import digit_accuracy

    report = digit_accuracy(generate, classify, per_digit=20)
    assert report["mean"] >= 0.8, report
    assert min(report["per_digit"].values()) >= 0.5, report


def test_without_guidance_the_prompt_is_ignored(generate, classify):
    from plugstack.plugins.diffusion.quality import digit_accuracy

    guided = digit_accuracy(generate, classify, per_digit=5, seed=100)["mean"]
    unguided = digit_accuracy(lambda p, n, s: generate(p, n, s, guidance=0.0), classify, per_digit=5, seed=100)["mean"]
    assert unguided < 0.4 < 0.8 <= guided, (unguided, guided)


def test_bold_carries_more_ink_than_light_and_the_slant_follows_the_words(generate):
    from plugstack.plugins.diffusion.quality import attribute_report

    report = attribute_report(generate, per_prompt=10)
    assert all(ratio > 1.1 for ratio in report["bold_over_light_ink"].values()), report
    assert report["slant_sign_follows"] >= 0.8, report  # against the digit's usual lean
    assert report["slant_absolute_sign_follows"] >= 0.8, report  # and plainly: > 0 leans right
