"""Plugin discovery and the registry of backends, models and applications.

Plugins (built-in and third-party alike) are modules published under the ``plugstack``
entry-point group; built-ins are loaded first, so a third-party plugin reusing a built-in's
name is the one reported. Every hook is called through pluggy, once per call, so wrappers,
``tryfirst``/``trylast`` and blocking work as pluggy documents; on top of that each plugin's
implementations are guarded (:mod:`plugstack.isolation`): a plugin that fails to import, or
whose registration hook raises, is recorded as broken with its error, loses everything it
registered, and everything else keeps working. ``PLUGSTACK_STRICT_PLUGINS=1`` turns such
failures into errors (for plugin authors' CI); ``PLUGSTACK_DISABLE_PLUGINS=a,b`` blocks
named plugins in pluggy (``set_blocked``) and never imports them.

Nothing here imports torch or onnxruntime: factories given as ``"module:attr"`` strings
are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy
import structlog

from . import hookspecs
from .discovery import ImportFailed, StdoutGuard, import_plugin, import_timeout
from .entries import Entry, PluginRecord
from .errors import DuplicatePluginError, PluginError, UnknownPluginError
from .isolation import PluginProxy, acting_plugin, track_producers

__all__ = ["KINDS", "Entry", "PluginRecord", "Registry", "get_registry", "reset_registry"]

log = structlog.get_logger("plugstack.registry")

#: The kinds of things plugins register, with the hook that registers each.
KINDS = {
    "backend": "plugstack_register_backends",
    "model": "plugstack_register_models",
    "app": "plugstack_register_apps",
}
ENTRY_POINT_GROUP = "plugstack"
BUILTIN_DISTRIBUTION = "plugstack"
STRICT_ENV = "PLUGSTACK_STRICT_PLUGINS"
DISABLE_ENV = "PLUGSTACK_DISABLE_PLUGINS"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


def _distribution(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _origin(record: PluginRecord) -> str:
    return f"distribution {record.distribution!r}" if record.distribution else repr(record.module)


def schema_name(kind: str, name: str) -> str:
    """Root ConfigStore name of a plugin's config schema (see ``Register``)."""
    return f"plugstack_{kind}_{name}".replace("-", "_")


