"""Isolation of plugins' hook implementations, on top of pluggy.

pluggy calls every hook implementation itself, so wrappers (``wrapper=True`` and the
old-style ``hookwrapper=True``), ``tryfirst``/``trylast`` and blocking work as pluggy
documents. What pluggy does not do is keep one raising implementation from aborting the
whole hook call. So plugstack registers with pluggy, for each plugin, a :class:`PluginProxy`
whose attributes are the plugin's hook implementations, each wrapped in a guard:

- a guard catches ``Exception``, hands it to ``on_error(plugin, hook, error)`` and returns
  ``None`` (pluggy sees "no result"); ``on_error`` may raise instead (strict mode);
- a wrapper's guard is itself a generator of the same style: it forwards the inner result
  or exception to the plugin's wrapper and, if the wrapper itself fails, steps aside so
  the hook's result (or the inner exception) goes on unchanged;
- while a plugin's code runs, :func:`acting_plugin` names it, so a callback such as
  ``register`` knows which plugin is calling.

Guards keep the implementation's marker options and argument names (``functools.wraps``;
pluggy reads argument names through ``__wrapped__``), so pluggy validates them as usual.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import pluggy

__all__ = ["CONTAINED", "OnError", "PluginProxy", "Producers", "acting_plugin", "track_producers"]

#: ``on_error(plugin, hook, error)``: told about a failed implementation; may raise.
OnError = Callable[[str, str, BaseException], None]
#: What a plugin may raise without taking the process down (a stray ``sys.exit`` included;
#: Ctrl-C still stops everything).
CONTAINED = (Exception, SystemExit)

_acting: ContextVar[str | None] = ContextVar("plugstack_acting_plugin", default=None)
_producers: ContextVar[Producers | None] = ContextVar("plugstack_producers", default=None)


def acting_plugin() -> str | None:
    """The name of the plugin whose hook implementation is running (``None`` outside)."""
    return _acting.get()


class Producers:
    """Which plugin returned which result object, during one hook call."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[object, str]] = {}

    def add(self, result: object, plugin: str) -> None:
        self._by_id.setdefault(id(result), (result, plugin))  # holding result keeps its id unique

    def get(self, result: object, default: str) -> str:
        found = self._by_id.get(id(result))
        return found[1] if found is not None and found[0] is result else default


@contextmanager
def track_producers() -> Iterator[Producers]:
    """Note which plugin returned each non-``None`` result inside the block (a hook's
    result list does not say)."""
    producers = Producers()
    token = _producers.set(producers)
    try:
        yield producers
    finally:
        _producers.reset(token)


@contextmanager
def _acting_as(plugin: str) -> Iterator[None]:
    token = _acting.set(plugin)
    try:
        yield
    finally:
        _acting.reset(token)


class PluginProxy:
    """What plugstack registers with pluggy for one plugin: its hook implementations, guarded."""

    def __init__(self, plugin: object, name: str, pm: pluggy.PluginManager, on_error: OnError) -> None:
        self._plugstack_plugin = plugin  # not a function: pluggy ignores it
        marker = f"{pm.project_name}_impl"
        for attr in dir(plugin):
            opts = pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            hook = opts.get("specname") or attr
            guarded = _guard(getattr(plugin, attr), opts, name, hook, on_error)
            setattr(guarded, marker, dict(opts))  # also when the marker sat on a staticmethod
            setattr(self, attr, guarded)

    def __repr__(self) -> str:
        return f"<PluginProxy of {self._plugstack_plugin!r}>"


def _guard(fn: Callable[..., Any], opts: pluggy.HookimplOpts, plugin: str, hook: str, on_error: OnError):
    # A wrapper that is not a generator gets a plain guard, so pluggy still rejects it.
    if inspect.isgeneratorfunction(fn) and opts.get("wrapper"):
        guarded = _guard_wrapper(fn, plugin, hook, on_error)
    elif inspect.isgeneratorfunction(fn) and opts.get("hookwrapper"):
        guarded = _guard_old_style_wrapper(fn, plugin, hook, on_error)
    else:
        guarded = _guard_plain(fn, plugin, hook, on_error)
    return functools.wraps(fn)(guarded)


