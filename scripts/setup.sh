#!/usr/bin/env bash
# Create .venv with plugstack installed (editable). `--test` adds what the tests need:
# transformers (the reference), pytest, and the example third-party plugin.
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned: an unpinned torch lets pip pick a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]" -e ./examples/plugstack-example
else
  .venv/bin/python -m pip install -q -e .
fi
