"""Chat templates: Jinja from an untrusted model file, rendered in a sandbox.

A chat template ships inside the model file, so it is code from whoever made the file.
llama-cpp-python rendered them in a plain Jinja environment and a crafted GGUF could run
arbitrary Python (CVE-2024-34359). We render in ``ImmutableSandboxedEnvironment``: no
access to dunder attributes, no mutation of the objects passed in. The environment
mirrors transformers' (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not HTML-escape) so the
rendered text is the same as ``apply_chat_template(..., tokenize=False)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from plugstack.errors import GenerationError, ModelLoadError

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

    def __init__(self, source_text: str, *, source: str = "") -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.text = source_text
        self.source = source
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], undefined=jinja2.Undefined
        )
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(source_text)
        except jinja2.TemplateError as e:
            raise ModelLoadError(
                f"{source or 'the model'}: its chat template does not compile ({type(e).__name__}: {e}). "
                f"The model file is broken; chat is unavailable for it."
            ) from None

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

        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise GenerationError(f"Chat message {i} is {m!r}; expected a dict with 'role' and 'content' keys.")
        try:
            return self._template.render(
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **extra
            )
        except SecurityError as e:
            raise GenerationError(
                f"The chat template of {self.source or 'this model'} tried something the sandbox forbids "
                f"({e}). The model file may be malicious; it was not allowed to run code."
            ) from None
        except _TemplateRaised as e:
            raise GenerationError(
                f"The chat template of {self.source or 'this model'} rejected the messages: {e}"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise GenerationError(
                f"The chat template of {self.source or 'this model'} failed on these messages "
                f"({type(e).__name__}: {e})."
            ) from None
