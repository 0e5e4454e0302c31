"""Files the way plugstack writes them: one cache root, atomic writes, sha256 digests,
leftovers of killed processes cleaned, lock waits said out loud, storage faults named.

Public for plugin authors, so a third-party plugin caches and writes like the built-ins.
Nothing here imports torch until :func:`module_digest` is called.

Every temporary name made here carries its owner (``.<name>.tmp-<host>-<pid>-<random>``),
so a later run can tell a dead process's leftover from a live one's work in progress
(:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import structlog

from .errors import StorageError

__all__ = [
    "atomic_open",
    "atomic_write",
    "cache_dir",
    "file_digest",
    "home_setting",
    "lock_is_held",
    "module_digest",
    "remove_stale_temps",
    "storage_errors",
    "temp_prefix",
    "waiting_lock",
]

log = structlog.get_logger("plugstack.files")

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import (umask can only be read by setting it)
#: The mode of files plugstack writes: what ``open()`` would give (0666 less the umask).
FILE_MODE = 0o666 & ~_UMASK
#: Read size for hashing large files.
_CHUNK = 1 << 22
#: A leftover whose owner cannot be checked (another host, a reused pid, an old name) is
#: removed only when untouched this long and not locked: no build or fetch lasts a week.
STALE_AGE_S = 7 * 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNED = re.compile(r"^\..+\.(?:tmp|trash)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")
#: Temporary names of versions that did not record their owner (mkstemp's 8 random chars).
_LEGACY = re.compile(r"^(?:\..+\.tmp-[a-z0-9_]{8}|plugstack-fetch-[a-z0-9_]{8}|\..+\.[a-z0-9_]{8}\.tmp)$")


def cache_dir(*parts: str) -> Path:
    """``$PLUGSTACK_HOME/<parts>``, else the platform's user cache dir (``~/.cache/plugstack/<parts>``)."""
    home = os.environ.get("PLUGSTACK_HOME")
    if home:
        return Path(home).expanduser().joinpath(*parts)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("plugstack")).joinpath(*parts)


def home_setting() -> str:
    """What to change to move :func:`cache_dir`, for error messages: ``PLUGSTACK_HOME (now ...)``."""
    home = os.environ.get("PLUGSTACK_HOME")
    if home:
        return f"PLUGSTACK_HOME (now {home})"
    return f"PLUGSTACK_HOME (unset, so the default {cache_dir()} is used)"


