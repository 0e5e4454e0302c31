"""The README's main command, as written: `plugstack` with the default config runs the real
SmolLM2 on the fastest available backend and answers on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_readme_quickstart_command_is_what_this_test_runs():
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/setup.sh && .venv/bin/plugstack\n" in readme
    assert "./scripts/setup.sh --test && .venv/bin/python -m pytest\n" in readme
    ci = (ROOT / ".ci" / "run").read_text().strip()
    assert ci.endswith("./scripts/setup.sh --test && .venv/bin/python -m pytest")


def test_default_run_answers_on_stdout(smollm2_gguf, tmp_path):
    result = subprocess.run([str(Path(sys.executable).with_name("plugstack"))], capture_output=True, text=True,
                            cwd=tmp_path, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "The capital of France is Paris."
    assert "[info" not in result.stderr  # a plain run shows the answer, not the log (that is in the run dir)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("run.json")]
    assert record["choices"]["backend"] == "auto" and record["backend_ran"] == "onnx"
    (log,) = (tmp_path / "outputs").rglob("plugstack.log")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["event"] == "backend.auto.selected" for e in events)
    later = [e for e in events if e["event"] in ("generate.result", "run.end")]
    assert later and all(e["backend"] == "onnx" and e["backend_choice"] == "auto" for e in later)
