"""The on-disk cache of built ONNX graphs: one directory per key, built atomically.

Layout: ``<cache_dir>/<key>/`` holds the graph files and ``manifest.json`` (what went
into the key, and every file's size and sha256). An entry is built in a temporary
sibling directory and renamed into place, under a file lock, so a crash leaves no
half-written entry and two processes preparing the same model do the work once.

Any damage leads to one logged rebuild (``onnx.cache.corrupt``), never a crash: a manifest
that is missing, not JSON or of the wrong shape, missing, extra or altered files (found
here), and files that match their manifest but cannot be used (the user of the entry
raises :class:`DamagedEntry`, see :func:`use_entry`). Temporary directories of killed
builds are removed by a later run (:func:`plugstack.files.remove_stale_temps`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from plugstack.errors import ModelLoadError
from plugstack.files import cache_dir, file_digest, lock_is_held, remove_stale_temps, temp_prefix, waiting_lock
from plugstack.progress import phase

log = structlog.get_logger("plugstack.onnx")

T = TypeVar("T")
MANIFEST = "manifest.json"
#: How long a process waits for another one building the same entry before giving up.
LOCK_TIMEOUT_S = 30 * 60
#: How often a process waiting for that says it still waits.
LOCK_REPORT_EVERY_S = 60.0


def default_cache_dir() -> Path:
    """``$PLUGSTACK_HOME/onnx``, else the platform's user cache dir (``~/.cache/plugstack/onnx``)."""
    return cache_dir("onnx")


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 over the JSON of everything the built graph depends on."""
    blob = json.dumps(dict(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class CacheEntry:
    """A valid, complete cache entry."""

    path: Path
    manifest: dict[str, Any]
    #: True when this call built it (cache miss), False on a hit.
    built: bool

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]


class DamagedEntry(Exception):
    """Raised by the user of a cache entry whose files match the manifest but cannot be used
    (ONNX Runtime cannot load the graph): :func:`use_entry` rebuilds the entry once."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason

    def concerns(self, entry: CacheEntry) -> bool:
        return self.path == entry.path or entry.path in self.path.parents


def _plain_name(name: object) -> bool:
    """A file name that stays inside the entry directory."""
    return isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and not any(
        sep in name for sep in ("/", "\\", os.sep, "\0"))


def _manifest_problem(manifest: Any) -> str:
    """What is wrong with the shape of a parsed manifest ("" if nothing)."""
    if not isinstance(manifest, dict):
        return f"manifest is a JSON {type(manifest).__name__}, not an object"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"manifest 'files' is {type(files).__name__}, not a non-empty object"
    for name, meta in files.items():
        if not _plain_name(name):
            return f"manifest names a file outside the entry: {name!r}"
        size = meta.get("size") if isinstance(meta, dict) else None
        if not (isinstance(size, int) and not isinstance(size, bool) and isinstance(meta.get("sha256"), str)):
            return f"manifest record of {name!r} is not {{size: int, sha256: str}}: {meta!r}"
    if not isinstance(manifest.get("model_file"), str) or manifest["model_file"] not in files:
        return f"manifest 'model_file' {manifest.get('model_file')!r} is not one of its files"
    return ""


def _files_problem(entry: Path, files: dict[str, Any]) -> str:
    """Which file of ``entry`` does not match the manifest ("" if all do and none is extra)."""
    extra = sorted(p.name for p in entry.iterdir() if p.name != MANIFEST and p.name not in files)
    if extra:
        return f"unexpected file {extra[0]} (not in the manifest)"
    for name, meta in files.items():
        f = entry / name
        if not f.is_file():
            return f"missing file {name}"
        size = f.stat().st_size
        if size != meta["size"]:
            return f"{name} has {size} bytes, manifest says {meta['size']}"
        if file_digest(f) != meta["sha256"]:
            return f"{name} does not match its sha256"
    return ""


