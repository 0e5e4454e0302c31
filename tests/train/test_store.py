"""The training directory without torch: atomic checkpoints, verification, pruning, and
``app.resume=false`` moving a previous training aside instead of deleting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugstack.plugins.train.store import FORMAT, CheckpointError, TrainDir


def _state(step: int) -> dict:
    return {"format": FORMAT, "step": step, "options": {}, "optimizer": {}}


def _fill(tmp: Path) -> None:
    (tmp / "model.safetensors").write_bytes(b"weights")
    (tmp / "optimizer.safetensors").write_bytes(b"moments")


def test_checkpoints_are_written_whole_found_newest_first_and_pruned(tmp_path):
    tdir = TrainDir(tmp_path)
    for step in (5, 10, 15):
        tdir.write(step, _fill, _state(step))
    assert [s for s, _ in tdir.steps()] == [5, 10, 15]
    assert tdir.newest().step == 15 and tdir.newest().state["files"]["model.safetensors"]["bytes"] == 7
    tdir.prune(2)
    assert [p.name for _, p in tdir.steps()] == ["step-000010", "step-000015"]
    assert sorted(p.name for p in tdir.checkpoints.iterdir()) == ["step-000010", "step-000015"]  # no trash left


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    def fail(tmp: Path) -> None:
        _fill(tmp)
        raise OSError(28, "No space left on device")

    tdir = TrainDir(tmp_path)
    with pytest.raises(OSError):
        tdir.write(5, fail, _state(5))
    assert list(tdir.checkpoints.iterdir()) == [] and tdir.newest() is None


def test_the_newest_checkpoint_names_the_one_before_it_when_damaged(tmp_path):
    tdir = TrainDir(tmp_path)
    for step in (5, 10):
        tdir.write(step, _fill, _state(step))
    (tdir.checkpoints / "step-000010" / "optimizer.safetensors").write_bytes(b"mOments")
    with pytest.raises(CheckpointError, match="is damaged") as err:
        tdir.newest()
    assert f"move {tdir.checkpoints / 'step-000010'} out of" in str(err.value)


def test_resume_false_moves_the_previous_training_aside(tmp_path):
    tdir = TrainDir(tmp_path)
    tdir.write(5, _fill, _state(5))
    (tmp_path / "metrics.csv").write_text("step,loss\n1,2.0\n")
    (tmp_path / "notes.txt").write_text("mine")
    moved = tdir.move_aside()
    assert moved is not None and moved.name.startswith("replaced-")
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "metrics.csv"]
    assert (moved / "checkpoints" / "step-000005" / "state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([moved.name, "notes.txt"])  # the rest stays
    assert tdir.move_aside() is None  # nothing left to move
