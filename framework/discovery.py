"""Importing plugin modules without trusting them.

A plugin module is someone else's code running in every plugstack command. Three faults
must not take the command down with it: an import that never finishes (a network call, a
lock), one that calls ``sys.exit``, and one that prints to stdout (which carries
plugstack's own output, e.g. ``plugstack plugins --json``). :func:`import_plugin` runs
the import in a helper thread with a deadline and turns all three into a broken plugin
or a warning naming it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["IMPORT_TIMEOUT_ENV", "ImportFailed", "StdoutGuard", "import_plugin", "import_timeout"]

IMPORT_TIMEOUT_ENV = "PLUGSTACK_PLUGIN_IMPORT_TIMEOUT"
#: Seconds one plugin module may take to import (a plugin that imports torch at the top
#: takes a few; plugins should keep heavy imports in their factories).
DEFAULT_IMPORT_TIMEOUT = 20.0


class ImportFailed(Exception):
    """A plugin module did not import; the message says how."""


def import_timeout() -> float:
    """The deadline for one plugin import, from ``PLUGSTACK_PLUGIN_IMPORT_TIMEOUT``."""
    raw = os.environ.get(IMPORT_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IMPORT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        from .errors import ConfigError

        raise ConfigError(f"{IMPORT_TIMEOUT_ENV}={raw!r} is invalid: expected a number of seconds > 0.")
    return value


def import_plugin(load: Callable[[], Any], name: str, timeout: float) -> Any:
    """``load()`` (an entry point's import) in a daemon thread; :class:`ImportFailed` if it
    raised, called ``sys.exit`` or did not finish within ``timeout`` seconds (the thread
    is left behind: Python cannot stop it, and it does not keep the process alive)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["module"] = load()
        except BaseException as exc:  # SystemExit included: it must end only this plugin
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"plugstack-import-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ImportFailed(
            f"import did not finish within {timeout:g} s (it may block on the network or a lock); "
            f"set {IMPORT_TIMEOUT_ENV}=<seconds> if it is only slow"
        )
    error = outcome.get("error")
    if isinstance(error, SystemExit):
        raise ImportFailed(f"it called sys.exit({error.code!r}) at import")
    if error is not None:
        raise ImportFailed(f"import failed: {type(error).__name__}: {error}") from error
    return outcome["module"]


class StdoutGuard(io.TextIOBase):
    """Stands in for ``sys.stdout`` during discovery: what a plugin prints goes to stderr,
    and who printed it is counted (``printed``), so stdout stays plugstack's."""

    def __init__(self, who: Callable[[], str | None]) -> None:
        super().__init__()
        self._who = who
        self.current: str | None = None
        self.printed: dict[str, int] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        owner = self._who() or self.current or "?"
        self.printed[owner] = self.printed.get(owner, 0) + len(text)
        sys.stderr.write(text)
        return len(text)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StdoutGuard]:
        saved, sys.stdout = sys.stdout, self
        try:
            yield self
        finally:
            sys.stdout = saved
