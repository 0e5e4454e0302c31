"""The application layer's interface: an App runs with a RunContext."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .backend import Backend, Runner
    from .model import Model

__all__ = ["App", "RunContext"]


class App(ABC):
    """An application plugin. ``cfg`` is the composed ``app`` config group."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def run(self, ctx: RunContext) -> int | None:
        """Do the application's work; return a process exit code (``None`` means 0).

        Write the application's output to ``ctx.stdout`` (and nothing else there: logs
        go through ``ctx.log`` to stderr)."""


@dataclass
class RunContext:
    """Everything an application may use. The model and runner are built on first use,
    so an application that needs neither pays for neither."""

    #: The whole composed config (``cfg.app``, ``cfg.model``, ``cfg.backend``, ``cfg.log``).
    cfg: Any
    #: A structlog logger with ``run_id``, ``app``, ``model`` and ``backend`` bound.
    log: Any
    run_id: str
    #: The run's own directory (Hydra's output dir, or a temp dir outside Hydra).
    output_dir: Path
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    _load_model: Callable[[], Model] | None = None
    _make_backend: Callable[[], Backend] | None = None
    _model: Model | None = None
    _backend: Backend | None = None
    _runner: Runner | None = None

    @property
    def model(self) -> Model:
        if self._model is None:
            if self._load_model is None:
                raise RuntimeError("this run context has no model")
            if self._make_backend is not None:
                _ = self.backend  # an unavailable backend fails before the (slow) model load
            self._model = self._load_model()
        return self._model

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self._make_backend is None:
                raise RuntimeError("this run context has no backend")
            self._backend = self._make_backend()
        return self._backend

    @property
    def runner(self) -> Runner:
        """The model prepared on the chosen backend (exported/compiled on first use)."""
        if self._runner is None:
            self._runner = self.backend.prepare(self.model)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
