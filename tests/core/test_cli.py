"""The `plugstack` command as a user runs it: subprocesses, real configs, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).with_name("plugstack")


def plugstack(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)


HEAVY = ("torch", "onnxruntime", "transformers", "fastapi", "uvicorn")


@pytest.mark.parametrize("argv", [["plugins"], ["backends"], ["--help"], ["plugins", "--json"]])
def test_listing_and_help_do_not_import_heavy_libraries(argv):
    code = (
        "import sys\n"
        "from plugstack.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY=\n" in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip()  # it printed its listing/help


def test_plugins_json_lists_builtins_and_example():
    result = plugstack("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert {"cpu", "onnx", "cuda", "auto", "llama", "generate", "example"} <= set(plugins)
    example = plugins["example"]
    assert example["distribution"] == "plugstack-example" and example["status"] == "ok"
    assert {"kind": "backend", "name": "pinned-cpu"} in example["provides"]


def test_backends_json_reports_availability_and_reasons():
    result = plugstack("backends", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["cpu"]["available"] and rows["cpu"]["device"]["name"]
    assert rows["onnx"]["available"]
    assert not rows["cuda"]["available"] and "CUDA" in rows["cuda"]["reason"]


def test_help_lists_every_group_and_third_party_choices():
    result = plugstack("--help")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {line.split(":")[0]: line for line in section.splitlines() if ":" in line}
    assert "pinned-cpu" in groups["backend"] and "onnx" in groups["backend"] and "cpu" in groups["backend"]
    assert "describe" in groups["app"] and "generate" in groups["app"]
    assert "smollm2" in groups["model"]


def test_unknown_choice_suggests_the_close_match():
    result = plugstack("backend=onxx")
    assert result.returncode == 2
    assert "Unknown backend 'onxx'. Did you mean 'onnx'?" in result.stderr
    assert "cpu" in result.stderr and result.stdout == ""


def test_unknown_choice_in_a_sweep_is_caught_too():
    result = plugstack("--multirun", "backend=cpu,onnxx", "--cfg", "job")
    assert result.returncode == 2 and "Did you mean 'onnx'?" in result.stderr


def test_wrong_type_and_unknown_key_fail_at_composition():
    wrong = plugstack("app.max_new_tokens=abc", "--cfg", "job")
    assert wrong.returncode == 2
    assert "app.max_new_tokens: Value 'abc' of type 'str' could not be converted to Integer" in wrong.stderr
    unknown = plugstack("backend=cpu", "backend.no_such_option=1", "--cfg", "job")
    assert unknown.returncode == 2 and "backend 'cpu' has no option 'no_such_option'" in unknown.stderr


def test_cfg_job_prints_the_composed_config_on_stdout():
    result = plugstack("backend=onnx", "backend.threads=1", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "name: onnx" in result.stdout and "threads: 1" in result.stdout


def test_disabled_plugin_disappears_everywhere():
    env = {"PLUGSTACK_DISABLE_PLUGINS": "example"}
    plugins = {p["name"]: p for p in json.loads(plugstack("plugins", "--json", env=env).stdout)}
    assert plugins["example"]["status"] == "disabled"
    help_text = plugstack("--help", env=env).stdout
    assert "pinned-cpu" not in help_text


@pytest.fixture
def broken_dist(tmp_path):
    """An installed-looking distribution whose plugin module fails to import."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[plugstack]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    return {"PYTHONPATH": str(tmp_path)}


