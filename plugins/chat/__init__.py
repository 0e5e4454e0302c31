"""The ``chat`` application: an interactive terminal chat, or one message per line from a pipe.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports neither torch nor prompt_toolkit; the application class is imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import ChatAppConfig

__all__ = ["ChatAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "chat",
        "plugstack.plugins.chat.app:ChatApp",
        config=ChatAppConfig,
        description="Chat in the terminal (history within the context window, streamed replies); "
        "scriptable from a pipe, one message per line",
    )
