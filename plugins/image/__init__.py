"""The ``image`` application: PNGs from a text prompt, on any backend.

Kept light on purpose: importing this module (plugin discovery) imports no torch; the
application class is imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import ImageAppConfig

__all__ = ["ImageAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "image",
        "plugstack.plugins.image.app:ImageApp",
        config=ImageAppConfig,
        description="Images from a text prompt: one PNG per image plus grid.png in the run directory",
    )
