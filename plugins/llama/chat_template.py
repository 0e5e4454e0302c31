"""Chat templates: Jinja from an untrusted model file, rendered in a sandbox.

A chat template ships inside the model file, so it is code from whoever made the file.
llama-cpp-python rendered them in a plain Jinja environment and a crafted GGUF could run
arbitrary Python (CVE-2024-34359). We render in ``ImmutableSandboxedEnvironment``: no
access to dunder attributes, no mutation of the objects passed in. The environment
mirrors transformers' (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not HTML-escape) so the
rendered text is the same as ``apply_chat_template(..., tokenize=False)``.

The sandbox stops code, not work, so a render is also bounded (:mod:`.template_bounds`):
in time, by a deadline checked at every loop iteration and macro call, and in size, by
checks on the operators, calls, filters and concatenations that make big values and on
the output as it is generated. A template that breaks either bound, or fails on its own,
is a broken model file; its own ``raise_exception`` rejects the messages instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from plugstack.errors import GenerationError

from .checks import broken

__all__ = ["ChatTemplate"]


class _TemplateRaised(Exception):
    """What the template's own ``raise_exception(message)`` raises."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template. Compiling happens at load time, so a template with a
    syntax error is a :class:`ModelLoadError` naming the model file."""

    #: Wall-clock bound of one render (real templates take milliseconds).
    max_seconds: float = 2.0
    #: Output bound of one render: this many characters, plus 4 per character of the messages.
    base_chars: int = 4 << 20

    def __init__(self, source_text: str, *, source: str = "") -> None:
        import jinja2

        from .template_bounds import MAX_TEMPLATE_CHARS, bounded_environment

        self.text = source_text
        self.source = source or "the model"
        if len(source_text) > MAX_TEMPLATE_CHARS:
            raise broken(f"its chat template is {len(source_text)} characters long, past any real one", self.source)
        env = bounded_environment()
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        env.bound_filters()
        try:
            self._template = env.from_string(source_text)
        except (jinja2.TemplateError, SyntaxError, RecursionError, MemoryError, ValueError, OverflowError) as e:
            raise broken(f"its chat template does not compile ({type(e).__name__}: {e})", self.source) from None

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
        import jinja2
        from jinja2.sandbox import SecurityError

        from .template_bounds import Exceeded, bounded_render

        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise GenerationError(f"Chat message {i} is {m!r}; expected a dict with 'role' and 'content' keys.")
        given = sum(len(str(v)) for m in messages for v in m.values()) + sum(len(str(v)) for v in extra.values())
        try:
            return bounded_render(
                self._template, self.base_chars + 4 * given, self.max_seconds,
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **extra,
            )  # fmt: skip
        except _TemplateRaised as e:
            raise GenerationError(f"The chat template of {self.source} rejected the messages: {e}") from None
        except Exceeded as e:
            raise broken(f"its chat template {e}", self.source) from None
        except SecurityError as e:
            raise broken(
                f"its chat template tried something the sandbox forbids ({e}); the file may be malicious, "
                f"and it was not allowed to run code", self.source,
            ) from None  # fmt: skip
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
                MemoryError, RecursionError) as e:  # fmt: skip
            raise broken(f"its chat template fails on these messages ({type(e).__name__}: {e})", self.source) from None
