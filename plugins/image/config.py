"""Options of the ``image`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass
from typing import Optional

#: The most images one run makes (each is held in memory until the grid is drawn).
MAX_IMAGES = 1024


@dataclass
class ImageAppConfig:
    """Images from a text prompt (``app=image``), with any model that offers an image sampler."""

    name: str = "image"
    #: The prompt (or give it as words: `plugstack app=image model=digits-diffusion "a bold seven"`).
    prompt: Optional[str] = None
    #: How many images (1 to 1024).
    num_images: int = 16
    #: Seed of the starting noise: the same seed gives the same images on a given backend.
    seed: int = 0
    #: Denoising steps; null = the model's default.
    steps: Optional[int] = None
    #: Classifier-free guidance scale (0 ignores the prompt); null = the model's default.
    guidance: Optional[float] = None
    #: Each image pixel becomes scale x scale pixels in the PNGs (nearest neighbour), for viewing.
    scale: int = 8
    #: Images per row of grid.png; null = about the square root of num_images.
    columns: Optional[int] = None
