"""The ``image`` application: ``app.num_images`` PNGs for a prompt, plus ``grid.png``.

Everything is checked before any work: the options before the model loads, the prompt's
words and what the model bounds (steps, the grid's size) before a graph is built. Images
are made in chunks and each chunk's PNGs are written (atomically) as soon as it is done,
so an interrupted run keeps what it finished; ``images.json`` records the prompt, seed,
steps, guidance, backend and files. stdout gets the paths, one per line.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from plugstack.app import App, RunContext
from plugstack.errors import ConfigError
from plugstack.files import atomic_open, atomic_write
from plugstack.images import IMAGE, ImageSampler

from .config import MAX_IMAGES

__all__ = ["ImageApp", "grid", "to_png"]

#: Images denoised together (bounds the memory of one step).
CHUNK = 16
#: The largest grid.png written (pixels), so num_images x scale cannot ask for gigabytes.
MAX_GRID_PIXELS = 64 * 10**6


def check(cfg: Any) -> None:
    """Refuse impossible options before any work (exit 2, naming the option)."""
    if not 1 <= int(cfg.num_images) <= MAX_IMAGES:
        raise ConfigError(f"app.num_images={cfg.num_images}: give 1 to {MAX_IMAGES} images.")
    if not 1 <= int(cfg.scale) <= 64:
        raise ConfigError(f"app.scale={cfg.scale}: give 1 to 64 (pixels per image pixel in the PNGs).")
    if cfg.steps is not None and int(cfg.steps) < 1:
        raise ConfigError(f"app.steps={cfg.steps}: give at least 1 denoising step, or null for the model's default.")
    if cfg.guidance is not None and not (math.isfinite(float(cfg.guidance)) and float(cfg.guidance) >= 0):
        raise ConfigError(f"app.guidance={cfg.guidance}: give a scale >= 0 (0 ignores the prompt), or null.")
    if cfg.columns is not None and int(cfg.columns) < 1:
        raise ConfigError(f"app.columns={cfg.columns}: give at least 1, or null.")
    if cfg.prompt is None or not str(cfg.prompt).strip():
        raise ConfigError('app=image needs a prompt: plugstack app=image model=digits-diffusion "a bold seven"')


def check_sampler(cfg: Any, sampler: ImageSampler, steps: int) -> None:
    """What only the model knows: its step limit and its images' size (the grid is bounded)."""
    if sampler.max_steps is not None and steps > sampler.max_steps:
        raise ConfigError(f"app.steps={steps}: this model takes at most {sampler.max_steps} denoising steps.")
    if sampler.image_shape is not None:
        h, w = sampler.image_shape
        cols = int(cfg.columns) if cfg.columns else math.ceil(math.sqrt(int(cfg.num_images)))
        rows = math.ceil(int(cfg.num_images) / cols)
        pixels = rows * (h + 1) * cols * (w + 1) * int(cfg.scale) ** 2
        if pixels > MAX_GRID_PIXELS:
            raise ConfigError(f"grid.png would have {pixels / 1e6:.0f} million pixels (app.num_images="
                              f"{cfg.num_images}, app.scale={cfg.scale}); the limit is {MAX_GRID_PIXELS // 10**6} "
                              f"million. Lower app.scale or app.num_images.")


class ImageApp(App):
    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        check(cfg)
        sampler = _sampler(ctx)
        prompt = str(cfg.prompt)
        sampler.check_prompt(prompt)
        steps = int(cfg.steps) if cfg.steps is not None else sampler.default_steps
        guidance = float(cfg.guidance) if cfg.guidance is not None else sampler.default_guidance
        check_sampler(cfg, sampler, steps)
        runner = ctx.runner  # (may export a graph: everything that can be refused was)
        start, files, images = time.perf_counter(), [], []
        for first in range(0, int(cfg.num_images), CHUNK):
            count = min(CHUNK, int(cfg.num_images) - first)
            chunk = sampler.sample(runner, prompt, num_images=count, seed=int(cfg.seed), steps=steps,
                                   guidance=guidance, first=first)
            for i, image in enumerate(chunk, start=first):
                files.append(_write_png(ctx.output_dir / f"image-{i:03d}.png", image, int(cfg.scale)))
                print(files[-1], file=ctx.stdout, flush=True)
            images.extend(chunk)
        grid_path = _write_png(ctx.output_dir / "grid.png", grid(np.stack(images), cfg.columns), int(cfg.scale))
        print(grid_path, file=ctx.stdout, flush=True)
        record = {"prompt": prompt, "seed": int(cfg.seed), "num_images": int(cfg.num_images), "steps": steps,
                  "guidance": guidance, "backend": ctx.backend.runs_as() or ctx.cfg.backend.name,
                  "model": ctx.model.name, "weights": ctx.model.source, "files": [p.name for p in files],
                  "grid": grid_path.name}
        atomic_write(ctx.output_dir / "images.json", json.dumps(record, indent=2) + "\n")
        ctx.log.info("image.done", images=len(files), seconds=round(time.perf_counter() - start, 2),
                     directory=str(ctx.output_dir))
        return 0


def _sampler(ctx: RunContext) -> ImageSampler:
    sampler = ctx.model.offers.get(IMAGE)
    if not isinstance(sampler, ImageSampler):
        offered = sorted(ctx.model.offers) or "nothing"
        raise ConfigError(f"model {ctx.model.name!r} makes no images (it offers {offered} to applications); "
                          f"use a text-to-image model, e.g. model=digits-diffusion.")
    return sampler


def grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """``[N, H, W(, 3)]`` tiled row by row with a 1-pixel black border between images."""
    n, h, w = images.shape[:3]
    cols = int(columns) if columns else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, *images.shape[3:]), dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    return out


def to_png(image: np.ndarray, scale: int) -> Any:
    """A Pillow image of ``image`` (floats in [0, 1]), each pixel ``scale`` x ``scale``."""
    from PIL import Image

    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(pixels)  # 2-D: grey (L), [H, W, 3]: RGB


def _write_png(path: Path, image: np.ndarray, scale: int) -> Path:
    with atomic_open(path, "wb") as f:
        to_png(image, scale).save(f, format="PNG")
    return path
