"""The ``auto`` backend: probe the backends of ``order`` and delegate to the first available.

Choice, in this order:

1. ``PLUGSTACK_BACKEND=<name>`` in the environment: that backend and no other (if it is
   unavailable, ``auto`` is unavailable with its reason: no silent fallback from an
   explicit choice).
2. Otherwise the first backend of ``backend.order`` (default ``cuda, onnx, cpu``) whose
   ``probe()`` says available. Names no plugin registers are skipped.

Delegates get their own default config (``backend=auto`` has no knobs for them; choose the
backend by name to tune it). The choice is made once per AutoBackend and logged as
``backend.auto.selected`` with the reasons each earlier candidate was skipped. Light
module: probing imports no torch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import structlog

from plugstack.backend import Availability, Backend
from plugstack.errors import BackendUnavailableError, ConfigError, UnknownPluginError, suggestion_text

from .config import ENV_VAR, AutoBackendConfig

if TYPE_CHECKING:
    from plugstack.backend import Runner
    from plugstack.model import Model

log = structlog.get_logger("plugstack.backends.auto")


def _registry() -> Any:
    from plugstack.registry import get_registry

    return get_registry()


@dataclasses.dataclass
class Selection:
    """Outcome of the choice: the backend picked (``None`` if none) and why others were not."""

    name: str | None
    backend: Backend | None
    availability: Availability
    #: Candidate name -> why it was not picked, in the order tried.
    skipped: dict[str, str]
    source: str


class AutoBackend(Backend):
    """Delegates ``probe`` and ``prepare`` to the first available backend (see module docs).
    After the choice, ``capabilities`` are the chosen backend's."""

    capabilities = frozenset({"inference"})

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg if cfg is not None else AutoBackendConfig())
        self._selection: Selection | None = None

    def candidates(self) -> tuple[list[str], str]:
        """The names to try and where they come from (for logs and messages)."""
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced:
            if forced == "auto":
                raise ConfigError(
                    f"{ENV_VAR}=auto would make the auto backend choose itself; name a backend, e.g. cpu."
                )
            return [forced], f"{ENV_VAR}={forced}"
        order = [str(n) for n in self.cfg.order]
        if not order:
            raise ConfigError("backend.order is empty; list backends to try, e.g. backend.order=[cuda,onnx,cpu].")
        return order, "backend.order"

    def select(self) -> Selection:
        """Probe candidates once; later calls return the same choice."""
        if self._selection is not None:
            return self._selection
        names, source = self.candidates()
        forced = source != "backend.order"
        registry = _registry()
        skipped: dict[str, str] = {}
        chosen = None
        for name in names:
            if name == "auto":
                skipped[name] = "auto cannot delegate to itself"
                continue
            try:
                entry = registry.get("backend", name)
            except UnknownPluginError as exc:
                if forced:  # the user named it: say where they named it
                    raise ConfigError(
                        f"{source} names no backend.{suggestion_text(name, exc.available)} Set {ENV_VAR} to "
                        f"one of {', '.join(n for n in exc.available if n != 'auto')}, or unset it."
                    ) from None
                skipped[name] = "no plugin registers a backend of that name"
                continue
            backend, availability = entry.probe()  # a broken backend must not take auto down
            if availability.available:
                chosen = Selection(name, backend, availability, skipped, source)
                break
            skipped[name] = availability.reason
        if chosen is None:
            if forced:
                reason = f"{source} chose {names[0]}, which cannot run here: {skipped[names[0]]}"
            else:
                listing = "; ".join(f"{n}: {r}" for n, r in skipped.items())
                reason = f"none of backend.order [{', '.join(names)}] is available. {listing}"
            chosen = Selection(None, None, Availability.no(reason), skipped, source)
            log.warning("backend.auto.none_available", candidates=names, source=source, skipped=skipped)
        else:
            log.info("backend.auto.selected", backend=chosen.name, source=source, skipped=skipped)
            self.capabilities = chosen.backend.capabilities  # type: ignore[misc]
        self._selection = chosen
        return chosen

    @property
    def selected(self) -> str | None:
        """Name of the chosen backend (probing if not done yet); ``None`` if none is available."""
        return self.select().name

    def runs_as(self) -> str | None:
        try:
            return self.select().name
        except (ConfigError, UnknownPluginError):
            return None

    def probe(self) -> Availability:
        try:
            sel = self.select()
        except (ConfigError, UnknownPluginError) as exc:
            return Availability.no(str(exc))
        if sel.name is None:
            return sel.availability
        device = sel.availability.device
        if device is not None:
            extra = {**device.extra, "auto.selected": sel.name, "auto.skipped": dict(sel.skipped)}
            device = dataclasses.replace(device, extra=extra)
        return Availability(True, reason=f"selected {sel.name} ({sel.source})", device=device)

    def training_device(self) -> str:
        """Trains on the first available candidate that can train (cuda, then cpu by default),
        which need not be the one chosen for inference (onnx)."""
        names, _ = self.candidates()
        registry = _registry()
        for name in names:
            if name == "auto" or name not in registry.names("backend"):
                continue
            backend, availability = registry.get("backend", name).probe()
            if availability.available and "training" in backend.capabilities:
                log.info("backend.auto.training", backend=name)
                return backend.training_device()
        raise BackendUnavailableError(f"backend=auto found no backend that can train among {names}: "
                                      f"use backend=cpu or backend=cuda.")

    def reset_peak_memory(self) -> None:
        chosen = self.select().backend
        if chosen is not None:
            chosen.reset_peak_memory()

    def peak_memory(self) -> int | None:
        chosen = self.select().backend
        return chosen.peak_memory() if chosen is not None else None

    def energy_meter(self) -> Any:
        chosen = self.select().backend
        return chosen.energy_meter() if chosen is not None else None

    def prepare(self, model: Model) -> Runner:
        sel = self.select()
        if sel.backend is None:
            todo = (
                f"Unset {ENV_VAR} or name another backend"
                if sel.source != "backend.order"
                else f"Install or fix one of them, or set {ENV_VAR}=<name>"
            )
            raise BackendUnavailableError(f"backend=auto found nothing to run on: {sel.availability.reason} {todo}.")
        return sel.backend.prepare(model)
