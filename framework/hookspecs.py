"""Hook specifications: every way a plugin can extend plugstack.

A plugin is a module (or object) with functions decorated ``@plugstack.hookimpl`` and
named after the specs below, published under the ``plugstack`` entry-point group::

    [project.entry-points.plugstack]
    mychip = "mychip_plugstack.plugin"

Hooks are called through pluggy's hook callers, once per call for all plugins, so
everything pluggy documents works: ``@hookimpl(wrapper=True)`` (and the old-style
``hookwrapper=True``) wrappers, ``tryfirst``/``trylast`` ordering, ``specname``, and
blocking (``PLUGSTACK_DISABLE_PLUGINS`` blocks names in pluggy). pluggy calls plain
implementations of later-loaded plugins first; built-in plugins load before third-party
ones.

On top of pluggy, plugstack isolates a plugin whose implementation raises (a wrapper
included): the other plugins' implementations still run and the hook goes on as if the
failing one had returned nothing. A plugin failing in a registration hook or in
``plugstack_config_searchpath`` is reported as broken (``plugstack plugins``) and loses
everything it registered; an observer that raises is logged and the run goes on.
``PLUGSTACK_STRICT_PLUGINS=1`` makes any such failure a :class:`plugstack.PluginError`.

Registration hooks receive a ``register`` callback instead of returning values, so names,
aliases and conflicts are explicit; registrations are applied in plugin load order, so the
first plugin to register a name keeps it whatever order pluggy calls them in. Keep plugin
modules light: name heavy factories as ``"module:attr"`` strings so they are imported only
when used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from .app import RunContext

__all__ = [
    "PROJECT",
    "Register",
    "hookimpl",
    "hookspec",
    # Listed so that help(plugstack.hookspecs) shows them.
    "plugstack_config_searchpath",
    "plugstack_register_apps",
    "plugstack_register_backends",
    "plugstack_register_models",
    "plugstack_run_end",
    "plugstack_run_start",
]

PROJECT = "plugstack"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback a registration hook receives.

    ``name``: what users type (``backend=<name>``). ``factory``: the class or callable,
    or a ``"package.module:attr"`` string imported on first use. ``config``: a dataclass
    describing the options of this plugin's config group; plugstack stores it in Hydra's
    ConfigStore as ``plugstack_<kind>_<name>`` so that a YAML in the group can validate
    itself with ``defaults: [/plugstack_<kind>_<name>@_here_, _self_]``. ``aliases``:
    other names for the same thing. ``override``: replace an earlier registration of the
    same name instead of failing.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        config: type | None = None,
        description: str = "",
        aliases: Sequence[str] = (),
        override: bool = False,
    ) -> None: ...


# -- registration (called once per process, when the registry first loads) --------------


@hookspec
def plugstack_register_backends(register: Register) -> None:
    """Register chip-layer backends.

    Called once when the registry loads (or, for a plugin given to
    ``Registry.register_plugin``, when it is registered); returns nothing.

    :param register: ``register(name, factory, ...)`` (see :class:`Register`);
        ``factory(cfg)`` must return a :class:`plugstack.Backend`, ``cfg`` being the
        composed ``backend`` config group.
    """


@hookspec
def plugstack_register_models(register: Register) -> None:
    """Register model families.

    Called once when the registry loads, like ``plugstack_register_backends``; returns
    nothing.

    :param register: ``register(name, factory, ...)`` (see :class:`Register`);
        ``factory(cfg)`` must return a :class:`plugstack.Model`, ``cfg`` being the composed
        ``model`` config group.
    """


@hookspec
def plugstack_register_apps(register: Register) -> None:
    """Register applications.

    Called once when the registry loads, like ``plugstack_register_backends``; returns
    nothing.

    :param register: ``register(name, factory, ...)`` (see :class:`Register`);
        ``factory(cfg)`` must return a :class:`plugstack.App`, ``cfg`` being the composed
        ``app`` config group.
    """


@hookspec
def plugstack_config_searchpath() -> Sequence[str] | str | None:
    """Return Hydra search-path entries holding this plugin's config groups.

    Called when plugstack composes a config (only for plugstack's own Hydra app). The
    entries are added after plugstack's own ``conf``, in pluggy's call order (later-loaded
    plugins first; ``tryfirst=True`` puts a plugin's entries first), each under the Hydra
    provider ``plugstack:<plugin>``.

    :return: ``"pkg://package.name"`` or ``"file:///abs/dir"`` (or a list of them, or
        ``None``): folders containing group folders such as ``backend/mychip.yaml``,
        ``model/x.yaml`` or ``app/y.yaml``.
    """


# -- lifecycle of a run (observers: telemetry, tracing, audit) --------------------------


@hookspec
def plugstack_run_start(ctx: RunContext) -> None:
    """Called after the config is composed and before the application runs.

    An observer that raises is logged (``plugin.hook_failed``) and the run goes on,
    unless strict mode is on. A ``wrapper=True`` implementation runs around the others.

    :param ctx: the run's :class:`plugstack.RunContext`; the model and runner are not
        loaded yet (touching ``ctx.model`` loads them).
    """


@hookspec
def plugstack_run_end(ctx: RunContext, exit_code: int, error: BaseException | None) -> None:
    """Called once after the application returned or raised.

    Always called when ``plugstack_run_start`` was, whatever happened in between; an
    observer that raises is logged and the others still run.

    :param ctx: the run's :class:`plugstack.RunContext`.
    :param exit_code: the process exit code the run ends with (2 for a user-facing
        error, 130 for Ctrl-C, 1 for a bug).
    :param error: the exception the application raised, or ``None``.
    """
