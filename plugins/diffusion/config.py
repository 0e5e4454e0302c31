"""Options of the ``digits-diffusion`` model plugin (the ``model`` config group). Light: no torch.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass, field


@dataclass
class DigitsDiffusionConfig:
    """A small text-to-image diffusion model of handwritten digits (``model=digits-diffusion``)."""

    name: str = "digits-diffusion"
    #: shipped (the checkpoint in the package) | random (fresh weights, to train) | a .safetensors from app=train.
    weights: str = "shipped"
    #: Training data: digits (scikit-learn's, no download) or "package.module:function" returning CaptionedImages.
    data: str = "digits"
    #: Image side in pixels (the digits are upsampled from 8x8).
    size: int = 16
    #: UNet channels per resolution (each level halves the side).
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    #: Width of the caption encoder.
    text_width: int = 64
    #: Diffusion timesteps of the training schedule (cosine).
    timesteps: int = 1000
    #: Denoising steps when app=image gives none (DDIM).
    sample_steps: int = 25
    #: Classifier-free guidance scale when app=image gives none (0: ignore the prompt).
    guidance: float = 3.0
    #: Probability a training caption is emptied (teaches the unconditional prediction guidance needs).
    caption_dropout: float = 0.1
    #: Seed of the random initial weights (weights=random).
    seed: int = 0
