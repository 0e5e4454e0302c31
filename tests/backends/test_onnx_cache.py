"""The ONNX graph cache under damage and faults: any damaged entry is rebuilt (logged, once),
killed builds' leftovers are removed, lock waits are logged, storage faults are clear.

Entries come from the tiny Llama's fused graph (built in about a second), so every damage
row rebuilds for real and checks the rebuilt runner's logits against a pristine one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from badinput import deny_writes_under
from filelock import FileLock
from structlog.testing import capture_logs

from plugstack.backends.onnx import cache as onnx_cache
from plugstack.backends.onnx.backend import OnnxBackend
from plugstack.backends.onnx.cache import MANIFEST, _check
from plugstack.backends.onnx.config import OnnxBackendConfig
from plugstack.errors import ModelLoadError, StorageError
from plugstack.files import _HOST, file_digest
from plugstack.testing import tiny_decoder_model

FEED = {"input_ids": torch.tensor([[3, 4, 5]]), "position_ids": torch.arange(3)[None]}


def cfg(root: Path, **kw) -> OnnxBackendConfig:
    return OnnxBackendConfig(**{"cache_dir": str(root), "threads": 1, "graph": "fused", "kv_cache": "concat", **kw})


def logits(runner) -> torch.Tensor:
    return runner.run(FEED).outputs["logits"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_decoder_model(seed=0)


@pytest.fixture(scope="module")
def pristine(tiny, tmp_path_factory):
    """(a healthy entry of the tiny model's fused graph, its logits on FEED)."""
    runner = OnnxBackend(cfg(tmp_path_factory.mktemp("pristine"))).prepare(tiny)
    yield runner.cache_entry.path, logits(runner)
    runner.close()


def copy_entry(pristine, root: Path) -> Path:
    entry = root / pristine[0].name
    shutil.copytree(pristine[0], entry)
    return entry


# -- damage --------------------------------------------------------------------------------


def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Damage: rewrite the manifest after ``change(manifest)`` (which edits it in place)."""
    def damage(entry: Path) -> None:
        manifest = json.loads((entry / MANIFEST).read_text())
        change(manifest)
        (entry / MANIFEST).write_text(json.dumps(manifest))
    return damage


def write_manifest(text: str | bytes) -> Callable[[Path], None]:
    def damage(entry: Path) -> None:
        (entry / MANIFEST).write_bytes(text if isinstance(text, bytes) else text.encode())
    return damage


def matching_manifest(entry: Path) -> None:
    """Make the manifest list exactly the entry's files, with their true sizes and digests."""
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"] = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
                         for p in sorted(entry.iterdir()) if p.name != MANIFEST}
    (entry / MANIFEST).write_text(json.dumps(manifest))


def garbage_model(entry: Path) -> None:
    (entry / "model.onnx").write_bytes(b"not a protobuf " * 64)
    matching_manifest(entry)


def truncated_model_matching(entry: Path) -> None:
    model = entry / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    matching_manifest(entry)


def truncated_model(entry: Path) -> None:
    with open(entry / "model.onnx", "r+b") as f:
        f.truncate(1000)


def flipped_byte(entry: Path) -> None:
    with open(entry / "model.onnx", "r+b") as f:
        f.seek(500)
        b = f.read(1)
        f.seek(500)
        f.write(bytes([b[0] ^ 0xFF]))


