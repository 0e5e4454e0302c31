"""Bounds on the work and the output of one chat-template render.

Jinja's sandbox refuses unsafe attributes and calls but lets a template loop for hours or
build a string of gigabytes (``"x" * 2000000000``). Here:

- size: operators (``*``, ``**``, ``+``, ``%``), calls, filters and ``~`` concatenations
  are checked, before they run where their arguments say how big the result will be,
  and on their result otherwise; the output is counted as it is generated;
- time: a wall-clock deadline checked at the top of every loop iteration and macro call,
  compiled into the template. Those are the only ways a Jinja template repeats work (it
  has no while), and everything between two checks is bounded by the size checks. Unlike
  a ``sys.settrace`` tracer this costs one call per iteration, works in any thread (no
  signals) and leaves debuggers' and coverage's tracers alone.

Both raise :class:`Exceeded`, whose message completes "its chat template ...".
"""

from __future__ import annotations

import contextvars
import functools
import re
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
#: Characters (or items) a value of the render in progress may have, and its deadline.
_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar("template_output_limit", default=1 << 22)
_DEADLINE: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar("template_deadline",
                                                                                default=(float("inf"), 0.0))
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
    """Compiles ``a ~ b`` so that its result is checked too, and the bodies of loops and
    macros (call blocks are macros) so that they start with a deadline check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ticking: set[int] = set()  # ids of the body lists that get a check

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_For(self, node, frame) -> None:
        self._ticking.add(id(node.body))
        super().visit_For(node, frame)

    def macro_body(self, node, frame):
        self._ticking.add(id(node.body))
        return super().macro_body(node, frame)

    def blockvisit(self, body, frame) -> None:
        if id(body) in self._ticking:
            self.writeline("environment.tick()")
        super().blockvisit(body, frame)


def tick() -> None:
    deadline, seconds = _DEADLINE.get()
    if time.monotonic() > deadline:
        raise Exceeded(f"ran for more than {seconds:g} s")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    sized = staticmethod(sized)
    tick = staticmethod(tick)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        # One frame per operator: each Python call also costs a trace event.
        limit = _LIMIT.get()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > limit:
                    _too_big(len(seq) * n, "a repetition")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * left.bit_length() > _MAX_INT_BITS:
                raise Exceeded(f"would compute {left} ** {right}, a number of more than {_MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, _PERCENT_SPEC)
            _check_args(right if isinstance(right, tuple) else (right,), {})
        value = self.binop_table[operator](left, right)
        if isinstance(value, (str, list, tuple, dict)) and len(value) > limit:
            _too_big(len(value), "a value")
        return value

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


def bounded_render(template: jinja2.Template, limit: int, seconds: float, **context: Any) -> str:
    """``template.render(**context)``, in at most ``limit`` characters and ``seconds``."""
    limit_token = _LIMIT.set(limit)
    deadline_token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        parts, total = [], 0
        for chunk in template.generate(**context):
            total += len(chunk)
            if total > limit:
                raise Exceeded(f"would write more than {limit} characters")
            parts.append(chunk)
        return "".join(parts)
    finally:
        _DEADLINE.reset(deadline_token)
        _LIMIT.reset(limit_token)
