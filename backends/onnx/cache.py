"""The on-disk cache of built ONNX graphs: one directory per key, built atomically.

Layout: ``<cache_dir>/<key>/`` holds the graph files and ``manifest.json`` (what went
into the key, and every file's size and sha256). An entry is built in a temporary
sibling directory and renamed into place, under a file lock, so a crash leaves no
half-written entry and two processes preparing the same model do the work once. An
entry whose files do not match its manifest (truncated, edited) is rebuilt.
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
from typing import Any

import structlog
from filelock import FileLock

from plugstack.files import cache_dir, file_digest

log = structlog.get_logger("plugstack.onnx")

MANIFEST = "manifest.json"
#: How long a process waits for another one building the same entry before giving up.
LOCK_TIMEOUT_S = 30 * 60


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


def _check(entry: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``entry`` is complete and intact, else (None, why not)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return None, "missing manifest"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable manifest: {e}"
    for name, meta in files.items():
        f = entry / name
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            return None, f"missing file {name}"
        if size != meta["size"]:
            return None, f"{name} has {size} bytes, manifest says {meta['size']}"
        if file_digest(f) != meta["sha256"]:
            return None, f"{name} does not match its sha256"
    return manifest, ""


def _remove(path: Path) -> None:
    """Move aside then delete, so a reader never sees a half-deleted entry under its name."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


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
    entry = root / key
    manifest, why = _check(entry)
    if manifest is not None:
        log.info("onnx.cache.hit", key=key, path=str(entry))
        return CacheEntry(entry, manifest, built=False)

    with FileLock(str(root / f"{key}.lock"), timeout=LOCK_TIMEOUT_S):
        # Someone else may have built it while we waited for the lock.
        manifest, why = _check(entry)
        if manifest is not None:
            log.info("onnx.cache.hit", key=key, path=str(entry), waited_for_other_process=True)
            return CacheEntry(entry, manifest, built=False)
        if entry.exists():
            log.warning("onnx.cache.corrupt", key=key, path=str(entry), reason=why, action="rebuild")
            _remove(entry)
        else:
            log.info("onnx.cache.miss", key=key, path=str(entry))
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            fields = build(tmp)
            files = {
                f.name: {"size": f.stat().st_size, "sha256": file_digest(f)}
                for f in sorted(tmp.iterdir())
                if f.is_file()
            }
            manifest = {**fields, "key": key, "inputs": dict(describe), "files": files,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("onnx.cache.stored", key=key, path=str(entry),
             bytes=sum(m["size"] for m in manifest["files"].values()))
    return CacheEntry(entry, manifest, built=True)
