"""Measure whether generated digits follow their prompts (used by the tests and the benchmark).

A support-vector classifier trained on the real digits (seen through the same upsampling
the model was trained on, then pooled back to 8x8) judges which digit an image shows; ink
and slant are measured exactly as the training captions were (:mod:`.data`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .captions import NUMBER_WORDS
from .data import digits, ink, slant

__all__ = ["attribute_report", "digit_accuracy", "digit_classifier"]


def _features(images: np.ndarray) -> np.ndarray:
    """``[N, S, S]`` in [0, 1] -> 8x8 mean-pooled rows on the digits' 0..16 scale."""
    n, s, _ = images.shape
    f = s // 8
    return images.reshape(n, 8, f, 8, f).mean((2, 4)).reshape(n, 64) * 16


def digit_classifier(size: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(images [N, size, size]) -> digits [N]``, an SVC fitted on every real digit
    (98-99% accurate on held-out real digits)."""
    from sklearn.svm import SVC

    data = digits(size)
    labels = np.array([int(a["digit"]) for a in data.attributes])
    svc = SVC(gamma=0.001, C=10.0).fit(_features(data.images), labels)
    return lambda images: svc.predict(_features(images))


Generate = Callable[[str, int, int], np.ndarray]  # (prompt, count, seed) -> images


def digit_accuracy(generate: Generate, predict: Callable[[np.ndarray], np.ndarray], *, per_digit: int = 20,
                   seed: int = 0, words: bool = True) -> dict[str, Any]:
    """How often ``generate("seven", ...)`` images are classified as a 7, per digit."""
    per: dict[int, float] = {}
    for d in range(10):
        images = generate(NUMBER_WORDS[d] if words else str(d), per_digit, seed + d)
        per[d] = float((predict(images) == d).mean())
    return {"mean": float(np.mean(list(per.values()))), "per_digit": per}


def attribute_report(generate: Generate, *, digits_: tuple[int, ...] = (0, 2, 3, 4, 7), per_prompt: int = 10,
                     seed: int = 0) -> dict[str, Any]:
    """Bold against light ink, and the slant's sign against the asked lean, per digit.

    Slant is measured against the digit's own typical shear (the training data's median),
    as the captions' thirds were: "leaning right" means more than this digit usually does;
    ``slant_absolute_sign_follows`` also reports the plain sign (> 0 for right)."""
    data = digits(16)
    labels = np.array([int(a["digit"]) for a in data.attributes])
    typical = {d: float(np.median(slant(data.images[labels == d]))) for d in range(10)}
    bolder, signs, raw = {}, [], []
    for d in digits_:
        name = NUMBER_WORDS[d]
        bold, light = generate(f"a bold {name}", per_prompt, seed), generate(f"a light {name}", per_prompt, seed)
        bolder[d] = float(ink(bold).mean() / max(ink(light).mean(), 1e-9))
        right = generate(f"a {name} leaning right", per_prompt, seed)
        left = generate(f"a {name} leaning left", per_prompt, seed)
        signs += list(slant(right) > typical[d]) + list(slant(left) < typical[d])
        raw += list(slant(right) > 0) + list(slant(left) < 0)
    return {"bold_over_light_ink": bolder, "slant_sign_follows": float(np.mean(signs)),
            "slant_absolute_sign_follows": float(np.mean(raw))}
