"""The ``serve`` application: an OpenAI-compatible HTTP server with continuous batching.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports neither torch nor FastAPI; the application class is imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import ServeAppConfig

__all__ = ["ServeAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "serve",
        "plugstack.plugins.serve.app:ServeApp",
        config=ServeAppConfig,
        description="Serve the model over HTTP with the OpenAI API (chat, completions, streaming), "
        "requests batched together",
    )
