"""Logging: structlog on top of the standard library, configured once per run.

Library code logs events with fields (``log.info("onnx.export.done", seconds=3.2)``).
Records go through the standard library so that Hydra's handlers (the console on stderr
and the run directory's log file) receive them; structlog renders them — coloured on a
terminal, JSON lines when asked, and always JSON lines in the run's log file. Values
bound with :func:`bind_run` (``run_id``, ``app``, ``model``, ``backend``) appear on every
line of the run, from any module.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["FORMATS", "LEVELS", "bind_run", "configure"]

FORMATS = ("console", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def _formatter(fmt: str, *, colors: bool = False) -> logging.Formatter:
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        extra = [structlog.processors.format_exc_info, structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        extra = []
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *extra, renderer],
    )


#: Events the console already shows in its own words (``plugstack: error: ...``).
FILE_ONLY_EVENTS = frozenset({"run.failed"})


class _FileOnly(logging.Filter):
    """Keep :data:`FILE_ONLY_EVENTS` off the console (the run's log file still has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (isinstance(msg, dict) and msg.get("event") in FILE_ONLY_EVENTS)


def configure(fmt: str = "console", level: str = "INFO") -> None:
    """Route structlog through the standard library and (re)format the root handlers.

    Handlers Hydra installed are kept: file handlers write JSON lines, stream handlers
    write ``fmt``. Without any handler (outside Hydra) one stderr handler is added.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log.format must be one of {FORMATS}, not {fmt!r}")
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    shown = logging.getLevelName(level.upper())
    kept = min(shown, logging.INFO)  # the run's log file keeps INFO and up whatever the console shows
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.setFormatter(_formatter("json"))
            handler.setLevel(kept)
        elif isinstance(handler, logging.StreamHandler):
            stream = getattr(handler, "stream", None)
            handler.setFormatter(_formatter(fmt, colors=bool(getattr(stream, "isatty", lambda: False)())))
            handler.setLevel(shown)
            if not any(isinstance(f, _FileOnly) for f in handler.filters):
                handler.addFilter(_FileOnly())
    root.setLevel(kept)


def bind_run(**values: Any) -> None:
    """Bind values to every log line of this run (context-local)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**values)
