"""Plugin discovery and the registry of backends, models and applications.

Plugins (built-in and third-party alike) are modules published under the ``plugstack``
entry-point group. Each one is imported and registered on its own: a plugin that fails
to import, or whose registration hook raises, is recorded as broken with its error and
everything else keeps working. ``PLUGSTACK_STRICT_PLUGINS=1`` turns such failures into
errors (for plugin authors' CI); ``PLUGSTACK_DISABLE_PLUGINS=a,b`` skips named plugins.

Nothing here imports torch or onnxruntime: factories given as ``"module:attr"`` strings
are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy
import structlog

from . import hookspecs
from .backend import Availability
from .errors import DuplicatePluginError, PluginError, UnknownPluginError

__all__ = ["KINDS", "Entry", "PluginRecord", "Registry", "get_registry", "reset_registry"]

log = structlog.get_logger("plugstack.registry")

#: The kinds of things plugins register, with the hook that registers each.
KINDS = {
    "backend": "plugstack_register_backends",
    "model": "plugstack_register_models",
    "app": "plugstack_register_apps",
}
ENTRY_POINT_GROUP = "plugstack"
STRICT_ENV = "PLUGSTACK_STRICT_PLUGINS"
DISABLE_ENV = "PLUGSTACK_DISABLE_PLUGINS"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


def schema_name(kind: str, name: str) -> str:
    """Root ConfigStore name of a plugin's config schema (see ``Register``)."""
    return f"plugstack_{kind}_{name}".replace("-", "_")


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
        module_name, _, attr = self.factory_ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
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


class Registry:
    """Discovers plugins and answers "which factory is behind this name?"."""

    def __init__(
        self,
        *,
        strict: bool | None = None,
        disabled: Iterable[str] | None = None,
        entry_points: Sequence[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        self.strict = _env_flag(STRICT_ENV) if strict is None else strict
        self.disabled = _env_list(DISABLE_ENV) if disabled is None else set(disabled)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        if entry_points is None:
            entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        for ep in entry_points:
            self._load_entry_point(ep)

    # -- discovery -------------------------------------------------------------------

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        if ep.name in self.plugins:
            # Two distributions claim one plugin name: keep the first, report the second.
            first = self.plugins[ep.name]
            record.name = f"{ep.name} ({record.distribution})"
            self._fail(record, f"plugin name {ep.name!r} is already taken by {first.distribution}")
            return
        self.plugins[ep.name] = record
        if ep.name in self.disabled:
            record.status = "disabled"
            return
        try:
            module = ep.load()
        except Exception as exc:
            self._fail(record, f"import failed: {type(exc).__name__}: {exc}", exc)
            return
        self.register_plugin(module, ep.name, record=record)

    def register_plugin(self, plugin: ModuleType | object, name: str, *, record: PluginRecord | None = None) -> None:
        """Register a plugin object directly (tests, notebooks, embedding applications)."""
        if record is None:
            record = self.plugins.setdefault(name, PluginRecord(name=name, module=repr(plugin)))
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # e.g. a hookimpl whose signature does not match its spec
            self._fail(record, f"registration failed: {type(exc).__name__}: {exc}", exc)
            return
        for kind, hook_name in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name == name:
                    self._call_register_hook(impl, kind, record)
                    if record.status == "broken":
                        return

    def _call_register_hook(self, impl: pluggy.HookImpl, kind: str, record: PluginRecord) -> None:
        added: list[Entry] = []

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            config: type | None = None,
            description: str = "",
            aliases: Sequence[str] = (),
            override: bool = False,
        ) -> None:
            entry = Entry(kind, name, factory, record.name, config, description, tuple(aliases))
            self._add(entry, override=override)
            added.append(entry)
            record.provides.append((kind, name))

        try:
            impl.function(register=register)
        except DuplicatePluginError as exc:
            self._fail(record, str(exc), exc)
        except Exception as exc:
            self._fail(record, f"{impl.function.__name__} raised {type(exc).__name__}: {exc}", exc)
        if record.status == "broken":
            # Half a plugin is worse than none: drop what it registered before failing.
            for entry in added:
                self._remove(entry)
            record.provides.clear()

    def _add(self, entry: Entry, *, override: bool) -> None:
        table, aliases = self._entries[entry.kind], self._aliases[entry.kind]
        for key in (entry.name, *entry.aliases):
            owner = table.get(key) or table.get(aliases.get(key, ""))
            if owner is not None and not override:
                raise DuplicatePluginError(entry.kind, key, owner.plugin, entry.plugin)
        if override and entry.name in table:
            old = table[entry.name].plugin
            log.info("plugin.override", kind=entry.kind, name=entry.name, old=old, new=entry.plugin)
        table[entry.name] = entry
        for alias in entry.aliases:
            aliases[alias] = entry.name

    def _remove(self, entry: Entry) -> None:
        if self._entries[entry.kind].get(entry.name) is entry:
            del self._entries[entry.kind][entry.name]
        for alias in entry.aliases:
            self._aliases[entry.kind].pop(alias, None)

    def _fail(self, record: PluginRecord, message: str, exc: BaseException | None = None) -> None:
        record.status, record.error = "broken", message
        if self.strict:
            raise PluginError(f"Plugin {record.name!r} ({record.module}) is broken: {message}") from exc
        log.warning(
            "plugin.broken",
            plugin=record.name,
            module=record.module,
            error=message,
            hint=f"fix or uninstall it, or set {DISABLE_ENV}={record.name}",
        )

    # -- lookup ----------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` (or an alias); UnknownPluginError with suggestions if none."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        table = self._entries[kind]
        entry = table.get(name) or table.get(self._aliases[kind].get(name, ""))
        if entry is not None:
            return entry
        err = UnknownPluginError(kind, name, [*table, *self._aliases[kind]])
        unusable = [p for p in self.plugins.values() if p.status != "ok" and name in (p.name, p.name.split(" ")[0])]
        if unusable:
            p = unusable[0]
            detail = f"disabled by {DISABLE_ENV}" if p.status == "disabled" else f"broken: {p.error}"
            err.args = (f"{err.args[0]} Note: plugin {p.name!r} is {detail}.",)
        raise err

    # -- hooks other than registration -----------------------------------------------

    def config_searchpaths(self) -> list[tuple[str, str]]:
        """(plugin name, search-path entry) pairs contributed by plugins, in load order."""
        found: list[tuple[str, str]] = []
        for impl in self.pm.hook.plugstack_config_searchpath.get_hookimpls():
            record = self.plugins.get(impl.plugin_name)
            if record is not None and record.status != "ok":
                continue
            try:
                result = impl.function()
            except Exception as exc:
                if record is not None:
                    self._fail(record, f"plugstack_config_searchpath raised {type(exc).__name__}: {exc}", exc)
                continue
            paths = [result] if isinstance(result, str) else list(result or ())
            found += [(impl.plugin_name, p) for p in paths]
        return found

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin, each isolated from the others' errors."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                if self.strict:
                    raise PluginError(f"Plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
                log.warning(
                    "plugin.hook_failed", plugin=impl.plugin_name, hook=hook_name, error=f"{type(exc).__name__}: {exc}"
                )

    def store_schemas(self) -> None:
        """Put every plugin's config dataclass into Hydra's ConfigStore (root level)."""
        from hydra.core.config_store import ConfigStore

        cs = ConfigStore.instance()
        for kind in KINDS:
            for entry in self.entries(kind):
                if entry.config is not None:
                    cs.store(name=schema_name(kind, entry.name), node=entry.config)


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, discovering plugins on first call."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin at run time)."""
    global _registry
    with _lock:
        _registry = None
