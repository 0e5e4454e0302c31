"""Quality and speed of the digits diffusion model, on each backend, in one run.

Quality (the shipped checkpoint, or ``--weights``), measured as tests/diffusion does:
- digit accuracy: 20 images per digit ("seven", ...) classified by an SVC fitted on the
  real digits; per digit and mean; and the same with guidance 0 (the prompt ignored);
- bold/light: mean ink of "a bold X" over "a light X" images;
- slant: how often "a X leaning right/left" images lean that way (against the digit's median).

Speed: images per second for ``--images`` images of one prompt (25 DDIM steps) on each
backend, and the ratio to the first (cpu); plus the largest pixel difference from it.

    python benchmarks/bench_digits.py [--backends cpu,onnx] [--threads 2] [--weights PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="cpu,onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="shipped")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()

    import torch

    import plugstack
    from plugstack.plugins.diffusion.config import DigitsDiffusionConfig
    from plugstack.plugins.diffusion.loader import load
    from plugstack.plugins.diffusion.quality import attribute_report, digit_accuracy, digit_classifier

    torch.set_num_threads(args.threads)
    model = load(DigitsDiffusionConfig(weights=args.weights))
    sampler = model.offers["image"]
    runners = {}
    for name in args.backends.split(","):
        runners[name] = plugstack.create_backend(name, threads=args.threads).prepare(model)

    def make(runner, guidance=args.guidance):
        return lambda p, n, seed: sampler.sample(runner, p, num_images=n, seed=seed, steps=args.steps,
                                                 guidance=guidance)

    first = next(iter(runners.values()))
    classify = digit_classifier()
    report = {"weights": model.source, "steps": args.steps, "guidance": args.guidance,
              "digits": digit_accuracy(make(first), classify, per_digit=20),
              "digits_guidance_0": digit_accuracy(make(first, 0.0), classify, per_digit=20),
              "attributes": attribute_report(make(first), per_prompt=20)}
    speed, reference = {}, None
    for name, runner in runners.items():
        make(runner)("a bold seven leaning right", 2, 0)  # warm-up
        start = time.perf_counter()
        images = make(runner)("a bold seven leaning right", args.images, 0)
        seconds = time.perf_counter() - start
        reference = images if reference is None else reference
        speed[name] = {"images_per_s": round(args.images / seconds, 2),
                       "max_pixel_diff_vs_first": float(np.abs(images - reference).max())}
    base = next(iter(speed.values()))["images_per_s"]
    for row in speed.values():
        row["ratio_vs_first"] = round(row["images_per_s"] / base, 2)
    report["speed"] = speed
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
