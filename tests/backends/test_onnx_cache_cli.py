"""The damaged-cache and storage rows of the bad-input matrix, through the real command line:
a damaged entry is rebuilt and the run succeeds, saying why; a killed build's leftover is
removed; an unusable PLUGSTACK_HOME is one clear error line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from badinput import check, run

from plugstack.files import _HOST, file_digest


def argv(model_dir: Path) -> list[str]:
    return ["app=describe", "backend=onnx", "model=llama", f"model.path={model_dir}", "log.level=INFO"]


def env(tmp_path: Path, home: Path) -> dict[str, str]:
    return {"PLUGSTACK_OUTPUTS": str(tmp_path / "out"), "PLUGSTACK_HOME": str(home), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def seeded_home(tiny_model_dir, tmp_path_factory) -> Path:
    """A PLUGSTACK_HOME whose onnx cache holds the tiny model's graph (built by one real run)."""
    base = tmp_path_factory.mktemp("seed")
    check(run(argv(tiny_model_dir), env=env(base, base / "home")), 0)
    return base / "home"


def entry_of(home: Path) -> Path:
    (entry,) = [p for p in (home / "onnx").iterdir() if not p.name.startswith(".") and p.is_dir()]
    return entry


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def files_manifest(home: Path) -> None:
    (entry_of(home) / "manifest.json").write_text('{"files": []}')


def garbage_model(home: Path) -> None:
    entry = entry_of(home)
    model = entry / "model.onnx"
    model.write_bytes(b"not a protobuf " * 64)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = {"size": model.stat().st_size, "sha256": file_digest(model)}
    (entry / "manifest.json").write_text(json.dumps(manifest))


def leftovers(home: Path) -> None:
    """A killed build's temp dir (its pid is gone) and a live one's (this test's pid)."""
    name = entry_of(home).name
    for pid in (dead_pid(), os.getpid()):
        d = home / "onnx" / f".{name}.tmp-{_HOST}-{pid}-zz"
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x" * 1024)


def home_is_a_file(home: Path) -> None:
    shutil.rmtree(home)
    home.write_text("")


def temp_dirs(home: Path) -> list[str]:
    return sorted(p.name.split("-")[-2] for p in (home / "onnx").glob(".*.tmp-*"))


# (id, damage(home), exit code, phrases on stderr, check(home) afterwards)
ROWS: list[tuple[str, Callable[[Path], None], int, list[str], Callable[[Path], object]]] = [
    ("damaged-manifest", files_manifest, 0,
     ["onnx.cache.corrupt", "is list, not a non-empty object", "action=rebuild", "onnx.cache.stored"],
     lambda home: json.loads((entry_of(home) / "manifest.json").read_text())["files"]),
    ("garbage-model", garbage_model, 0,
     ["onnx.cache.corrupt", "ONNX Runtime cannot load model.onnx: InvalidProtobuf", "onnx.cache.stored"],
     lambda home: (entry_of(home) / "model.onnx").stat().st_size > 10_000),
    ("stale-temp-dir", leftovers, 0, ["files.leftover.removed", "is gone", "onnx.cache.hit"],
     lambda home: temp_dirs(home) == [str(os.getpid())]),
    ("home-is-a-file", home_is_a_file, 2,
     ["cannot write the ONNX graph cache at", "Not a directory", "is a file, not a directory", "Set PLUGSTACK_HOME"],
     lambda home: home.is_file() and home.read_text() == ""),
]


@pytest.mark.parametrize("damage, code, says, after", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_cache_and_storage_faults_through_the_command_line(tiny_model_dir, seeded_home, tmp_path, damage, code,
                                                           says, after):
    home = tmp_path / "home"
    shutil.copytree(seeded_home, home)
    damage(home)
    result = run(argv(tiny_model_dir), env=env(tmp_path, home))
    check(result, code, says)
    if code == 0:
        assert json.loads(result.stdout)["logits_finite"] is True
    assert after(home)
