"""The noise schedule and the DDIM sampling loop, one backend step per denoising step.

The loop only ever calls ``runner.run`` with the step's four inputs, so it runs unchanged
on any backend; the update between steps is a handful of numpy operations on a few
hundred pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from plugstack.errors import GenerationError
from plugstack.images import ImageSampler

from .captions import encode

if TYPE_CHECKING:
    from plugstack.backend import Runner

__all__ = ["DigitsSampler", "alphas_cumprod", "ddim_timesteps"]


def alphas_cumprod(timesteps: int) -> np.ndarray:
    """The cosine schedule's signal fraction ``abar_t`` for t = 0 .. timesteps - 1 (float64)."""
    s = 0.008
    f = np.cos((np.arange(timesteps + 1) / timesteps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from the noisiest down, evenly spaced over the schedule."""
    return [int(t) for t in np.linspace(timesteps - 1, 0, steps).round()]


class DigitsSampler(ImageSampler):
    """DDIM (eta = 0) with classifier-free guidance, from noise seeded per image."""

    example_prompt = "a bold seven"

    def __init__(self, size: int, timesteps: int, default_steps: int, default_guidance: float) -> None:
        self.size, self.timesteps = size, timesteps
        self.default_steps, self.default_guidance = default_steps, default_guidance
        self.max_steps, self.image_shape = timesteps, (size, size)
        self.abar = alphas_cumprod(timesteps)

    def check_prompt(self, prompt: str) -> None:
        encode(prompt)

    def noise(self, seed: int, first: int, count: int) -> np.ndarray:
        """The starting noise ``[count, 1, S, S]``: image ``i`` from its own generator."""
        return np.stack([np.random.default_rng([seed, i]).standard_normal((1, self.size, self.size))
                         for i in range(first, first + count)]).astype(np.float32)

    def sample(self, runner: Runner, prompt: str, *, num_images: int, seed: int, steps: int,
               guidance: float, first: int = 0) -> np.ndarray:
        if steps < 1 or steps > self.timesteps:
            raise GenerationError(f"steps={steps}: give 1 to {self.timesteps} denoising steps.")
        tokens = np.tile(np.asarray(encode(prompt), dtype=np.int64), (num_images, 1))
        x = self.noise(seed, first, num_images)
        scale = np.full(num_images, guidance, dtype=np.float32)
        x0 = x
        ts = ddim_timesteps(self.timesteps, steps)
        for i, t in enumerate(ts):
            feeds = {"sample": x, "timestep": np.full(num_images, t, dtype=np.int64), "tokens": tokens,
                     "guidance": scale}
            eps = _numpy(runner.run(_as_inputs(runner, feeds)).outputs["noise"])
            x, x0 = self.update(x, eps, t, ts[i + 1] if i + 1 < len(ts) else None)
        return ((x0[:, 0] + 1) / 2).clip(0, 1)

    def update(self, x: np.ndarray, eps: np.ndarray, t: int, t_next: int | None) -> tuple[np.ndarray, np.ndarray]:
        """One DDIM step from ``t`` to ``t_next`` (``None``: the end): (x at t_next, clean estimate)."""
        a = self.abar[t]
        x0 = ((x - np.sqrt(1 - a) * eps) / np.sqrt(a)).clip(-1, 1)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)  # the noise consistent with the clipped estimate
        if t_next is None:
            return x0, x0
        a_next = self.abar[t_next]
        return (np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps).astype(np.float32), x0


def _as_inputs(runner: Runner, feeds: dict[str, np.ndarray]) -> dict:
    """numpy feeds as the runner takes them (torch tensors unless it takes numpy)."""
    if getattr(runner, "accepts_numpy", False):
        return feeds
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
