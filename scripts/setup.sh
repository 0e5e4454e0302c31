#!/usr/bin/env bash
# Create .venv with plugstack installed (editable). `--test` adds what the tests need:
# transformers (the reference), pytest, and the example third-party plugin.
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { echo "setup.sh: $*" >&2; }
[ -x .venv/bin/python ] || { step "creating .venv"; "$PYTHON" -m venv .venv; }
# torch first and pinned: an unpinned torch lets pip pick a multi-GB CUDA build.
step "installing torch 2.13.0 (CPU)"
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  step "installing plugstack, the test tools (transformers, pytest, playwright, ...) and the example plugin"
  .venv/bin/python -m pip install -q -e ".[test]" -e ./examples/plugstack-example
  # The web page's browser test drives Debian's Chromium through Playwright (no browser downloads).
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      step "installing Debian's chromium for the browser test"
      { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "setup.sh: could not install chromium; the browser test will fail until it is" >&2
    else
      echo "setup.sh: the browser test needs Chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
    fi
  fi
else
  step "installing plugstack (onnxruntime, hydra, tokenizers, ...)"
  .venv/bin/python -m pip install -q -e .
fi
step "done: .venv/bin/plugstack is ready"