def external_data(entry: Path, *, keep_listed: bool) -> None:
    """Re-save the graph with its weights in model.onnx.data, then lose that file."""
    import onnx

    proto = onnx.load(str(entry / "model.onnx"))
    onnx.save(proto, str(entry / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    matching_manifest(entry)
    (entry / "model.onnx.data").unlink()
    if not keep_listed:
        matching_manifest(entry)  # the manifest agrees: only loading the graph can tell


def entry_is_a_file(entry: Path) -> None:
    shutil.rmtree(entry)
    entry.write_text("{}")


def set_file(name: str, record: object) -> Callable[[Path], None]:
    return edit_manifest(lambda m: m["files"].__setitem__(name, record))


def remove(name: str) -> Callable[[Path], None]:
    return lambda entry: (entry / name).unlink()


# (id, damage(entry), what the onnx.cache.corrupt reason says)
DAMAGE = [
    ("manifest-missing", remove(MANIFEST), "missing manifest"),
    ("manifest-not-json", write_manifest("{not json"), "unreadable manifest"),
    ("manifest-not-utf8", write_manifest(b"\xff\xfe\x00"), "unreadable manifest"),
    ("manifest-empty", write_manifest(""), "unreadable manifest"),
    ("manifest-a-list", write_manifest("[]"), "manifest is a JSON list"),
    ("files-a-list", write_manifest('{"files": []}'), "manifest 'files' is list"),
    ("files-empty", edit_manifest(lambda m: m.__setitem__("files", {})), "manifest 'files' is dict, not a non-empty"),
    ("file-record-not-object", set_file("model.onnx", "abc"), "is not {size: int, sha256: str}"),
    ("size-a-string", edit_manifest(lambda m: m["files"]["model.onnx"].__setitem__("size", "12")), "size: int"),
    ("size-a-bool", edit_manifest(lambda m: m["files"]["model.onnx"].__setitem__("size", True)), "size: int"),
    ("sha256-a-number", edit_manifest(lambda m: m["files"]["model.onnx"].__setitem__("sha256", 7)), "sha256: str"),
    ("name-escapes-entry", set_file("../model.onnx", {"size": 1, "sha256": "x"}), "outside the entry"),
    ("model-file-missing-key", edit_manifest(lambda m: m.pop("model_file")), "'model_file' None"),
    ("model-file-not-listed", edit_manifest(lambda m: m.__setitem__("model_file", "other.onnx")), "'model_file'"),
    ("model-file-a-number", edit_manifest(lambda m: m.__setitem__("model_file", 3)), "'model_file' 3"),
    ("graph-features-a-list", edit_manifest(lambda m: m.__setitem__("graph_features", [1])), "graph_features"),
    ("graph-features-unknown-key", edit_manifest(lambda m: m["graph_features"].__setitem__("warp", 9)),
     "graph_features"),
    ("graph-features-bad-value", edit_manifest(lambda m: m["graph_features"].__setitem__("state_layout", "zig")),
     "graph_features"),
    ("model-missing", remove("model.onnx"), "missing file model.onnx"),
    ("model-truncated", truncated_model, "model.onnx has 1000 bytes"),
    ("model-flipped-byte", flipped_byte, "does not match its sha256"),
    ("extra-file", lambda e: (e / "stray.bin").write_bytes(b"1"), "unexpected file stray.bin"),
    ("entry-is-a-file", entry_is_a_file, "unreadable manifest"),
    ("garbage-model-matching-manifest", garbage_model, "ONNX Runtime cannot load model.onnx: InvalidProtobuf"),
    ("truncated-model-matching-manifest", truncated_model_matching, "ONNX Runtime cannot load model.onnx"),
    ("external-data-missing-listed", lambda e: external_data(e, keep_listed=True), "missing file model.onnx.data"),
    ("external-data-missing-unlisted", lambda e: external_data(e, keep_listed=False),
     "ONNX Runtime cannot load model.onnx"),
]


@pytest.mark.parametrize("damage, says", [r[1:] for r in DAMAGE], ids=[r[0] for r in DAMAGE])
def test_any_damage_to_an_entry_is_logged_and_rebuilt(tiny, pristine, tmp_path, damage, says):
    root = tmp_path / "cache"
    entry = copy_entry(pristine, root)
    damage(entry)
    with capture_logs() as logs:
        runner = OnnxBackend(cfg(root)).prepare(tiny)
    assert runner.cache_entry.built and runner.cache_entry.path == entry
    corrupt = [e for e in logs if e["event"] == "onnx.cache.corrupt"]
    assert len(corrupt) == 1, corrupt
    assert says in corrupt[0]["reason"] and corrupt[0]["action"] == "rebuild", corrupt[0]
    assert torch.equal(logits(runner), pristine[1])
    assert _check(entry)[0] is not None
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [entry.name]
    runner.close()


def test_a_healthy_entry_is_a_silent_hit(tiny, pristine, tmp_path):
    entry = copy_entry(pristine, tmp_path / "cache")
    with capture_logs() as logs:
        runner = OnnxBackend(cfg(tmp_path / "cache")).prepare(tiny)
    assert not runner.cache_entry.built and runner.cache_entry.path == entry
    assert [e["event"] for e in logs if e["event"].startswith("onnx.cache")] == ["onnx.cache.hit"]
    assert not [e for e in logs if e["log_level"] == "warning"]


class GarbageExport:
    """Stands in for the exporter: writes a graph ONNX Runtime cannot load."""

    calls = 0

    def __call__(self, model, path, **kw) -> float:
        self.calls += 1
        Path(path).write_bytes(b"garbage " * 100)
        return 0.0


def test_an_entry_that_still_fails_after_its_rebuild_is_a_clear_error_not_a_loop(tiny, tmp_path, monkeypatch):
    export = GarbageExport()
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", export)
    options = cfg(tmp_path, graph="export", verify=False)
    with pytest.raises(ModelLoadError, match="was just built, and still cannot be used: ONNX Runtime cannot load"):
        OnnxBackend(options).prepare(tiny)  # a miss: built, unusable, no rebuild
    assert export.calls == 1
    with capture_logs() as logs, pytest.raises(ModelLoadError, match=r"try backend.graph=export .* or backend=cpu"):
        OnnxBackend(options).prepare(tiny)  # a hit: damaged, rebuilt once, still unusable
    assert export.calls == 2
    assert [e["event"] for e in logs if e["event"] == "onnx.cache.corrupt"] == ["onnx.cache.corrupt"]


def test_a_fresh_graph_that_cannot_load_fails_its_verification_clearly(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("plugstack.backends.onnx.export.export_step", GarbageExport())
    with pytest.raises(ModelLoadError, match="the ONNX graph just built for model 'tiny-llama-seed0' cannot be "
                                             "loaded by ONNX Runtime \\(InvalidProtobuf"):
        OnnxBackend(cfg(tmp_path, graph="export")).prepare(tiny)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_damaged_base_of_a_quantized_graph_is_rebuilt(tiny, pristine, tmp_path):
    root = tmp_path / "cache"
    base = copy_entry(pristine, root)
    garbage_model(base)
    with capture_logs() as logs:
        runner = OnnxBackend(cfg(root, quantize="int8")).prepare(tiny)
    assert runner.cache_entry.built and runner.dtype == "int8"
    corrupt = [e for e in logs if e["event"] == "onnx.cache.corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["path"] == str(base) and "to quantise it" in corrupt[0]["reason"]
    assert _check(base)[0] is not None and torch.isfinite(logits(runner)).all()


# -- leftovers and locks ----------------------------------------------------------------------


def test_a_killed_builds_temp_dir_is_removed_and_a_live_ones_kept(tiny, pristine, tmp_path, dead_pid):
    root = tmp_path / "cache"
    copy_entry(pristine, root)
    dead = root / f".{pristine[0].name}.tmp-{_HOST}-{dead_pid}-abcd1234"
    live = root / f".{pristine[0].name}.tmp-{_HOST}-{os.getpid()}-abcd1234"
    for d in (dead, live):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x" * 4096)
    with capture_logs() as logs:
        OnnxBackend(cfg(root)).prepare(tiny).close()
    assert not dead.exists() and live.exists()
    removed = [e for e in logs if e["event"] == "files.leftover.removed"]
    assert [e["path"] for e in removed] == [str(dead)] and f"process {dead_pid} is gone" in removed[0]["reason"]


@pytest.fixture
def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_waiting_for_another_process_building_the_entry_is_logged(tiny, pristine, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_cache, "LOCK_REPORT_EVERY_S", 0.3)
    root = tmp_path / "cache"
    root.mkdir()
    lock = root / f"{pristine[0].name}.lock"
    held = threading.Event()

    def other_process() -> None:  # holds the lock ~1 s, then leaves the entry built
        with FileLock(str(lock)):
            held.set()
            time.sleep(1.0)
            copy_entry(pristine, root)

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(5)
    with capture_logs() as logs:
        runner = OnnxBackend(cfg(root)).prepare(tiny)
    thread.join()
    assert not runner.cache_entry.built  # the other one built it: no second build
    waiting = [e for e in logs if e["event"] == "files.lock.waiting"]
    assert waiting and waiting[0]["log_level"] == "warning"
    assert waiting[0]["message"] == (f"waiting for another plugstack process building the ONNX graph at "
                                     f"{root / pristine[0].name}; lock file {lock}")
    assert any(e["event"] == "files.lock.still_waiting" for e in logs)
    assert any(e["event"] == "onnx.cache.hit" and e.get("waited_for_other_process") for e in logs)


# -- storage faults -------------------------------------------------------------------------


def test_plugstack_home_that_is_a_file_is_a_clear_error(tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("PLUGSTACK_HOME", str(home))
    with pytest.raises(StorageError, match=rf"cannot write the ONNX graph cache at {home}/onnx: Not a directory "
                                           rf"\({home} is a file.*Set PLUGSTACK_HOME \(now {home}\)"):
        OnnxBackend(cfg(tmp_path, cache_dir=None)).prepare(tiny)


def test_an_unwritable_cache_dir_is_a_clear_error(tiny, tmp_path, monkeypatch):
    tmp_path.joinpath("ro").mkdir()
    deny_writes_under(monkeypatch, tmp_path / "ro")
    with pytest.raises(StorageError, match=r"Permission denied.*Set backend.cache_dir"):
        OnnxBackend(cfg(tmp_path / "ro" / "cache")).prepare(tiny)



class FullDiskProgram:
    """What torch.onnx.export returns, on a disk that fills up while the graph is saved."""

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"half a graph")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_build_is_a_clear_error_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **kw: FullDiskProgram())
    root = tmp_path / "cache"
    with pytest.raises(StorageError, match=rf"cannot write the ONNX graph cache at {root}: No space left on device. "
                                           rf"Set backend.cache_dir \(now {root}\) .* or free space on that disk"):
        OnnxBackend(cfg(root, graph="export")).prepare(tiny)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


KILLED_BUILD = """
import sys, time
from pathlib import Path
from plugstack.backends.onnx.cache import get_or_build

def build(tmp):
    (tmp / "model.onnx").write_bytes(b"x" * 65536)
    print("building", flush=True)
    time.sleep(600)

get_or_build(Path(sys.argv[1]), "k" * 32, build, describe={})
"""


def test_a_build_killed_with_sigkill_leaves_a_temp_dir_that_the_next_run_removes(tmp_path):
    import signal
    import subprocess
    import sys

    from plugstack.backends.onnx.cache import get_or_build

    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    while proc.stdout.readline().strip() != "building":  # structlog's default output comes first
        assert proc.poll() is None
    (leftover,) = tmp_path.glob(".kkkk*.tmp-*")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert leftover.exists()  # what SIGKILL leaves behind
    def build(tmp: Path) -> dict:
        (tmp / "m.onnx").write_bytes(b"1")
        return {"model_file": "m.onnx"}

    with capture_logs() as logs:
        entry = get_or_build(tmp_path, "k" * 32, build, describe={})
    assert not leftover.exists() and entry.built  # and its lock did not outlive it
    assert any(e["event"] == "files.leftover.removed" and e["path"] == str(leftover) for e in logs)
