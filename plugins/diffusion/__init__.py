"""The ``digits-diffusion`` model plugin: a text-to-image denoiser trained by plugstack itself.

Kept light on purpose: importing this module (plugin discovery) imports no torch; the loader
is named as a string and imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import DigitsDiffusionConfig

__all__ = ["DigitsDiffusionConfig", "plugstack_register_models"]


@hookimpl
def plugstack_register_models(register):
    register(
        "digits-diffusion",
        "plugstack.plugins.diffusion.loader:load",
        config=DigitsDiffusionConfig,
        description="Text-to-image diffusion (UNet, DDIM, classifier-free guidance) of handwritten digits, "
        "e.g. \"a bold seven leaning right\"; trained with app=train",
    )