def test_broken_third_party_plugin_is_reported_and_the_rest_works(broken_dist, tiny_model_dir, tmp_path):
    listing = plugstack("plugins", "--json", env=broken_dist)
    assert listing.returncode == 0
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["broken"]["status"] == "broken"
    assert "broken on purpose" in plugins["broken"]["error"]
    assert plugins["broken"]["distribution"] == "broken-plugin"
    run = plugstack("app=describe", "backend=cpu", "model=llama", f"model.path={tiny_model_dir}",
                    env={**broken_dist, "PLUGSTACK_OUTPUTS": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["logits_finite"] is True
    assert run.stderr.count("plugin.broken") == 1  # warned once


def test_strict_mode_makes_the_broken_plugin_fatal(broken_dist):
    result = plugstack("--cfg", "job", env={**broken_dist, "PLUGSTACK_STRICT_PLUGINS": "1"})
    assert result.returncode == 2
    assert "broken on purpose" in result.stderr and result.stdout == ""


def test_json_logging_binds_run_context_on_every_line(tiny_model_dir, tmp_path):
    result = plugstack("app=describe", "backend=pinned-cpu", "model=llama", f"model.path={tiny_model_dir}",
                       "log.format=json", "log.level=INFO", env={"PLUGSTACK_OUTPUTS": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the app's output only
    assert report["backend"] == "pinned-cpu"
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    run_events = [e for e in events if e.get("logger", "").startswith(("plugstack", "plugstack_example"))]
    assert {"run.start", "run.end", "describe.done", "pinned_cpu.stats"} <= {e["event"] for e in run_events}
    run_ids = {e["run_id"] for e in run_events}
    assert len(run_ids) == 1
    for e in run_events:
        assert e["app"] == "describe" and e["backend"] == "pinned-cpu" and e["model"] == "llama"
    # The run directory describes itself: its log file has the same events as JSON lines,
    # and run.json records the choices.
    (run_dir,) = [p.parent for p in tmp_path.rglob("run.json")]
    file_events = [json.loads(line) for line in (run_dir / "plugstack.log").read_text().splitlines()]
    assert {"run.start", "describe.done"} <= {e["event"] for e in file_events}
    assert {e.get("run_id") for e in file_events if e.get("logger", "").startswith("plugstack.")} == run_ids
    record = json.loads((run_dir / "run.json").read_text())
    assert record["choices"] == {"app": "describe", "model": "llama", "backend": "pinned-cpu"}
    assert record["exit_code"] == 0


def test_console_logging_is_human_readable(tiny_model_dir, tmp_path):
    result = plugstack("app=describe", "backend=cpu", "model=llama", f"model.path={tiny_model_dir}",
                       "log.level=INFO", env={"PLUGSTACK_OUTPUTS": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "run.start" in x)
    assert "run_id=" in line and "app=describe" in line and not line.startswith("{")


@pytest.mark.parametrize(
    ("launcher", "backends"),
    [([], "cpu,onnx"), (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "cpu,pinned-cpu")],
    ids=["basic-launcher", "joblib-launcher"],
)
def test_multirun_over_two_backends(tiny_model_dir, tmp_path, launcher, backends):
    result = plugstack("--multirun", *launcher, "app=describe", f"backend={backends}", "model=llama",
                       f"model.path={tiny_model_dir}",
                       env={"PLUGSTACK_OUTPUTS": str(tmp_path / "runs"), "PLUGSTACK_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("run.json"))]
    assert sorted(r["choices"]["backend"] for r in records) == sorted(backends.split(","))
    assert all(r["exit_code"] == 0 for r in records)
    assert "[HYDRA]" in result.stderr and "[HYDRA]" not in result.stdout  # Hydra's messages: stderr


def test_unavailable_backend_is_a_clear_error(tiny_model_dir, tmp_path):
    result = plugstack("app=describe", "backend=cuda", "model=llama", f"model.path={tiny_model_dir}",
                       env={"PLUGSTACK_OUTPUTS": str(tmp_path)})
    assert result.returncode == 2
    assert "Backend 'cuda' is not available here" in result.stderr
    assert "Available backends:" in result.stderr and "cpu" in result.stderr


def test_shell_completion_offers_group_choices():
    script = plugstack("-sc", "install=bash")
    assert script.returncode == 0 and "complete" in script.stdout
    query = plugstack("-sc", "query=bash", env={"COMP_LINE": "plugstack backend="})
    assert query.returncode == 0
    assert {"backend=cpu", "backend=onnx", "backend=pinned-cpu"} <= set(query.stdout.split())
