"""Bounds on the work and the output of one chat-template render.

Jinja's sandbox refuses unsafe attributes and calls but lets a template loop for hours or
build a string of gigabytes (``"x" * 2000000000``). Here:

- size: operators (``*``, ``**``, ``+``, ``%``), calls, filters and ``~`` concatenations
  are checked, before they run where their arguments say how big the result will be,
  and on their result otherwise; the output is counted as it is generated;
- time: a wall-clock deadline checked on every line the template's code runs, through
  a ``sys.settrace`` tracer of the rendering thread only (no signals: renders may run in
  worker threads), which restores whatever tracer was there before.

Both raise :class:`Exceeded`, whose message completes "its chat template ...".
"""

from __future__ import annotations

import contextvars
import functools
import re
import sys
import time
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

__all__ = ["MAX_TEMPLATE_CHARS", "Exceeded", "bounded_environment", "bounded_render"]

#: Real templates are a few kilobytes; compiling megabytes of one is already work.
MAX_TEMPLATE_CHARS = 1 << 20
#: Bits of an integer a template may compute with ``**`` (2**65536 is 20k digits).
_MAX_INT_BITS = 1 << 16
#: Characters (or items) a value of the render in progress may have.
_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar("template_output_limit", default=1 << 22)
#: Widths and precisions of "%" fields and of str.format fields.
_PERCENT_SPEC = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:[^{}\d]*(\d+)(?:\.(\d+))?[^{}]*\}")


class Exceeded(Exception):
    """The render went past a bound; the message completes "its chat template ..."."""


def _too_big(n: int, what: str) -> None:
    if n > _LIMIT.get():
        raise Exceeded(f"would make {what} of {n} characters or items, past the bound of {_LIMIT.get()}")


def sized(value: Any) -> Any:
    """``value``, refused when it is a string or container past the bound."""
    if isinstance(value, (str, list, tuple, dict)):
        _too_big(len(value), "a value")
    return value


def _check_args(args: tuple, kwargs: dict) -> None:
    """An integer argument past the bound is a width or count no prompt needs (``center(10**9)``)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool):
            _too_big(a, "a width or count")


def _check_format(fmt: str, spec: re.Pattern) -> None:
    """Widths and precisions written in a format string."""
    for m in spec.finditer(fmt):
        for n in m.groups():
            if n:
                _too_big(int(n), "a formatted field")


class _Generator(CodeGenerator):
    """Compiles ``a ~ b`` so that its result is checked too."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    sized = staticmethod(sized)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    _too_big(len(seq) * n, "a repetition")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * left.bit_length() > _MAX_INT_BITS:
                raise Exceeded(f"would compute {left} ** {right}, a number of more than {_MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, _PERCENT_SPEC)
            _check_args(right if isinstance(right, tuple) else (right,), {})
        return sized(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_format(owner, _BRACE_SPEC)
        return sized(super().call(__context, __obj, *args, **kwargs))

    def bound_filters(self) -> None:
        """Wrap every filter in the same checks as a call (the sandbox calls filters directly)."""
        self.filters = {name: _bounded_filter(fn) for name, fn in self.filters.items()}


def _bounded_filter(fn):
    skip = 1 if _PassArg.from_obj(fn) is None else 2  # the value (and the context) are not sizes

    @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
    def run(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[skip:], kwargs)
        return sized(fn(*args, **kwargs))

    return run


def bounded_environment() -> _BoundedEnvironment:
    """The sandbox, configured as transformers configures its own (see chat_template)."""
    return _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], undefined=jinja2.Undefined
    )


def _deadline_tracer(seconds: float):
    deadline = time.monotonic() + seconds

    def local(frame, event, arg):
        if time.monotonic() > deadline:  # raising from a tracer also switches it off
            raise Exceeded(f"ran for more than {seconds:g} s")
        return local

    def calls(frame, event, arg):
        if time.monotonic() > deadline:
            raise Exceeded(f"ran for more than {seconds:g} s")
        return local if frame.f_code.co_filename == "<template>" else None

    return calls


def bounded_render(template: jinja2.Template, limit: int, seconds: float, **context: Any) -> str:
    """``template.render(**context)``, in at most ``limit`` characters and ``seconds``."""
    token = _LIMIT.set(limit)
    previous = sys.gettrace()
    sys.settrace(_deadline_tracer(seconds))
    try:
        parts, total = [], 0
        for chunk in template.generate(**context):
            total += len(chunk)
            if total > limit:
                raise Exceeded(f"would write more than {limit} characters")
            parts.append(chunk)
        return "".join(parts)
    finally:
        sys.settrace(previous)
        _LIMIT.reset(token)
