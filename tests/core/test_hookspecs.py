"""Meta-tests: every hook is specified with a docstring, documented in the README and
exercised by some test (the datasette pattern)."""

from __future__ import annotations

import inspect
from pathlib import Path

import plugstack.hookspecs as hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("plugstack_")]


def test_there_are_hooks():
    assert {"plugstack_register_backends", "plugstack_register_models", "plugstack_register_apps",
            "plugstack_config_searchpath", "plugstack_run_start", "plugstack_run_end"} <= set(HOOKS)


def test_every_hook_has_a_docstring_saying_when_it_is_called():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "called" in doc.lower() or "Called" in doc, f"{name} does not say when it is called"


def test_every_hook_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in HOOKS if name not in readme]
    assert not missing, f"hooks missing from README.md: {missing}"


def test_every_hook_is_used_by_some_test_or_example():
    this = Path(__file__).resolve()
    texts = [p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.resolve() != this]
    texts += [p.read_text() for p in (ROOT / "examples").rglob("*.py")]
    unused = [name for name in HOOKS if not any(name in t for t in texts)]
    assert not unused, f"hooks no test exercises: {unused}"


def test_help_shows_every_hook_with_its_docs():
    import pydoc

    text = pydoc.render_doc(hookspecs, renderer=pydoc.plaintext)
    for name in HOOKS:
        first_line = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
        assert f"{name}(" in text and first_line in text, f"help(plugstack.hookspecs) does not show {name}"
