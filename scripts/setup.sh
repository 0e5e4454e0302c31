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
  # The web page's browser test drives Debian's Chromium through Playwright (no browser downloads).
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "setup.sh: could not install chromium; the browser test will fail until it is" >&2
    else
      echo "setup.sh: the browser test needs Chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
    fi
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
