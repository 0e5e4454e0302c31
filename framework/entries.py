"""What the registry holds: one :class:`Entry` per registered backend, model or
application, and one :class:`PluginRecord` per discovered plugin (``plugstack plugins``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backend import Availability
from .errors import PluginError

__all__ = ["Entry", "PluginRecord", "import_ref"]


def import_ref(ref: str) -> Any:
    """The object ``"package.module:attr.path"`` names (the module itself without ``:attr``);
    ImportError or AttributeError when it is not there, for the caller to word."""
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    """One registered backend, model or application."""

    kind: str
    name: str
    factory_ref: Callable[..., Any] | str
    #: Entry-point name of the plugin that registered it.
    plugin: str
    config: type | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()

    def load_factory(self) -> Callable[..., Any]:
        """The factory itself, importing ``"module:attr"`` on first use."""
        if not isinstance(self.factory_ref, str):
            return self.factory_ref
        try:
            obj = import_ref(self.factory_ref)
        except Exception as exc:  # a broken plugin must say which plugin it is
            raise PluginError(
                f"Plugin {self.plugin!r} registered {self.kind} {self.name!r} as "
                f"{self.factory_ref!r}, which failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        self.factory_ref = obj
        return obj

    def default_config(self) -> Any:
        """An instance of the plugin's config dataclass with its defaults (or ``None``)."""
        return self.config() if self.config is not None else None

    def create(self, cfg: Any = None) -> Any:
        """Call the factory with ``cfg`` (the composed config group for this kind)."""
        return self.load_factory()(cfg if cfg is not None else self.default_config())

    def probe(self) -> tuple[Any, Availability]:
        """For a backend: ``(backend, availability)`` with its default options. Never raises:
        a backend that fails to import, construct or probe is reported unavailable (with
        ``None`` for the backend) and the error as the reason."""
        try:
            backend = self.create(self.default_config())
        except Exception as exc:
            return None, Availability.no(f"could not be created: {type(exc).__name__}: {exc}")
        try:
            return backend, backend.probe()
        except Exception as exc:
            return None, Availability.no(f"its probe raised {type(exc).__name__}: {exc}")


@dataclass
class PluginRecord:
    """What discovery found for one entry point (shown by ``plugstack plugins``)."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    #: ``"ok"``, ``"broken"`` or ``"disabled"``.
    status: str = "ok"
    error: str | None = None
    provides: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "provides": [{"kind": k, "name": n} for k, n in self.provides],
        }
