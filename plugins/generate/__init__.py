"""The ``generate`` application: complete one prompt (streamed) or a file of prompts.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports no torch; the application class is imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import GenerateAppConfig

__all__ = ["GenerateAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "generate",
        "plugstack.plugins.generate.app:GenerateApp",
        config=GenerateAppConfig,
        description="Generate text: stream one prompt to stdout, or a prompt file to JSONL",
    )