@dataclass(frozen=True)
class _Failure:
    """One hook implementation that raised during one hook call."""

    plugin: str
    hook: str
    error: BaseException

    def error_text(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"

    def describe(self) -> str:
        return f"{self.hook} raised {self.error_text()}"

    def fatal(self) -> PluginError:
        return PluginError(
            f"Plugin {self.plugin!r} failed in {self.hook}: {self.error_text()}. "
            f"Fix or uninstall it, or set {DISABLE_ENV}={self.plugin}."
        )


#: The failures of the hook call in progress (one list per ``Registry._call``).
_failures: ContextVar[list[_Failure] | None] = ContextVar("plugstack_hook_failures", default=None)


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
        for name in sorted(self.disabled):
            self.pm.set_blocked(name)  # discovery asks pluggy, and skips the import
        self.plugins: dict[str, PluginRecord] = {}
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        if entry_points is None:
            entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        self._import_timeout = import_timeout()
        self._stdout = StdoutGuard(acting_plugin)
        with self._stdout.installed():
            # Built-ins first (a stable sort): a third-party name clashing with one is the loser.
            for ep in sorted(entry_points, key=lambda ep: _distribution(ep) != BUILTIN_DISTRIBUTION):
                self._load_entry_point(ep)
            self._run_registration_hooks({kind: getattr(self.pm.hook, hook) for kind, hook in KINDS.items()})
        for plugin, chars in self._stdout.printed.items():
            log.warning("plugin.printed", plugin=plugin, chars=chars,
                        hint="stdout carries plugstack's output, so it was moved to stderr; plugins should log")

    # -- discovery -------------------------------------------------------------------

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            name=ep.name,
            module=ep.value,
            distribution=_distribution(ep),
            version=dist.version if dist is not None else None,
        )
        if not self._claim(record):
            return
        if self.pm.is_blocked(ep.name):
            record.status = "disabled"  # never imported
            return
        self._stdout.current = record.name
        try:
            module = import_plugin(ep.load, ep.name, self._import_timeout)
        except ImportFailed as exc:
            self._break(record, str(exc), exc.__cause__ or exc)
            return
        finally:
            self._stdout.current = None
        self._register(module, record)

    def _claim(self, record: PluginRecord) -> bool:
        """Give ``record`` its plugin name, unless a plugin loaded earlier has it."""
        first = self.plugins.get(record.name)
        if first is None:
            self.plugins[record.name] = record
            return True
        taken = record.name
        record.name = f"{taken} ({record.distribution or record.module})"
        self.plugins[record.name] = record
        self._break(
            record,
            f"plugin name {taken!r} is already taken by {_origin(first)}, so {_origin(record)} was not "
            f"loaded; publish its entry point under another name",
        )
        return False

    def _register(self, plugin: object, record: PluginRecord) -> bool:
        """Register ``plugin``'s hook implementations, each guarded, with pluggy."""
        try:
            proxy = PluginProxy(plugin, record.name, self.pm, self._hook_failed)
            if self.pm.register(proxy, name=record.name) is None:
                record.status = "disabled"  # blocked through self.pm after discovery
                return False
        except Exception as exc:  # e.g. a hookimpl whose signature does not match its spec
            self._break(record, f"registration failed: {type(exc).__name__}: {exc}", exc)
            return False
        return True

    def register_plugin(self, plugin: ModuleType | object, name: str) -> None:
        """Register a plugin object after discovery (tests, notebooks, embedding
        applications) and run its registration hooks. Only this plugin's implementations
        run (pluggy's ``subset_hook_caller``): other plugins' wrappers do not see this call."""
        record = PluginRecord(name=name, module=repr(plugin))
        if self.pm.is_blocked(name):
            self.plugins.setdefault(name, record).status = "disabled"
            return
        if not (self._claim(record) and self._register(plugin, record)):
            return
        others = [p for p in self.pm.get_plugins() if p is not self.pm.get_plugin(name)]
        self._run_registration_hooks({kind: self.pm.subset_hook_caller(hook, others) for kind, hook in KINDS.items()})

    def _run_registration_hooks(self, callers: dict[str, pluggy.HookCaller]) -> None:
        """Call each registration hook once, then apply the registrations in plugin load
        order: "the first registration wins" does not depend on pluggy's call order."""
        collected: list[tuple[Entry, bool]] = []
        failures: list[_Failure] = []
        for kind, caller in callers.items():
            failures += self._call(caller, register=self._collector(kind, collected))[1]
        for failure in failures:
            self._break(self.plugins[failure.plugin], failure.describe(), failure.error)
        order = {name: i for i, name in enumerate(self.plugins)}
        for entry, override in sorted(collected, key=lambda item: order[item[0].plugin]):
            if self.plugins[entry.plugin].status == "ok":
                self._apply(entry, override)

    def _collector(self, kind: str, into: list[tuple[Entry, bool]]) -> hookspecs.Register:
        """The ``register`` callback of one registration hook call."""

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            config: type | None = None,
            description: str = "",
            aliases: Sequence[str] = (),
            override: bool = False,
        ) -> None:
            plugin = acting_plugin()
            if plugin is None:
                raise PluginError(
                    f"register({name!r}, ...) was called outside a plugstack hook call; "
                    f"call it from your {KINDS[kind]}(register) implementation"
                )
            into.append((Entry(kind, name, factory, plugin, config, description, tuple(aliases)), override))

        return register

    def _apply(self, entry: Entry, override: bool) -> None:
        record = self.plugins[entry.plugin]
        try:
            self._add(entry, override=override)
        except DuplicatePluginError as exc:
            self._break(record, str(exc), exc)
            return
        record.provides.append((entry.kind, entry.name))

    def _add(self, entry: Entry, *, override: bool) -> None:
        table, aliases = self._entries[entry.kind], self._aliases[entry.kind]
        for key in (entry.name, *entry.aliases):
            owner = table.get(key) or table.get(aliases.get(key, ""))
            if owner is not None and not override:
                origins = (_origin(self.plugins[owner.plugin]), _origin(self.plugins[entry.plugin]))
                raise DuplicatePluginError(entry.kind, key, owner.plugin, entry.plugin, origins)
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

    def _break(self, record: PluginRecord, message: str, exc: BaseException | None = None) -> None:
        """Mark a plugin broken and drop its hooks and entries (fatal in strict mode)."""
        if record.status == "broken":
            return  # its first error is the one to fix, and it was logged
        record.status, record.error = "broken", message
        # Half a plugin is worse than none.
        if self.pm.get_plugin(record.name) is not None:
            self.pm.unregister(name=record.name)
        for kind in KINDS:
            for entry in [e for e in self._entries[kind].values() if e.plugin == record.name]:
                self._remove(entry)
        record.provides.clear()
        if self.strict:
            raise PluginError(f"Plugin {record.name!r} ({record.module}) is broken: {message}") from exc
        log.warning(
            "plugin.broken",
            plugin=record.name,
            module=record.module,
            error=message,
            hint=f"fix or uninstall it, or set {DISABLE_ENV}={record.name}",
        )

    # -- calling hooks ---------------------------------------------------------------

    def _call(self, caller: pluggy.HookCaller, **kwargs: Any) -> tuple[Any, list[_Failure]]:
        """Call a hook once through pluggy: its result and the implementations that failed."""
        failures: list[_Failure] = []
        token = _failures.set(failures)
        try:
            result = caller(**kwargs)
        finally:
            _failures.reset(token)
        if self.strict and failures:  # a wrapper swallowed the PluginError: still fatal
            raise failures[0].fatal() from failures[0].error
        return result, failures

    def _hook_failed(self, plugin: str, hook: str, error: BaseException) -> None:
        """Every guard's ``on_error``: note the failure for ``_call``; raise if strict."""
        failure = _Failure(plugin, hook, error)
        failures = _failures.get()
        if failures is not None:
            failures.append(failure)
        if self.strict:
            raise failure.fatal() from error
        if failures is None:  # someone called self.pm.hook.<name>(...) directly
            log.warning("plugin.hook_failed", plugin=plugin, hook=hook, error=failure.error_text())

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
        """(plugin name, search-path entry) pairs contributed by plugins, in pluggy's call
        order: later-loaded plugins first, moved by ``tryfirst``/``trylast``."""
        hook = self.pm.hook.plugstack_config_searchpath
        wrappers = "+".join(i.plugin_name for i in hook.get_hookimpls() if i.wrapper or i.hookwrapper)
        with track_producers() as producers:
            results, failures = self._call(hook)
        for failure in failures:
            self._break(self.plugins[failure.plugin], failure.describe(), failure.error)
        found: list[tuple[str, str]] = []
        for result in results or ():
            plugin = producers.get(result, default=wrappers)  # no implementation returned it: a wrapper did
            paths = [result] if isinstance(result, str) else list(result)
            found += [(plugin, p) for p in paths]
        return found

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook once through pluggy; an observer that raises is logged and
        the others still run (strict mode: a PluginError)."""
        _, failures = self._call(getattr(self.pm.hook, hook_name), **kwargs)
        for failure in failures:
            log.warning("plugin.hook_failed", plugin=failure.plugin, hook=failure.hook, error=failure.error_text())


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


def create_backend(name: str, **options: Any) -> Any:
    """A registered backend by name (or alias), configured with its defaults and ``options``
    (fields of its config dataclass) — for a backend plugin that wraps another one.
    Raises :class:`UnknownPluginError` with suggestions for an unknown name."""
    from .config import options as as_options

    entry = get_registry().get("backend", name)
    if entry.config is None:
        return entry.create(options or None)
    return entry.create(as_options(entry.config, options))