def temp_prefix(name: str, kind: str = "tmp") -> str:
    """``.<name>.<kind>-<host>-<pid>-``: a temporary name that says whose it is."""
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing and move it into place when the block
    ends without an error: readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make results private to their writer
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    text = isinstance(data, str)
    with atomic_open(path, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
        f.write(data)


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def module_digest(module: Any, extra: str = "") -> str:
    """SHA-256 over a torch module's tensors (names, shapes, dtypes, bytes) and ``extra``."""
    import torch

    h = hashlib.sha256(extra.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- leftovers of killed processes ------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running on this host? (True when it cannot be told.)"""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _age_s(path: Path) -> float:
    """Seconds since anything in ``path`` (itself, or a file directly in it) was written."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            newest = max([newest, *(e.stat(follow_symlinks=False).st_mtime for e in os.scandir(path))])
    return time.time() - newest


def _stale_reason(path: Path, max_age_s: float, busy: Callable[[Path], bool] | None) -> str:
    """Why ``path`` is a dead process's leftover, or "" when it is not provably one."""
    owned = _OWNED.match(path.name)
    if owned is None and _LEGACY.match(path.name) is None:
        return ""  # not a temporary name of ours
    if owned is not None and owned["host"] == _HOST:
        pid = int(owned["pid"])
        if pid == os.getpid():
            return ""
        if not pid_alive(pid):
            return f"its process {pid} is gone"
    age = _age_s(path)
    if age > max_age_s and not (busy is not None and busy(path)):
        return f"untouched for {age / 86400:.1f} days and not locked"
    return ""


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def remove_stale_temps(directory: str | os.PathLike[str], *, busy: Callable[[Path], bool] | None = None,
                       max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the temporary files and directories in ``directory`` that a killed process left.

    Only names made by :func:`temp_prefix` (or older plugstack temp names) are considered, and
    only provable leftovers are removed: the owner's pid (on this host) is gone, or, where
    the owner cannot be checked, it is older than ``max_age_s`` and ``busy(path)`` is false.
    Never raises: a leftover that cannot be removed is logged and kept.
    """
    removed: list[Path] = []
    try:
        candidates = [Path(e.path) for e in os.scandir(directory)]
    except OSError:
        return removed
    for path in candidates:
        try:
            why = _stale_reason(path, max_age_s, busy)
            if not why:
                continue
            size = _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # its owner (or another cleaner) removed it meanwhile
        except OSError as e:
            log.warning("files.leftover.remove_failed", path=str(path), error=str(e))
            continue
        log.info("files.leftover.removed", path=str(path), reason=why, bytes=size)
        removed.append(path)
    return removed


# -- storage faults -----------------------------------------------------------------------

#: OS errors that mean "this directory cannot be written", with what to do about each.
_STORAGE_FIX = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
    errno.EROFS: "use a directory on a writable file system",
    errno.ENOTDIR: "remove the file that stands where a directory should be",
    errno.EEXIST: "remove the file that stands where a directory should be",
}
#: The OS errors that are about where plugstack writes (permissions, space), not bugs.
STORAGE_ERRNOS = frozenset(_STORAGE_FIX)
#: Errors that concern the disk, whatever file they name (a write() names none).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _related(filename: Any, root: Path) -> bool:
    """Does the file an OSError names lie in ``root``, or above it (a parent it needed)?"""
    if not isinstance(filename, (str, os.PathLike)):
        return False
    f, r = Path(os.path.abspath(filename)), Path(os.path.abspath(root))
    return f.is_relative_to(r) or r.is_relative_to(f)


def _in_the_way(path: Any) -> str:
    """`` (<p> is a file)`` for the nearest existing ancestor of ``path`` that is no directory."""
    for p in [Path(path), *Path(path).parents]:
        if os.path.lexists(p):
            return "" if p.is_dir() else f" ({p} is a file, not a directory)"
    return ""


def storage_error(exc: BaseException, root: Path, *, what: str, setting: str) -> StorageError | None:
    """A :class:`StorageError` if ``exc`` (or what caused it) is an OS fault writing under ``root``."""
    for e in _causes(exc):
        if not (isinstance(e, OSError) and e.errno in _STORAGE_FIX):
            continue
        if e.errno in _DISK_FULL or _related(e.filename, root):
            path = e.filename if _related(e.filename, root) else root
            return StorageError(
                f"cannot write {what} at {path}: {os.strerror(e.errno)}{_in_the_way(path)}. Set {setting} to a "
                f"writable directory with free space, or {_STORAGE_FIX[e.errno]}.")
    return None


@contextlib.contextmanager
def storage_errors(root: str | os.PathLike[str], *, what: str, setting: str) -> Iterator[None]:
    """Turn an OS fault writing under ``root`` (unwritable, a file in the way, disk full), raised
    in the block directly or as the cause of another error, into one :class:`StorageError`
    that names the path, the reason and ``setting`` (the variable or option to change)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        err = storage_error(e, Path(root), what=what, setting=setting)
        if err is None:
            raise
        raise err from e


# -- locks that say why they wait ---------------------------------------------------------


def _owner_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner")


def _read_owner(lock_path: Path) -> str:
    try:
        o = json.loads(_owner_file(lock_path).read_text())
        return f"pid {int(o['pid'])} on {o['host']}, since {o['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown process"


def lock_is_held(lock_path: str | os.PathLike[str]) -> bool:
    """Does some process hold the file lock ``lock_path`` right now? (True when it cannot be told.)"""
    from filelock import FileLock, Timeout

    if not Path(lock_path).exists():
        return False
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return True
    lock.release()
    return False


def _wait(lock: Any, lock_path: Path, doing: str, path: Path, timeout_s: float, every_s: float) -> None:
    """Acquire ``lock``, held by another process: say so now, then every ``every_s``."""
    from filelock import Timeout

    start = time.monotonic()
    holder = _read_owner(lock_path)
    log.warning("files.lock.waiting", message=f"waiting for another plugstack process {doing} at {path}; "
                f"lock file {lock_path}", holder=holder, timeout_s=timeout_s,
                hint="the lock is released when that process exits; if it is stuck, end it "
                     "(deleting the lock file does not release it)")
    while True:
        left = timeout_s - (time.monotonic() - start)
        if left <= 0:
            raise StorageError(
                f"gave up after {timeout_s / 60:.0f} min waiting for another plugstack process {doing} at "
                f"{path} (lock file {lock_path}, held by {_read_owner(lock_path)}). If that process is stuck, "
                f"end it (its lock is released when it exits) and run again.")
        try:
            lock.acquire(timeout=min(every_s, left))
            break
        except Timeout:
            log.warning("files.lock.still_waiting", doing=doing, path=str(path), lock=str(lock_path),
                        holder=_read_owner(lock_path), waited_s=round(time.monotonic() - start))
    log.info("files.lock.acquired", doing=doing, lock=str(lock_path), waited_s=round(time.monotonic() - start, 1))


@contextlib.contextmanager
def waiting_lock(lock_path: str | os.PathLike[str], *, doing: str, path: str | os.PathLike[str],
                 timeout_s: float, every_s: float = 60.0) -> Iterator[None]:
    """Hold the file lock ``lock_path`` for the block. While another process holds it, log a
    warning at once (``doing`` what, at ``path``, who holds it) and again every ``every_s``;
    after ``timeout_s`` raise :class:`StorageError`."""
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _wait(lock, lock_path, doing, Path(path), timeout_s, every_s)
    try:
        with contextlib.suppress(OSError):  # who holds it is a nicety for the waiters' log
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            atomic_write(_owner_file(lock_path), json.dumps({"pid": os.getpid(), "host": _HOST, "since": since}))
        yield
    finally:
        with contextlib.suppress(OSError):
            _owner_file(lock_path).unlink()
        lock.release()
