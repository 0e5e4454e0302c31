"""plugstack.files as a plugin author relies on it: leftovers of killed processes are removed
(and only those), storage faults become one clear StorageError, lock waits are said out loud."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock
from structlog.testing import capture_logs

from plugstack import files
from plugstack.errors import ModelLoadError, StorageError

HOST = files._HOST


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not files.pid_alive(proc.pid)
    return proc.pid


def make_leftover(directory: Path, name: str, *, age_days: float = 0.0) -> Path:
    """A temporary directory holding 1 KB, last written ``age_days`` ago."""
    path = directory / name
    path.mkdir()
    (path / "model.onnx").write_bytes(b"x" * 1024)
    then = time.time() - age_days * 86400
    for p in (path / "model.onnx", path):
        os.utime(p, (then, then))
    return path


# -- temporary names -------------------------------------------------------------------------


def test_temporary_names_carry_host_and_pid(tmp_path):
    seen = []
    with files.atomic_open(tmp_path / "run.json") as f:
        seen = [p.name for p in tmp_path.iterdir()]
        f.write("{}")
    assert seen and seen[0].startswith(f".run.json.tmp-{HOST}-{os.getpid()}-")
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


# -- stale leftovers ---------------------------------------------------------------------------

# (id, name of the leftover (pid and host filled in), age in days, busy, removed?)
LEFTOVERS = [
    ("dead-owner", ".k1.tmp-{host}-{dead}-abc", 0, False, True),
    ("dead-owner-trash", ".k1.trash-{host}-{dead}-123", 0, False, True),
    ("own-pid-kept", ".k1.tmp-{host}-{me}-abc", 30, False, False),
    ("live-owner-kept", ".k1.tmp-{host}-{parent}-abc", 0, False, False),
    ("live-owner-old-reused-pid", ".k1.tmp-{host}-{parent}-abc", 8, False, True),
    ("other-host-fresh-kept", ".k1.tmp-otherhost-{dead}-abc", 1, False, False),
    ("other-host-old", ".k1.tmp-otherhost-{dead}-abc", 8, False, True),
    ("old-but-locked-kept", ".k1.tmp-otherhost-{dead}-abc", 8, True, False),
    ("legacy-name-old", ".0123456789abcdef.tmp-ab_cd9xy", 8, False, True),
    ("legacy-name-fresh-kept", ".0123456789abcdef.tmp-ab_cd9xy", 1, False, False),
    ("legacy-fetch-old", "plugstack-fetch-k2j4l5m6", 8, False, True),
    ("not-ours-kept", "0123456789abcdef", 30, False, False),
    ("lookalike-kept", "model.tmp-{host}-{dead}-abc", 30, False, False),
]


@pytest.mark.parametrize("name, age, busy, removed", [r[1:] for r in LEFTOVERS], ids=[r[0] for r in LEFTOVERS])
def test_only_provable_leftovers_are_removed(tmp_path, name, age, busy, removed):
    name = name.format(host=HOST, dead=dead_pid(), me=os.getpid(), parent=os.getppid())
    path = make_leftover(tmp_path, name, age_days=age)
    keep = make_leftover(tmp_path, "0123456789abcdef0123456789abcdef")  # a real entry, never touched
    with capture_logs() as logs:
        gone = files.remove_stale_temps(tmp_path, busy=lambda p: busy)
    assert path.exists() is not removed
    assert gone == ([path] if removed else [])
    assert keep.exists()
    events = [e for e in logs if e["event"] == "files.leftover.removed"]
    assert bool(events) is removed
    if removed:
        assert events[0]["path"] == str(path) and events[0]["bytes"] == 1024 and events[0]["reason"]


def test_a_leftover_file_is_removed_too(tmp_path):
    path = tmp_path / f".model.gguf.tmp-{HOST}-{dead_pid()}-x1"
    path.write_bytes(b"partial download")
    assert files.remove_stale_temps(tmp_path) == [path] and not path.exists()


def test_a_missing_directory_is_nothing_to_clean(tmp_path):
    assert files.remove_stale_temps(tmp_path / "absent") == []


# -- storage faults ----------------------------------------------------------------------------


def _raise(exc: BaseException) -> None:
    raise exc


def _wrapped_enospc() -> None:
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        raise ModelLoadError("could not export model 'x' to ONNX") from e


# (id, what the block raises (given the root), phrases the StorageError says; None: passes unchanged)
FAULTS = [
    ("unwritable", lambda r: _raise(PermissionError(errno.EACCES, "Permission denied", str(r / "a"))),
     ["Permission denied", "/a", "writable for this user"]),
    ("parent-unwritable", lambda r: _raise(PermissionError(errno.EACCES, "Permission denied", str(r.parent))),
     ["Permission denied", "writable for this user"]),
    ("disk-full-no-filename", lambda r: _raise(OSError(errno.ENOSPC, "No space left on device")),
     ["No space left on device", "free space on that disk"]),
    ("disk-full-as-cause", lambda r: _wrapped_enospc(), ["No space left on device"]),
    ("read-only-fs", lambda r: _raise(OSError(errno.EROFS, "Read-only file system", str(r))),
     ["Read-only file system", "writable file system"]),
    ("elsewhere-unchanged", lambda r: _raise(PermissionError(errno.EACCES, "Permission denied", "/etc/x")), None),
    ("missing-file-unchanged", lambda r: _raise(FileNotFoundError(errno.ENOENT, "No such file", str(r))), None),
    ("not-os-unchanged", lambda r: _raise(ValueError("bad")), None),
]


@pytest.mark.parametrize("fault, says", [r[1:] for r in FAULTS], ids=[r[0] for r in FAULTS])
def test_storage_faults_become_one_clear_error(tmp_path, fault, says):
    root = tmp_path / "home" / "onnx"
    if says is None:
        with pytest.raises((OSError, ValueError)) as info:
            with files.storage_errors(root, what="the cache", setting="PLUGSTACK_HOME (now x)"):
                fault(root)
        assert not isinstance(info.value, StorageError)
        return
    with pytest.raises(StorageError) as info:
        with files.storage_errors(root, what="the cache", setting="PLUGSTACK_HOME (now x)"):
            fault(root)
    text = str(info.value)
    assert text.startswith("cannot write the cache at ") and "Set PLUGSTACK_HOME (now x) to a writable" in text
    for phrase in says:
        assert phrase in text, text


def test_a_file_in_the_way_is_named(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a directory")
    monkeypatch.setenv("PLUGSTACK_HOME", str(home))
    with pytest.raises(StorageError, match=rf"Not a directory \({home} is a file, not a directory\)"
                                           rf".*Set PLUGSTACK_HOME \(now {home}\)"):
        with files.storage_errors(files.cache_dir("onnx"), what="the cache", setting=files.home_setting()):
            files.cache_dir("onnx").mkdir(parents=True, exist_ok=True)


# -- lock waits --------------------------------------------------------------------------------


def hold(lock_path: Path, seconds: float) -> threading.Thread:
    """Hold ``lock_path`` from another thread for ``seconds`` (returns once it is held)."""
    held = threading.Event()

    def run() -> None:
        with FileLock(str(lock_path)):
            files.atomic_write(files._owner_file(lock_path), '{"pid": 4242, "host": "h", "since": "t"}')
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    held.wait(5)
    return thread


def test_waiting_for_a_lock_says_who_and_where(tmp_path):
    lock = tmp_path / "k.lock"
    thread = hold(lock, 1.0)
    start = time.monotonic()
    with capture_logs() as logs:
        with files.waiting_lock(lock, doing="building the ONNX graph", path=tmp_path / "k", timeout_s=30,
                                every_s=0.3):
            waited = time.monotonic() - start
    thread.join()
    assert 0.8 < waited < 10
    events = [e["event"] for e in logs]
    assert events[0] == "files.lock.waiting" and "files.lock.still_waiting" in events
    assert events[-1] == "files.lock.acquired"
    first = logs[0]
    assert first["log_level"] == "warning"
    assert first["message"] == (f"waiting for another plugstack process building the ONNX graph at {tmp_path / 'k'}; "
                                f"lock file {lock}")
    assert first["holder"] == "pid 4242 on h, since t" and "end it" in first["hint"]
    assert not files._owner_file(lock).exists()  # the holder record goes with the lock


def test_a_free_lock_is_taken_silently(tmp_path):
    with capture_logs() as logs:
        with files.waiting_lock(tmp_path / "k.lock", doing="x", path=tmp_path, timeout_s=1):
            assert files.lock_is_held(tmp_path / "k.lock")
    assert logs == [] and not files.lock_is_held(tmp_path / "k.lock")


def test_a_lock_never_released_is_a_clear_error(tmp_path):
    lock = tmp_path / "k.lock"
    thread = hold(lock, 2.0)
    with pytest.raises(StorageError, match=rf"gave up after .* building it at .*lock file {lock}, held by pid 4242"):
        with files.waiting_lock(lock, doing="building it", path=tmp_path, timeout_s=0.5, every_s=0.2):
            pass
    thread.join()


def test_atomic_writes_get_the_modes_of_ordinary_files(tmp_path):
    from plugstack.files import FILE_MODE, atomic_write

    atomic_write(tmp_path / "result.json", "{}")
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == FILE_MODE != 0o600, "not mkstemp's private 0600"


def test_a_run_record_never_holds_a_secret():
    from plugstack.run import redacted

    config = {"app": {"api_key": "sk-123", "max_tokens": 5, "nested": [{"db_password": "p"}]}, "x": {"secret": None}}
    assert redacted(config) == {"app": {"api_key": "***", "max_tokens": 5, "nested": [{"db_password": "***"}]},
                                 "x": {"secret": None}}