def _guard_plain(fn: Callable[..., Any], plugin: str, hook: str, on_error: OnError):
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            with _acting_as(plugin):
                result = fn(*args, **kwargs)
        except CONTAINED as exc:
            on_error(plugin, hook, exc)
            return None  # pluggy drops None: the other plugins' results stand
        producers = _producers.get()
        if producers is not None and result is not None:
            producers.add(result, plugin)
        return result

    return guarded


def _guard_wrapper(fn: Callable[..., Generator], plugin: str, hook: str, on_error: OnError):
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        gen = _start(fn, args, kwargs, plugin, hook, on_error)
        if gen is None:
            return (yield)  # failed before its yield: the inner result goes on as is
        try:
            inner = yield
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as error:
            return _throw(gen, error, plugin, hook, on_error)
        return _send(gen, inner, plugin, hook, on_error)

    return guarded


def _guard_old_style_wrapper(fn: Callable[..., Generator], plugin: str, hook: str, on_error: OnError):
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, pluggy.Result, None]:
        gen = _start(fn, args, kwargs, plugin, hook, on_error)
        try:
            outcome = yield
        except GeneratorExit:
            if gen is not None:
                gen.close()
            raise
        if gen is not None:
            _send_outcome(gen, outcome, plugin, hook, on_error)

    return guarded


def _start(fn, args, kwargs, plugin: str, hook: str, on_error: OnError) -> Generator | None:
    """Run a wrapper up to its ``yield``; ``None`` if it failed (reported)."""
    try:
        with _acting_as(plugin):
            gen = fn(*args, **kwargs)
            next(gen)
        return gen
    except StopIteration:
        on_error(plugin, hook, RuntimeError("the wrapper returned without yielding"))
    except CONTAINED as exc:
        on_error(plugin, hook, exc)
    return None


def _send(gen: Generator, inner: Any, plugin: str, hook: str, on_error: OnError) -> Any:
    """Give a new-style wrapper the inner result: its return value, or ``inner`` if it failed."""
    try:
        with _acting_as(plugin):
            gen.send(inner)
    except StopIteration as stop:
        return stop.value
    except CONTAINED as exc:
        on_error(plugin, hook, exc)
        return inner
    _second_yield(gen, plugin, hook, on_error)
    return inner


def _throw(gen: Generator, error: BaseException, plugin: str, hook: str, on_error: OnError) -> Any:
    """Give a new-style wrapper the inner exception: its return value if it recovered;
    otherwise the exception goes on (the wrapper's own failure is reported, not raised)."""
    try:
        with _acting_as(plugin):
            gen.throw(error)
    except StopIteration as stop:
        return stop.value
    except CONTAINED as exc:
        if exc is error:
            raise  # re-raised as it came: not this wrapper's fault
        on_error(plugin, hook, exc)
    else:
        _second_yield(gen, plugin, hook, on_error)
    raise error


def _send_outcome(gen: Generator, outcome: pluggy.Result, plugin: str, hook: str, on_error: OnError) -> None:
    """Give an old-style wrapper the inner outcome (it may force another result)."""
    try:
        with _acting_as(plugin):
            gen.send(outcome)
    except StopIteration:
        return
    except CONTAINED as exc:
        if exc is outcome.exception:
            raise  # outcome.get_result() re-raised the inner error: pluggy's own behaviour
        on_error(plugin, hook, exc)
        return
    _second_yield(gen, plugin, hook, on_error)


def _second_yield(gen: Generator, plugin: str, hook: str, on_error: OnError) -> None:
    with suppress(Exception), _acting_as(plugin):
        gen.close()  # runs its finally blocks; pluggy would have raised here
    on_error(plugin, hook, RuntimeError("the wrapper yielded more than once"))
