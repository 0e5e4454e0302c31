"""Discovery and lookup: isolation of broken plugins, strict mode, disabling, duplicates."""

from __future__ import annotations

import textwrap
from importlib.metadata import EntryPoint

import pytest

from plugstack.errors import PluginError, UnknownPluginError
from plugstack.registry import Registry

GOOD = """
from plugstack import hookimpl

@hookimpl
def plugstack_register_backends(register):
    register("fastchip", "fastchip_impl:Backend", description="a chip", aliases=["fc"])

@hookimpl
def plugstack_register_apps(register):
    register("hello", lambda cfg: ("hello app", cfg))
"""

HOOK_RAISES = """
from plugstack import hookimpl

@hookimpl
def plugstack_register_apps(register):
    register("half", lambda cfg: None)
    raise RuntimeError("boom in registration")
"""

DUPLICATE = """
from plugstack import hookimpl

@hookimpl
def plugstack_register_backends(register):
    register("fastchip", lambda cfg: "second")
"""

OVERRIDE = """
from plugstack import hookimpl

@hookimpl
def plugstack_register_backends(register):
    register("fastchip", lambda cfg: "replacement", override=True)
"""

OBSERVER = """
from plugstack import hookimpl
seen = []

@hookimpl
def plugstack_run_start(ctx):
    raise ValueError("observer bug")

@hookimpl
def plugstack_run_end(ctx, exit_code, error):
    seen.append(exit_code)
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """Write plugin modules into an importable folder; returns a writer."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> EntryPoint:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return EntryPoint(name=name, value=name, group="plugstack")

    return write


def test_good_plugin_registers_with_aliases(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("good", GOOD)], strict=False, disabled=())
    assert reg.names("backend") == ["fastchip"]
    assert reg.get("backend", "fc").name == "fastchip"
    assert reg.get("app", "hello").create("cfg") == ("hello app", "cfg")
    assert reg.plugins["good"].status == "ok"
    assert ("backend", "fastchip") in reg.plugins["good"].provides


def test_import_error_is_isolated(plugin_dir):
    broken = plugin_dir("broken_import", "import module_that_does_not_exist_xyz\n")
    reg = Registry(entry_points=[broken, plugin_dir("good", GOOD)], strict=False, disabled=())
    record = reg.plugins["broken_import"]
    assert record.status == "broken"
    assert "module_that_does_not_exist_xyz" in record.error
    assert reg.names("backend") == ["fastchip"]  # the plugin after it still loaded


def test_raising_hook_is_isolated_and_its_half_registration_dropped(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("raises", HOOK_RAISES), plugin_dir("good", GOOD)],
                   strict=False, disabled=())
    assert reg.plugins["raises"].status == "broken"
    assert "boom in registration" in reg.plugins["raises"].error
    assert "half" not in reg.names("app")
    assert reg.names("app") == ["hello"]


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_dir, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="boom in registration"):
        Registry(entry_points=[plugin_dir("raises", HOOK_RAISES)], disabled=())


def test_disabled_plugin_is_not_imported(plugin_dir, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_DISABLE_PLUGINS", "good, other")
    reg = Registry(entry_points=[plugin_dir("good", GOOD)], strict=False)
    assert reg.plugins["good"].status == "disabled"
    assert reg.names("backend") == []
    with pytest.raises(UnknownPluginError, match="disabled by PLUGSTACK_DISABLE_PLUGINS"):
        reg.get("backend", "good")


def test_duplicate_name_names_both_plugins(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("good", GOOD), plugin_dir("dupe", DUPLICATE)],
                   strict=False, disabled=())
    record = reg.plugins["dupe"]
    assert record.status == "broken"
    assert "'good'" in record.error and "'dupe'" in record.error and "fastchip" in record.error
    assert reg.get("backend", "fastchip").plugin == "good"
    with pytest.raises(PluginError, match="Both plugin 'good' and plugin 'dupe'"):
        Registry(entry_points=[plugin_dir("good", GOOD), plugin_dir("dupe", DUPLICATE)],
                 strict=True, disabled=())


def test_explicit_override_replaces(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("good", GOOD), plugin_dir("override", OVERRIDE)],
                   strict=False, disabled=())
    assert reg.get("backend", "fastchip").create() == "replacement"


def test_unknown_name_suggests_close_match(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("good", GOOD)], strict=False, disabled=())
    with pytest.raises(UnknownPluginError) as info:
        reg.get("backend", "fastchp")
    message = str(info.value)
    assert "Did you mean 'fastchip'?" in message
    assert "Available backends: fastchip, fc" in message


def test_lazy_factory_import_error_names_the_plugin(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("good", GOOD)], strict=False, disabled=())
    with pytest.raises(PluginError, match="Plugin 'good' registered backend 'fastchip' as 'fastchip_impl:Backend'"):
        reg.get("backend", "fastchip").create()


def test_observer_errors_are_isolated(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("observer", OBSERVER)], strict=False, disabled=())
    reg.notify("plugstack_run_start", ctx=object())  # raises inside, must not propagate
    reg.notify("plugstack_run_end", ctx=object(), exit_code=3, error=None)
    import observer

    assert observer.seen == [3]
    strict = Registry(entry_points=[plugin_dir("observer2", OBSERVER)], strict=True, disabled=())
    with pytest.raises(PluginError, match="observer bug"):
        strict.notify("plugstack_run_start", ctx=object())


def test_builtins_are_discovered_through_entry_points():
    reg = Registry(strict=False, disabled=())
    assert {"cpu", "onnx", "cuda", "auto"} <= set(reg.names("backend"))
    assert "llama" in reg.names("model")
    assert "generate" in reg.names("app")
    assert reg.plugins["onnx"].distribution == "plugstack"
    assert all(p.status == "ok" for p in reg.plugins.values()), [p.as_dict() for p in reg.plugins.values()]


MODEL_PLUGIN = """
from dataclasses import dataclass
from plugstack import hookimpl

@dataclass
class ToyModelConfig:
    name: str = "toy"
    width: int = 8

@hookimpl
def plugstack_register_models(register):
    register("toy", lambda cfg: ("toy model", cfg.width), config=ToyModelConfig, aliases=["toy-v1"])
"""


def test_model_registration_with_config_schema(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("toy_model", MODEL_PLUGIN)], strict=False, disabled=())
    entry = reg.get("model", "toy-v1")
    assert entry.name == "toy" and entry.default_config().width == 8
    assert entry.create() == ("toy model", 8)
    reg.store_schemas()
    from hydra.core.config_store import ConfigStore

    assert "plugstack_model_toy.yaml" in ConfigStore.instance().list("")


def test_run_lifecycle_hooks_see_every_run(plugin_dir, tiny_model_dir):
    """An observer plugin gets run_start and run_end with the exit code, even when the
    application fails, and a failing observer does not break the run."""
    from plugstack.config import compose
    from plugstack.run import execute

    source = OBSERVER.replace("raise ValueError(\"observer bug\")", "seen.append(('start', ctx.run_id))")
    source = source.replace("seen.append(exit_code)", "seen.append(('end', exit_code, type(error).__name__))")
    reg = Registry(strict=False, disabled=())
    import importlib

    plugin_dir("lifecycle_observer", source)
    observer = importlib.import_module("lifecycle_observer")
    reg.register_plugin(observer, "lifecycle_observer")
    cfg = compose(["app=describe", "backend=cpu", "model=llama", f"model.path={tiny_model_dir}"])
    import io

    assert execute(cfg, registry=reg, stdout=io.StringIO()) == 0
    bad = compose(["app=describe", "backend=cpu", "model=llama", "model.path=/nonexistent/model.gguf"])
    assert execute(bad, registry=reg, stdout=io.StringIO()) == 2
    kinds = [s[0] for s in observer.seen]
    assert kinds == ["start", "end", "start", "end"]
    assert observer.seen[1][1:] == (0, "NoneType")
    assert observer.seen[3][1:] == (2, "ModelLoadError")


BROKEN_BACKENDS = """
from plugstack import Backend, hookimpl

class RaisingProbe(Backend):
    def probe(self):
        raise RuntimeError("probe exploded")
    def prepare(self, model):
        raise AssertionError("never prepared")

@hookimpl
def plugstack_register_backends(register):
    register("raising-probe", RaisingProbe)
    register("missing-module", "no_such_module_xyz:Backend")
"""


def test_entry_probe_reports_broken_backends_as_unavailable(plugin_dir):
    reg = Registry(entry_points=[plugin_dir("broken_backends", BROKEN_BACKENDS)], strict=False, disabled=())
    backend, availability = reg.get("backend", "raising-probe").probe()
    assert backend is None and not availability.available
    assert "probe exploded" in availability.reason
    backend, availability = reg.get("backend", "missing-module").probe()
    assert backend is None and not availability.available
    assert "could not be created" in availability.reason and "no_such_module_xyz" in availability.reason
