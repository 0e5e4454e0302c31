"""The training directory: checkpoints written atomically, found, verified and pruned.

Light: no torch here. Every check a resumed run needs (is the newest checkpoint whole, was
it trained with the same options) reads JSON and hashes files, before torch is imported::

    <directory>/checkpoints/step-000120/{model,optimizer}.safetensors, state.json
    <directory>/metrics.csv, eval.csv, loss.png, model.safetensors (the final weights)

A checkpoint is written into a temporary sibling (a name :func:`plugstack.files.temp_prefix`
makes, so a later run can tell a killed writer's leftover), fsync'd and renamed: a
``step-*`` directory is whole or absent. ``state.json``, written last, records the size and
sha256 of the tensor files, so a damaged one is caught before anything loads it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from plugstack.errors import PlugstackError, StorageError
from plugstack.files import FILE_MODE, file_digest, remove_stale_temps, temp_prefix

__all__ = ["FORMAT", "TENSOR_FILES", "Checkpoint", "CheckpointError", "TrainDir", "differences"]

log = structlog.get_logger("plugstack.train")

FORMAT = "plugstack.train/1"
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
_STEP = re.compile(r"^step-(\d{6,})$")
#: What a previous training left in the directory (moved aside together by ``app.resume=false``).
OUTPUTS = ("checkpoints", "metrics.csv", "eval.csv", "loss.png", "model.safetensors")


#: Checkpoint directories: what mkdir gives (mkdtemp would make them 0700).
DIR_MODE = FILE_MODE | (FILE_MODE & 0o444) >> 2  # each r bit gains its x


class CheckpointError(PlugstackError):
    """A checkpoint that cannot be resumed: damaged, incomplete, or of another training."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    #: ``state.json``: step, options, trainable facts, optimiser groups, metrics so far.
    state: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flat(f"{prefix}.{key}", item).items()}
    return {prefix: value}


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key is A there, B now`` for each option (dotted, model options included) that differs."""
    old, new = _flat("", json.loads(json.dumps(saved))), _flat("", json.loads(json.dumps(now)))

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    return [f"{key[1:]} is {shown(old, key)} there, {shown(new, key)} now"
            for key in sorted(old.keys() | new.keys()) if key not in old or key not in new or old[key] != new[key]]


class TrainDir:
    """One training's directory. Only the writer (rank 0) changes anything in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"

    # -- finding and verifying ----------------------------------------------------------

    def steps(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every complete-by-name checkpoint, oldest first."""
        try:
            entries = list(os.scandir(self.checkpoints))
        except FileNotFoundError:
            return []
        found = [(int(m[1]), Path(e.path)) for e in entries if (m := _STEP.match(e.name)) and e.is_dir()]
        return sorted(found)

    def newest(self) -> Checkpoint | None:
        """The newest checkpoint, verified whole; :class:`CheckpointError` if it is not."""
        found = self.steps()
        if not found:
            return None
        step, path = found[-1]
        earlier = found[-2][1] if len(found) > 1 else None
        return self._read(step, path, earlier)

    def _fail(self, what: str, path: Path, earlier: Path | None) -> CheckpointError:
        previous = (f"to resume from the checkpoint before it, move {path} out of {self.checkpoints}; "
                    if earlier is not None else "")
        return CheckpointError(
            f"cannot resume from checkpoint {path}: {what}. Nothing was deleted. To go on, {previous}to start over, "
            f"set app.resume=false (the old training is moved aside, not deleted) or choose another app.directory.")

    def _read(self, step: int, path: Path, earlier: Path | None) -> Checkpoint:
        state_file = path / "state.json"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self._fail(f"{state_file} is missing", path, earlier) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._fail(f"{state_file} is not valid JSON ({exc})", path, earlier) from None
        if not (isinstance(state, dict) and state.get("format") == FORMAT and state.get("step") == step
                and all(isinstance(state.get(key), dict) for key in ("files", "options", "optimizer"))):
            raise self._fail(f"{state_file} is not a {FORMAT} checkpoint record for step {step}", path, earlier)
        for name in TENSOR_FILES:
            file, record = path / name, state["files"].get(name) or {}
            if not file.is_file():
                raise self._fail(f"{file} is missing", path, earlier)
            size = file.stat().st_size
            if size != record.get("bytes") or file_digest(file) != record.get("sha256"):
                raise self._fail(f"{file} is damaged ({size} bytes whose sha256 differs from the one recorded "
                                 f"when it was written: {record.get('bytes')} bytes)", path, earlier)
        return Checkpoint(path, step, state)

    def check_resumable(self, ckpt: Checkpoint, options: Mapping[str, Any], steps: int) -> None:
        """Refuse ``ckpt`` when it was trained with other ``options`` or past ``steps``."""
        if ckpt.step > steps:
            raise CheckpointError(
                f"app.directory={self.path} is already trained to step {ckpt.step}, past app.steps={steps}: raise "
                f"app.steps to train on (with app.schedule=constant), or use another app.directory (or "
                f"app.resume=false) to start over.")
        diff = differences(ckpt.state.get("options", {}), options)
        if diff:
            raise CheckpointError(
                f"app.directory={self.path} holds a checkpoint (step {ckpt.step}) of a different training: "
                f"{'; '.join(diff)}. Resuming would mix the two. Use another app.directory for this training, or "
                f"app.resume=false to start over in this one (the old training is moved aside, not deleted).")

    # -- writing (rank 0 only) ------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock for the block: two trainings never write one directory."""
        from filelock import FileLock, Timeout

        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise StorageError(f"another training is running in {self.path} (it holds {lock.lock_file}): wait "
                               f"for it to end, or choose another app.directory.") from None
        try:
            yield
        except BaseException:
            lock.release()
            if created:  # a run refused before writing anything leaves no empty directory behind
                with contextlib.suppress(OSError):
                    Path(lock.lock_file).unlink()
                    self.path.rmdir()
            raise
        else:
            lock.release()

    def clean(self) -> None:
        """Remove what killed writers left (temporary checkpoint directories and files)."""
        remove_stale_temps(self.path)
        remove_stale_temps(self.checkpoints)

    def move_aside(self) -> Path | None:
        """Move a previous training's outputs into ``replaced-<time>/`` (``app.resume=false``)."""
        present = [name for name in OUTPUTS if (self.path / name).exists()]
        if not present:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.path / f"replaced-{stamp}"
        for n in itertools.count(2):  # two restarts within a second
            try:
                dest.mkdir()
                break
            except FileExistsError:
                dest = self.path / f"replaced-{stamp}-{n}"
        for name in present:
            os.replace(self.path / name, dest / name)
        return dest

    def write(self, step: int, fill: Callable[[Path], None], state: Mapping[str, Any]) -> Path:
        """Write checkpoint ``step``: ``fill(tmp)`` writes the tensor files, then ``state.json``
        (with their digests); all fsync'd, then renamed into place."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:06d}"
        tmp = Path(tempfile.mkdtemp(dir=self.checkpoints, prefix=temp_prefix(name)))
        try:
            fill(tmp)
            files = {n: {"bytes": (tmp / n).stat().st_size, "sha256": file_digest(tmp / n)} for n in TENSOR_FILES}
            (tmp / "state.json").write_text(json.dumps({**state, "files": files}, indent=1, default=str),
                                            encoding="utf-8")
            for file in tmp.iterdir():
                _fsync(file)
            os.chmod(tmp, DIR_MODE)  # mkdtemp's 0700 would hide the checkpoint from other users
            _fsync(tmp)
            final = self.checkpoints / name
            if final.exists():  # only after a rerun from scratch: the new one wins
                self._remove(final)
            os.rename(tmp, final)
            _fsync(self.checkpoints)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def prune(self, keep: int) -> None:
        """Remove all but the newest ``keep`` checkpoints."""
        for _, path in self.steps()[:-keep]:
            self._remove(path)

    def _remove(self, path: Path) -> None:
        # Renamed first: a kill midway leaves a temporary name, never half a step-* directory.
        trash = path.with_name(f"{temp_prefix(path.name, 'trash')}{uuid.uuid4().hex[:8]}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("train.checkpoint.removed", path=str(path))
