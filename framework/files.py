"""Files the way plugstack writes them: one cache root, atomic writes, sha256 digests.

Public for plugin authors, so a third-party plugin caches and writes like the built-ins.
Nothing here imports torch until :func:`module_digest` is called.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write", "cache_dir", "file_digest", "module_digest"]

#: Read size for hashing large files.
_CHUNK = 1 << 22


def cache_dir(*parts: str) -> Path:
    """``$PLUGSTACK_HOME/<parts>``, else the platform's user cache dir (``~/.cache/plugstack/<parts>``)."""
    home = os.environ.get("PLUGSTACK_HOME")
    if home:
        return Path(home).expanduser().joinpath(*parts)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("plugstack")).joinpath(*parts)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing and move it into place when the block
    ends without an error: readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
