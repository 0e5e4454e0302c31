"""The interface a text-to-image model offers ``app=image`` (``plugstack.ImageSampler``).

The model owns its sampling loop (noise schedule, guidance, the update rule) and runs
every denoising step through the :class:`plugstack.Runner` it is handed, so the same
loop runs on ``cpu``, ``cuda`` or ``onnx`` without knowing which. The app owns the rest:
seeds, files, the grid, the run record. A model offers it as ``offers={"image": sampler}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .backend import Runner

__all__ = ["IMAGE", "ImageSampler"]

#: The key of :attr:`plugstack.Model.offers` under which a model offers its sampler.
IMAGE = "image"


class ImageSampler(ABC):
    """Turns a text prompt into images, one denoising step at a time through a Runner."""

    #: Denoising steps when the caller gives none.
    default_steps: int = 50
    #: Classifier-free guidance scale when the caller gives none (0: unconditional).
    default_guidance: float = 1.0
    #: Most denoising steps the sampler can take (``None``: no limit); callers check first.
    max_steps: int | None = None
    #: ``(height, width)`` of one image, so a caller can bound what it will write before
    #: any work (``None``: unknown until the first image).
    image_shape: tuple[int, int] | None = None
    #: A prompt the model understands, for callers that need one of their own (``app=bench``).
    example_prompt: str = ""

    @abstractmethod
    def check_prompt(self, prompt: str) -> None:
        """Raise :class:`plugstack.GenerationError` saying what is wrong with ``prompt`` and
        what the model understands. Called before any work is done."""

    @abstractmethod
    def sample(self, runner: Runner, prompt: str, *, num_images: int, seed: int, steps: int,
               guidance: float, first: int = 0) -> np.ndarray:
        """Images ``first .. first + num_images - 1`` for ``prompt``, as floats in [0, 1]:
        ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB). Image ``i`` starts from noise that
        depends only on ``seed`` and ``i``, so a caller may make a long series in chunks."""
