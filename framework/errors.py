"""The exceptions plugstack raises on purpose.

Every message says what was wrong, what was expected and what to do about it. The CLI
prints ``str(error)`` without a traceback for these; anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "DuplicatePluginError",
    "EngineClosedError",
    "GenerationError",
    "ModelLoadError",
    "PluginError",
    "PlugstackError",
    "QueueFullError",
    "StorageError",
    "Terminated",
    "UnknownPluginError",
    "UnsupportedOptionError",
    "close_matches",
]


class PlugstackError(Exception):
    """Base class of all errors that carry a message meant for the user."""


class PluginError(PlugstackError):
    """A plugin failed to import, register or run."""


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    """Names in ``choices`` that look like a typo of ``word`` (best first)."""
    return difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)


def suggestion_text(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    matches = close_matches(word, choices)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


class UnknownPluginError(PluginError, LookupError):
    """A backend, model or application name that no plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind, self.name = kind, name
        self.available = sorted(available)
        listing = ", ".join(self.available) or "(none)"
        super().__init__(
            f"Unknown {kind} {name!r}.{suggestion_text(name, self.available)} "
            f"Available {kind}s: {listing}. "
            f"Run `plugstack plugins` to see every plugin, including broken ones."
        )


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name for the same kind."""

    def __init__(self, kind: str, name: str, first: str, second: str, origins: tuple[str, str] | None = None) -> None:
        where = f" ({origins[0]} and {origins[1]})" if origins else ""
        super().__init__(
            f"Both plugin {first!r} and plugin {second!r}{where} register a {kind} named {name!r}. "
            f"Rename one, disable one with PLUGSTACK_DISABLE_PLUGINS={second}, "
            f"or register with override=True if replacing it is intended."
        )


class ConfigError(PlugstackError, ValueError):
    """A composed configuration value is invalid."""


class BackendUnavailableError(PlugstackError):
    """The chosen backend cannot run on this machine."""


class UnsupportedOptionError(ConfigError):
    """A backend, model or app got an option value it does not support."""


class ModelLoadError(PlugstackError):
    """Model weights, tokenizer or metadata are missing, corrupt or unsupported."""


class GenerationError(PlugstackError, ValueError):
    """Invalid generation request: sampling parameters, prompt length, stop strings.

    ``param`` names the request parameter to blame where there is one (a server reports it)."""

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(PlugstackError):
    """A request came while the engine's waiting queue was full: try again later."""


class EngineClosedError(PlugstackError):
    """A request came after the engine stopped taking requests (shutting down, or stopped)."""


class StorageError(PlugstackError):
    """A directory plugstack writes to cannot be used: not writable, not a directory, disk
    full, or locked by a process that never lets go. The message names the path, the OS
    reason and the setting to change."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop the way Ctrl-C stops (finished work kept, ``run.json`` written)."""
