"""Hook specifications: every way a plugin can extend plugstack.

A plugin is a module (or object) with functions decorated ``@plugstack.hookimpl`` and
named after the specs below, published under the ``plugstack`` entry-point group::

    [project.entry-points.plugstack]
    mychip = "mychip_plugstack.plugin"

Registration hooks receive a ``register`` callback instead of returning values, so names,
aliases and conflicts are explicit. Each plugin's hook is called on its own: one that
raises is reported as broken and the others still load. Keep plugin modules light: name
heavy factories as ``"module:attr"`` strings so they are imported only when used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from .app import RunContext

__all__ = ["PROJECT", "Register", "hookimpl", "hookspec"]

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

    ``factory(cfg)`` must return a :class:`plugstack.Backend`; ``cfg`` is the composed
    ``backend`` config group. Called once when the registry loads; returns nothing.
    """


@hookspec
def plugstack_register_models(register: Register) -> None:
    """Register model families.

    ``factory(cfg)`` must return a :class:`plugstack.Model`; ``cfg`` is the composed
    ``model`` config group. Called once when the registry loads; returns nothing.
    """


@hookspec
def plugstack_register_apps(register: Register) -> None:
    """Register applications.

    ``factory(cfg)`` must return a :class:`plugstack.App`; ``cfg`` is the composed ``app``
    config group. Called once when the registry loads; returns nothing.
    """


@hookspec
def plugstack_config_searchpath() -> Sequence[str] | str | None:
    """Return Hydra search-path entries holding this plugin's config groups.

    Each entry is ``"pkg://package.name"`` or ``"file:///abs/dir"``; the folder contains
    group folders such as ``backend/mychip.yaml``, ``model/x.yaml`` or ``app/y.yaml``.
    Called when plugstack composes a config (only for plugstack's own Hydra app). All
    results are used, in plugin load order, after plugstack's own ``conf``.
    """


# -- lifecycle of a run (observers: telemetry, tracing, audit) --------------------------


@hookspec
def plugstack_run_start(ctx: RunContext) -> None:
    """Called after the config is composed and before the application runs.

    The model and runner are not loaded yet (touching ``ctx.model`` loads them). An
    observer that raises is reported and the run goes on, unless strict mode is on.
    """


@hookspec
def plugstack_run_end(ctx: RunContext, exit_code: int, error: BaseException | None) -> None:
    """Called once after the application returned or raised (``error`` is set then).

    Always called when ``plugstack_run_start`` was, whatever happened in between.
    """