def _check(entry: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``entry`` is complete and intact, else (None, why not)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "missing manifest"
    except (OSError, ValueError) as e:  # not a directory, unreadable, not JSON, not UTF-8
        return None, f"unreadable manifest: {e}"
    why = _manifest_problem(manifest)
    if not why:
        try:
            why = _files_problem(entry, manifest["files"])
        except OSError as e:
            why = f"unreadable file: {e}"
    return (None, why) if why else (manifest, "")


def _remove(path: Path) -> None:
    """Move aside then delete, so a reader never sees a half-deleted entry under its name."""
    if not os.path.lexists(path):
        return
    trash = path.with_name(f"{temp_prefix(path.name, 'trash')}{time.monotonic_ns()}")
    os.replace(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)  # a leftover is removed by a later run
    else:
        trash.unlink()


def _lock(root: Path, key: str) -> Any:
    return waiting_lock(root / f"{key}.lock", doing="building the ONNX graph", path=root / key,
                        timeout_s=LOCK_TIMEOUT_S, every_s=LOCK_REPORT_EVERY_S)


def _build_busy(leftover: Path) -> bool:
    """Is the build that a temporary directory belongs to still running (its key locked)?"""
    key = leftover.name[1:].split(".", 1)[0]
    return lock_is_held(leftover.parent / f"{key}.lock")


def get_or_build(
    root: Path,
    key: str,
    build: Callable[[Path], dict[str, Any]],
    *,
    describe: Mapping[str, Any],
) -> CacheEntry:
    """Return the entry ``key``, building it with ``build(tmp_dir)`` if absent or damaged.

    ``build`` writes its files into ``tmp_dir`` and returns manifest fields (it must set
    ``model_file``); file sizes/digests and ``describe`` are added here.
    """
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root, busy=_build_busy)
    entry = root / key
    manifest, why = _check(entry)
    if manifest is not None:
        log.info("onnx.cache.hit", key=key, path=str(entry))
        return CacheEntry(entry, manifest, built=False)

    with _lock(root, key):
        # Someone else may have built it while we waited for the lock.
        manifest, why = _check(entry)
        if manifest is not None:
            log.info("onnx.cache.hit", key=key, path=str(entry), waited_for_other_process=True)
            return CacheEntry(entry, manifest, built=False)
        if os.path.lexists(entry):
            log.warning("onnx.cache.corrupt", key=key, path=str(entry), reason=why, action="rebuild")
            _remove(entry)
        else:
            log.info("onnx.cache.miss", key=key, path=str(entry))
        with phase("building the ONNX graph (once: it is cached)"):
            manifest = _build_into(root, key, build, describe)
    log.info("onnx.cache.stored", key=key, path=str(entry),
             bytes=sum(m["size"] for m in manifest["files"].values()))
    return CacheEntry(entry, manifest, built=True)


def _build_into(root: Path, key: str, build: Callable[[Path], dict[str, Any]],
                describe: Mapping[str, Any]) -> dict[str, Any]:
    """Build in a temporary sibling (named for this process) and rename it to ``root/key``."""
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(key), dir=root))
    try:
        started = time.perf_counter()
        fields = build(tmp)
        fields["build_seconds"] = round(time.perf_counter() - started, 3)
        files = {
            f.name: {"size": f.stat().st_size, "sha256": file_digest(f)}
            for f in sorted(tmp.iterdir())
            if f.is_file()
        }
        manifest = {**fields, "key": key, "inputs": dict(describe), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def invalidate(entry: CacheEntry) -> None:
    """Remove ``entry`` (found damaged by its user), unless another process already replaced it."""
    with _lock(entry.path.parent, entry.path.name):
        manifest, _ = _check(entry.path)
        if manifest is None or manifest.get("created") == entry.manifest.get("created"):
            _remove(entry.path)


def use_entry(get: Callable[[], CacheEntry], use: Callable[[CacheEntry], T]) -> T:
    """``use(get())``; if ``use`` finds the cached entry damaged (:class:`DamagedEntry`), log it,
    rebuild it once and use the new one. An entry this call built that cannot be used is a
    :class:`ModelLoadError` (no second rebuild)."""
    for attempt in range(2):
        entry = get()
        try:
            return use(entry)
        except DamagedEntry as e:
            if not e.concerns(entry):
                raise
            if entry.built or attempt:
                raise _unusable(entry, e) from e
            log.warning("onnx.cache.corrupt", key=entry.path.name, path=str(entry.path), reason=e.reason,
                        action="rebuild")
            invalidate(entry)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _unusable(entry: CacheEntry, e: DamagedEntry) -> ModelLoadError:
    return ModelLoadError(
        f"the ONNX graph cache entry {entry.path} was just built, and still cannot be used: {e.reason}. "
        f"This is a bug in the graph builder or an onnxruntime that cannot run it: try backend.graph=export "
        f"(the generic torch.onnx export) or backend=cpu, and report it.")
