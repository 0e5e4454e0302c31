"""The bad-input matrix's shared runner: the `plugstack` command as a user runs it, and the
one promise every row checks (exit code, no traceback, stderr names the problem)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).with_name("plugstack")


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts: Ctrl-C as in a terminal, even when
    the tests run as a background job (whose children inherit SIGINT ignored, which Python
    then leaves ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300, stdin: str | None = None) -> Result:
    """Run ``plugstack argv`` in a fresh process; ``env`` is added to this one's."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run([str(BIN), *argv], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


def check(result: Result, code: int, says: Sequence[str] = ()) -> None:
    """The promise: exit ``code``, no traceback, and stderr says each of ``says`` (a user's
    mistake, code 2, is one ``plugstack: error:`` line)."""
    tail = result.stderr[-3000:]
    assert result.code == code, f"exit {result.code}, expected {code}\n{tail}"
    assert TRACEBACK not in result.stderr, tail
    for phrase in says:
        assert phrase in result.stderr, f"stderr does not say {phrase!r}\n{tail}"
    if code == 2:
        assert "plugstack: error: " in result.stderr, tail


def deny_writes_under(monkeypatch, root):
    """Make ``root`` unwritable as a non-root user sees it (root itself writes through modes)."""
    real_mkdir, real_open = os.mkdir, os.open

    def denied(path):
        return str(os.path.abspath(path)).startswith(str(root))

    def mkdir(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if denied(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
