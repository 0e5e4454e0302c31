"""The installed-wheel path: build plugstack's wheel, install it into a fresh virtual
environment, and use the CLI from there (configs must come from the wheel, not the
checkout). The example third-party plugin is installed and uninstalled there too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*cmd, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new venv holding only plugstack's wheel; its dependencies (torch, hydra...) are
    borrowed from the test environment through a filtered .pth, so nothing is downloaded."""
    work = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", work / "dist", ROOT)
    (wheel,) = (work / "dist").glob("plugstack-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    # Dependencies: symlink everything of our site-packages except plugstack itself and
    # the example plugin, so the fresh venv cannot see the checkout's (editable) install.
    deps = work / "deps"
    deps.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for item in ours.iterdir():
        if item.name.lower().startswith(("plugstack", "__editable__", "_plugstack", "__pycache__")):
            continue
        (deps / item.name).symlink_to(item)
    fresh_site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (fresh_site / "zz_deps.pth").write_text(str(deps) + "\n")
    return venv


def test_wheel_cli_runs_from_the_fresh_env(fresh_env, tmp_path):
    bin_ = fresh_env / "bin"
    where = run(bin_ / "python", "-c", "import plugstack, plugstack.conf; print(plugstack.__file__)", cwd=tmp_path)
    assert str(fresh_env) in where.stdout
    help_text = run(bin_ / "plugstack", "--help", cwd=tmp_path).stdout
    assert "backend: " in help_text and "onnx" in help_text and "smollm2" in help_text
    assert "pinned-cpu" not in help_text  # the example plugin is not installed here
    cfg = run(bin_ / "plugstack", "backend=onnx", "--cfg", "job", cwd=tmp_path).stdout
    assert "name: onnx" in cfg
    plugins = {p["name"] for p in json.loads(run(bin_ / "plugstack", "plugins", "--json", cwd=tmp_path).stdout)}
    assert {"cpu", "onnx", "cuda", "auto", "llama", "generate", "chat", "serve"} <= plugins
    page = run(bin_ / "python", "-c", "from importlib.resources import files; "
               "print(files('plugstack.plugins.serve').joinpath('static/index.html').read_text()[:15])", cwd=tmp_path)
    assert page.stdout.startswith("<!doctype html>")  # the web page ships in the wheel


def test_example_plugin_install_use_uninstall(fresh_env, tiny_model_dir, tmp_path):
    bin_ = fresh_env / "bin"
    env = {**os.environ, "PLUGSTACK_OUTPUTS": str(tmp_path / "outputs")}
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        ROOT / "examples" / "plugstack-example")
    (wheel,) = (tmp_path / "dist").glob("plugstack_example-*.whl")
    run(bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    plugins = {p["name"]: p for p in json.loads(run(bin_ / "plugstack", "plugins", "--json", cwd=tmp_path).stdout)}
    assert plugins["example"]["status"] == "ok"
    help_text = run(bin_ / "plugstack", "--help", cwd=tmp_path).stdout
    assert "pinned-cpu" in help_text and "describe" in help_text
    out = run(bin_ / "plugstack", "backend=pinned-cpu", "app=describe", "model=llama",
              f"model.path={tiny_model_dir}", cwd=tmp_path, env=env).stdout
    assert json.loads(out)["runner"] == "TimedRunner"

    run(bin_ / "python", "-m", "pip", "uninstall", "-y", "-q", "plugstack-example", cwd=tmp_path)
    plugins = {p["name"] for p in json.loads(run(bin_ / "plugstack", "plugins", "--json", cwd=tmp_path).stdout)}
    assert "example" not in plugins
    gone = subprocess.run([bin_ / "plugstack", "backend=pinned-cpu", "--cfg", "job"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert gone.returncode == 2 and "Unknown backend 'pinned-cpu'" in gone.stderr
    text = run(bin_ / "plugstack", "backend=cpu", "app=generate", "model=llama", f"model.path={tiny_model_dir}",
               "app.max_new_tokens=4", "app.chat=false", "app.prompt=The sea", cwd=tmp_path, env=env)
    assert text.stdout.strip()
