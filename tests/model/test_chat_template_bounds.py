"""Chat-template bounds: a template from a model file may not loop for ever or build a
gigabyte string; each way is one row, ending in ``model file is broken: its chat template
...``. Real templates render exactly as before, and their own raise_exception still rejects
the messages."""

from __future__ import annotations

import sys

import pytest

from plugstack import GenerationError, ModelLoadError
from plugstack.plugins.llama.chat_template import ChatTemplate

HI = [{"role": "user", "content": "hi"}]
TEMPLATE_CASES = [
    ("range-huge", "{% for i in range(100000000) %}x{% endfor %}", {}, r"a width or count of 100000000"),
    ("repeat-huge", "{{ 'x' * 2000000000 }}", {}, r"would make a repetition of 2000000000 characters"),
    ("repeat-list", "{{ messages * 100000000 }}", {}, r"a repetition of 100000000"),
    ("doubling-concat", "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s }}", {}, r"would make a value of \d+ characters"),
    ("filter-width", "{{ 'x' | center(1000000000) }}", {}, r"a width or count of 1000000000"),
    ("method-width", "{{ 'x'.ljust(1000000000) }}", {}, r"a width or count of 1000000000"),
    ("format-width", "{{ '{:>1000000000}'.format('x') }}", {}, r"a formatted field of 1000000000"),
    ("percent-width", "{{ '%1000000000s' % 'x' }}", {}, r"a formatted field of 1000000000"),
    ("power-huge", "{{ 2 ** 1000000000 }}", {}, r"would compute 2 \*\* 1000000000"),
    ("output-huge", "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", {}, r"would write more than \d+ char"),
    ("output-bound", "{% for i in range(99) %}{{ messages[0].content }}{% endfor %}", {"base_chars": 100},
     r"would write more than 124 characters"),
    ("loops-forever", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     {"max_seconds": 0.2}, r"its chat template ran for more than 0\.2 s"),
    ("macro-fan-out", "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
     {"max_seconds": 0.2}, r"ran for more than 0\.2 s"),
    ("recursive-loop", "{% for m in [[1, 1]] * 2 recursive %}{% if m is iterable %}{{ loop([m, m] if loop.depth < 40 "
     "else []) }}{% endif %}{% endfor %}", {"max_seconds": 0.2}, r"ran for more than 0\.2 s"),
    ("call-block-loop", "{% macro m() %}{% for i in range(99999) %}{{ caller() }}{% endfor %}{% endmacro %}"
     "{% call m() %}{% for j in range(99999) %}{% endfor %}{% endcall %}", {"max_seconds": 0.2},
     r"ran for more than 0\.2 s"),
    ("recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", {},
     r"fails on these messages \(RecursionErr"),
    ("division-by-zero", "{{ 1 / 0 }}", {}, r"fails on these messages \(ZeroDivisionError"),
    ("overflow", "{{ 10.0 ** 400 }}", {}, r"fails on these messages \(OverflowError"),
    ("undefined", "{{ nothing.at.all }}", {}, r"fails on these messages \(UndefinedError"),
    ("sandbox", "{{ ''.__class__.__mro__ }}", {}, r"tried something the sandbox forbids"),
    ("template-huge", "x" * (2 << 20), {}, r"its chat template is 2097152 characters long"),
]


@pytest.mark.parametrize(("template", "limits", "says"), [pytest.param(t, k, s, id=i) for i, t, k, s in TEMPLATE_CASES])
def test_template_bounds(template, limits, says):
    with pytest.raises(ModelLoadError, match=says) as e:
        t = ChatTemplate(template, source="/models/evil.gguf")
        for k, v in limits.items():
            setattr(t, k, v)
        t.render(HI)
    text = str(e.value)
    assert text.startswith("model file is broken: its chat template ") and "in /models/evil.gguf. " in text, text


def test_template_still_renders_and_still_raises():
    """Bounds change nothing for a real template; its own raise_exception rejects messages."""
    t = ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content ~ '!' }}|{% endfor %}{{ '%-3s' % 'a' }}"
                     "{{ 'b' * 3 }}{{ [1] * 2 }}{{ '{:>3}'.format(1) }}", source="x.gguf")  # fmt: skip
    assert t.render([*HI, {"role": "assistant", "content": "yo"}]) == "user: hi!|assistant: yo!|a  bbb[1, 1]  1"
    with pytest.raises(GenerationError, match="rejected the messages: nope"):
        ChatTemplate("{{ raise_exception('nope') }}").render(HI)


def test_bounds_leave_tracers_alone():
    """No sys.settrace: a debugger's or coverage's tracer sees the render, and stays."""

    def mine(frame, event, arg):
        return None

    sys.settrace(mine)
    try:
        ChatTemplate("{{ 1 }}").render(HI)
        t = ChatTemplate("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")
        t.max_seconds = 0.05
        with pytest.raises(ModelLoadError, match="ran for more than"):
            t.render(HI)
        assert sys.gettrace() is mine
    finally:
        sys.settrace(None)


def test_deadline_holds_in_a_worker_thread():
    """No signals: the bound works off the main thread (a server renders in workers)."""
    from concurrent.futures import ThreadPoolExecutor

    t = ChatTemplate("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", source="w.gguf")
    t.max_seconds = 0.1
    with ThreadPoolExecutor(1) as pool, pytest.raises(ModelLoadError, match=r"ran for more than 0\.1 s.*w\.gguf"):
        pool.submit(t.render, HI).result()
