"""The README's main command, as written: `plugstack` with the default config runs the real
SmolLM2 on the fastest available backend and answers on stdout."""

from __future__ import annotations

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
                            cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "The capital of France is Paris."
    assert "backend.auto.selected" in result.stderr and "backend=onnx" in result.stderr
