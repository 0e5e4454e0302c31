"""What a person at a terminal sees while a slow phase runs (a first fetch, a graph build).

The console shows warnings and the answer by default, not INFO logs; without a sign of life
a first run would look hung for twenty seconds. :func:`phase` shows a transient spinner on a
terminal's stderr, and nothing when stderr is not a terminal or INFO logs already say it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["phase"]


def _console_quiet() -> bool:
    """Does stderr's log handler hide INFO lines?"""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    return all(h.level > logging.INFO for h in handlers)


@contextlib.contextmanager
def phase(text: str) -> Iterator[None]:
    """Show ``text`` with a spinner while the block runs (terminal only; public for plugins)."""
    if not (getattr(sys.stderr, "isatty", lambda: False)() and _console_quiet()):
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield
