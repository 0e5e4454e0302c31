"""Discovery and lookup: isolation of broken plugins, strict mode, disabling, duplicates."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from structlog.testing import capture_logs

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
    """Write plugin modules into an importable folder; returns a writer. The modules are
    forgotten afterwards, so each test imports its own."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> EntryPoint:
        sys.modules.pop(name, None)
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return EntryPoint(name=name, value=name, group="plugstack")

    yield write
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


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
    from plugstack.config import store_schemas

    store_schemas(reg)
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


# -- hooks run through pluggy: wrappers, ordering, blocking, isolation on top ------------


@pytest.fixture
def calls(plugin_dir):
    """A list the plugins of a test append to (``from hook_calls import calls``)."""
    plugin_dir("hook_calls", "calls = []\n")
    return importlib.import_module("hook_calls").calls


def plugin(marker: str, hook: str, body: str) -> str:
    """Source of a plugin with one hook implementation."""
    args = {"plugstack_run_start": "ctx", "plugstack_config_searchpath": "",
            "plugstack_register_backends": "register"}[hook]
    return (f"from plugstack import hookimpl\nfrom hook_calls import calls\n\n"
            f"@hookimpl{marker}\ndef {hook}({args}):\n" + textwrap.indent(textwrap.dedent(body), "    "))


def observer(tag: str, marker: str = "") -> str:
    return plugin(marker, "plugstack_run_start", f"calls.append({tag!r})\n")


def searchpath(path: str, marker: str = "") -> str:
    return plugin(marker, "plugstack_config_searchpath", f"return {path!r}\n")


def backend(name: str, marker: str = "") -> str:
    return plugin(marker, "plugstack_register_backends", f"calls.append({name!r})\nregister({name!r}, 'x:Y')\n")


RAISE = "raise RuntimeError('plugin bug')\n"


def load(plugin_dir, *plugins: tuple[str, str], strict: bool = False) -> Registry:
    return Registry(entry_points=[plugin_dir(n, s) for n, s in plugins], strict=strict, disabled=())


def test_wrapper_sees_the_registration_call_and_its_result(plugin_dir, calls):
    wrapper = plugin("(wrapper=True)", "plugstack_register_backends", """
        calls.append(("before", callable(register)))
        result = yield
        calls.append(("after", result))
        register("wrapped-chip", "x:Y")
        return result
    """)
    reg = load(plugin_dir, ("wrapper", wrapper), ("inner", backend("inner-chip")))
    assert calls == [("before", True), "inner-chip", ("after", [])]
    assert reg.get("backend", "wrapped-chip").plugin == "wrapper"
    assert reg.get("backend", "inner-chip").plugin == "inner"


def test_wrapper_runs_before_and_after_the_other_observers(plugin_dir, calls):
    wrapper = plugin("(wrapper=True)", "plugstack_run_start", """
        calls.append("wrapper before")
        result = yield
        calls.append("wrapper after")
        return result
    """)
    reg = load(plugin_dir, ("wrapper", wrapper), ("a", observer("a")), ("b", observer("b")))
    reg.notify("plugstack_run_start", ctx=object())
    assert calls[0] == "wrapper before" and calls[-1] == "wrapper after"
    assert sorted(calls[1:-1]) == ["a", "b"]


def test_old_style_hookwrapper_sees_the_outcome_and_may_force_a_result(plugin_dir, calls):
    old_style = plugin("(hookwrapper=True)", "plugstack_config_searchpath", """
        outcome = yield
        calls.append(outcome.get_result())
        outcome.force_result([*outcome.get_result(), "pkg://added"])
    """)
    reg = load(plugin_dir, ("old_style", old_style), ("paths", searchpath("pkg://paths_conf")))
    assert reg.config_searchpaths() == [("paths", "pkg://paths_conf"), ("old_style", "pkg://added")]
    assert calls == [["pkg://paths_conf"]]


def test_tryfirst_and_trylast_order_observers(plugin_dir, calls):
    # Loaded first and last on purpose: pluggy calls later-registered plugins first.
    reg = load(plugin_dir, ("first", observer("first", "(tryfirst=True)")), ("plain", observer("plain")),
               ("last", observer("last", "(trylast=True)")))
    reg.notify("plugstack_run_start", ctx=object())
    assert calls == ["first", "plain", "last"]


def test_tryfirst_and_trylast_order_config_search_paths(plugin_dir, calls):
    reg = load(plugin_dir, ("first", searchpath("pkg://first", "(tryfirst=True)")), ("plain", searchpath("pkg://plain")),
               ("last", searchpath("pkg://last", "(trylast=True)")))
    assert reg.config_searchpaths() == [("first", "pkg://first"), ("plain", "pkg://plain"), ("last", "pkg://last")]


def test_first_loaded_registration_wins_whatever_the_call_order(plugin_dir, calls):
    reg = load(plugin_dir, ("early", backend("chip")), ("late", backend("chip", "(tryfirst=True)")))
    assert calls == ["chip", "chip"]
    assert reg.get("backend", "chip").plugin == "early"
    assert reg.plugins["late"].status == "broken" and "'early'" in reg.plugins["late"].error


def test_raising_observer_is_isolated_and_the_others_still_run(plugin_dir, calls):
    reg = load(plugin_dir, ("a", observer("a")), ("bad", plugin("", "plugstack_run_start", RAISE)),
               ("b", observer("b")))
    with capture_logs() as logs:
        reg.notify("plugstack_run_start", ctx=object())
    assert sorted(calls) == ["a", "b"]
    failed = [e for e in logs if e["event"] == "plugin.hook_failed"]
    assert [(e["plugin"], e["hook"]) for e in failed] == [("bad", "plugstack_run_start")]
    assert "plugin bug" in failed[0]["error"]
    assert reg.plugins["bad"].status == "ok"  # an observer's failure does not break the plugin


def test_raising_registration_is_isolated_and_the_others_still_register(plugin_dir, calls):
    bad = plugin("", "plugstack_register_backends", "register('half-chip', 'x:Y')\n" + RAISE)
    reg = load(plugin_dir, ("a", backend("a-chip")), ("bad", bad), ("b", backend("b-chip")))
    assert reg.names("backend") == ["a-chip", "b-chip"]
    assert reg.plugins["bad"].status == "broken" and "plugin bug" in reg.plugins["bad"].error


BREAKS_IN_APPS = """
from plugstack import hookimpl
from hook_calls import calls

@hookimpl
def plugstack_register_backends(register):
    register("kept-chip", "x:Y")

@hookimpl
def plugstack_register_apps(register):
    raise RuntimeError("apps bug")

@hookimpl
def plugstack_run_start(ctx):
    calls.append("broken plugin observed")
"""


def test_a_plugin_broken_in_one_registration_hook_loses_what_it_registered_in_the_others(plugin_dir, calls):
    reg = load(plugin_dir, ("breaks", BREAKS_IN_APPS))
    assert reg.names("backend") == [] and reg.plugins["breaks"].provides == []
    assert "plugstack_register_apps raised RuntimeError: apps bug" in reg.plugins["breaks"].error


def test_a_broken_plugins_other_hooks_no_longer_run(plugin_dir, calls):
    reg = load(plugin_dir, ("breaks", BREAKS_IN_APPS))
    reg.notify("plugstack_run_start", ctx=object())
    assert calls == []


def test_a_broken_plugin_is_logged_once(plugin_dir, calls):
    twice = BREAKS_IN_APPS.replace('register("kept-chip", "x:Y")', 'raise RuntimeError("backends bug")')
    with capture_logs() as logs:
        reg = load(plugin_dir, ("breaks", twice))
    broken = [e for e in logs if e["event"] == "plugin.broken"]
    assert [e["plugin"] for e in broken] == ["breaks"]
    assert "backends bug" in reg.plugins["breaks"].error  # the first error is kept


@pytest.mark.parametrize("where", ["before", "after"])
def test_raising_registration_wrapper_is_isolated(plugin_dir, calls, where):
    wrapper = plugin("(wrapper=True)", "plugstack_register_backends", f"""
        register("wrapper-chip", "x:Y")
        {RAISE if where == "before" else ""}
        result = yield
        {RAISE if where == "after" else ""}
        return result
    """)
    reg = load(plugin_dir, ("wrapper", wrapper), ("inner", backend("inner-chip")))
    assert calls == ["inner-chip"]
    assert reg.names("backend") == ["inner-chip"]  # the wrapper's own registration is dropped
    assert reg.plugins["wrapper"].status == "broken" and "plugin bug" in reg.plugins["wrapper"].error


@pytest.mark.parametrize("where", ["before", "after"])
def test_raising_observer_wrapper_is_isolated(plugin_dir, calls, where):
    wrapper = plugin("(wrapper=True)", "plugstack_run_start", f"""
        {RAISE if where == "before" else ""}
        result = yield
        {RAISE if where == "after" else ""}
        return result
    """)
    reg = load(plugin_dir, ("wrapper", wrapper), ("a", observer("a")))
    with capture_logs() as logs:
        reg.notify("plugstack_run_start", ctx=object())
    assert calls == ["a"]
    assert [e["plugin"] for e in logs if e["event"] == "plugin.hook_failed"] == ["wrapper"]


def test_raising_config_searchpath_breaks_only_its_plugin(plugin_dir, calls):
    reg = load(plugin_dir, ("bad", plugin("", "plugstack_config_searchpath", RAISE)),
               ("paths", searchpath("pkg://paths_conf")))
    assert reg.config_searchpaths() == [("paths", "pkg://paths_conf")]
    assert reg.plugins["bad"].status == "broken" and "plugin bug" in reg.plugins["bad"].error


def test_a_wrapper_that_is_not_a_generator_is_rejected_by_pluggy(plugin_dir, calls):
    reg = load(plugin_dir, ("not_gen", plugin("(wrapper=True)", "plugstack_run_start", "pass\n")))
    assert reg.plugins["not_gen"].status == "broken"
    assert "not a generator function" in reg.plugins["not_gen"].error


def _notify(reg: Registry) -> None:
    reg.notify("plugstack_run_start", ctx=object())


@pytest.mark.parametrize(
    ("source", "then"),
    [
        (plugin("", "plugstack_register_backends", RAISE), None),
        (plugin("(wrapper=True)", "plugstack_register_backends", "result = yield\n" + RAISE), None),
        (plugin("", "plugstack_run_start", RAISE), _notify),
        (plugin("(wrapper=True)", "plugstack_run_start", RAISE + "yield\n"), _notify),
        (plugin("", "plugstack_config_searchpath", RAISE), Registry.config_searchpaths),
    ],
    ids=["registration", "registration-wrapper", "observer", "observer-wrapper", "config-searchpath"],
)
def test_strict_mode_makes_a_raising_implementation_fatal(plugin_dir, calls, source, then):
    with pytest.raises(PluginError, match=r"Plugin 'bad'.*plugin bug"):
        reg = load(plugin_dir, ("bad", source), strict=True)
        then(reg)


def test_strict_mode_is_fatal_even_when_a_wrapper_swallows_the_error(plugin_dir, calls):
    swallower = plugin("(wrapper=True)", "plugstack_run_start", """
        try:
            return (yield)
        except Exception:
            return []
    """)
    reg = load(plugin_dir, ("swallower", swallower), ("bad", plugin("", "plugstack_run_start", RAISE)), strict=True)
    with pytest.raises(PluginError, match="Plugin 'bad' failed in plugstack_run_start"):
        _notify(reg)


def test_disabled_plugin_is_blocked_in_pluggy(plugin_dir, calls):
    reg = Registry(entry_points=[plugin_dir("blocked", observer("blocked"))], strict=False, disabled={"blocked"})
    assert reg.pm.is_blocked("blocked")
    assert "blocked" not in sys.modules
    reg.register_plugin(importlib.import_module("blocked"), "blocked")  # pluggy refuses it too
    _notify(reg)
    assert calls == [] and reg.plugins["blocked"].status == "disabled"


def test_register_plugin_runs_only_the_new_plugins_registration_hooks(plugin_dir, calls):
    wrapper = plugin("(wrapper=True)", "plugstack_register_backends", """
        calls.append("wrapper")
        return (yield)
    """)
    reg = load(plugin_dir, ("wrapper", wrapper), ("early", backend("early-chip")))
    calls.clear()
    plugin_dir("late", backend("late-chip"))
    reg.register_plugin(importlib.import_module("late"), "late")
    assert calls == ["late-chip"]  # neither the early plugin nor the other plugin's wrapper ran
    assert reg.get("backend", "late-chip").plugin == "late"
    assert reg.names("backend") == ["early-chip", "late-chip"]


@pytest.fixture
def third_party_llama(tmp_path, monkeypatch):
    """An installed-looking distribution whose entry point is named like the built-in ``llama``."""
    dist = tmp_path / "evil_llama-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-llama\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[plugstack]\nllama = evil_llama_plugin\n")
    (tmp_path / "evil_llama_plugin.py").write_text(
        "from plugstack import hookimpl\n\n@hookimpl\ndef plugstack_register_models(register):\n"
        "    register('llama', 'evil_llama_plugin:load')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("evil_llama_plugin", None)


def test_third_party_entry_point_named_like_a_builtin_is_the_clash(third_party_llama):
    eps = importlib.metadata.entry_points(group="plugstack")
    found = [ep.dist.metadata["Name"] for ep in eps if ep.name == "llama"]
    assert found == ["evil-llama", "plugstack"]  # the third party comes first on sys.path
    reg = Registry(strict=False, disabled=())
    assert reg.plugins["llama"].distribution == "plugstack" and reg.plugins["llama"].status == "ok"
    assert reg.get("model", "llama").factory_ref == "plugstack.plugins.llama.loader:load"
    clash = reg.plugins["llama (evil-llama)"]
    assert clash.status == "broken" and clash.distribution == "evil-llama"
    assert "'evil-llama'" in clash.error and "'plugstack'" in clash.error
    assert "evil_llama_plugin" not in sys.modules  # never imported


def test_register_plugin_under_a_taken_name_is_a_clash_and_the_first_keeps_working(plugin_dir, calls):
    reg = load(plugin_dir, ("first", backend("first-chip")))
    plugin_dir("second", backend("second-chip"))
    reg.register_plugin(importlib.import_module("second"), "first")
    assert reg.plugins["first"].status == "ok" and reg.names("backend") == ["first-chip"]
    (clash,) = [r for r in reg.plugins.values() if r.name.startswith("first (")]
    assert clash.status == "broken" and "already taken" in clash.error


def test_runner_wrapper_forwards_flags_and_its_step_overrides_are_used():
    import torch

    import plugstack
    from plugstack.testing import SlotDriver, tiny_decoder_model

    model = tiny_decoder_model()
    inner = plugstack.EagerRunner(model.module, model.signature)
    inner.accepts_numpy, inner.uses_torch_threads = True, False

    class Counting(plugstack.RunnerWrapper):
        steps = 0

        def step(self, inputs, state, rows, new):
            self.steps += 1
            return super().step(inputs, state, rows, new)

    wrapped = Counting(inner)
    assert (wrapped.accepts_numpy, wrapped.uses_torch_threads, wrapped.signature) == (True, False, inner.signature)
    logits = SlotDriver(wrapped).feed([[1, 2, 3]])
    assert wrapped.steps == 1 and torch.equal(logits, SlotDriver(inner).feed([[1, 2, 3]]))


def test_create_backend_builds_a_registered_backend_with_checked_options():
    import plugstack
    from plugstack.errors import ConfigError

    backend = plugstack.create_backend("cpu", threads=1, dtype="bf16")
    assert (backend.cfg.threads, backend.cfg.dtype) == (1, "bf16")
    with pytest.raises(ConfigError, match="threads"):
        plugstack.create_backend("cpu", threads="many")
    with pytest.raises(UnknownPluginError, match="Did you mean 'onnx'"):
        plugstack.create_backend("onxx")
