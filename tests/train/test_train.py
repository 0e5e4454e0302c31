"""app=train through the real CLI: what a run writes, resuming after SIGKILL, and refusing
checkpoints that are damaged or of another training (nothing deleted).

Trainings run as fresh `plugstack` processes; refusals, which happen before torch is
imported, run the same CLI code in this process (``plugstack_cli``) to save seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from badinput import BIN, check
from train_cli import TINY, rows, snapshot, steps_of, train, with_options

from plugstack.files import temp_prefix


def test_a_run_writes_metrics_curve_checkpoints_and_final_weights(reference):
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file

    train_rows = rows(reference / "metrics.csv")
    assert [int(r["step"]) for r in train_rows] == list(range(1, 41))  # every step, once
    assert {"loss", "lr", "grad_norm", "step_s"} <= set(train_rows[0])
    losses = [float(r["loss"]) for r in train_rows]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses  # it learns
    assert float(train_rows[0]["lr"]) == pytest.approx(0.02 / 4) and float(train_rows[3]["lr"]) == 0.02  # warmup
    assert float(train_rows[-1]["lr"]) < 0.001  # cosine decay
    assert steps_of(reference / "eval.csv") == [20, 40]
    with Image.open(reference / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] >= 400
    checkpoints = reference / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000030", "step-000040"]  # keep_checkpoints=2
    for ckpt in checkpoints.iterdir():
        assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((checkpoints / "step-000040" / "state.json").read_text())
    assert state["step"] == 40 and state["config"]["app"]["lr"] == 0.02 and state["config"]["model"]["name"] == "tiny"
    assert state["trainable"] == {"kind": "tiny mlp", "train_items": 512}
    assert state["optimizer"]["class"] == "AdamW" and state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert len(state["metrics"]["train"]) == 40
    optimizer = load_file(checkpoints / "step-000040" / "optimizer.safetensors")
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(optimizer)
    final = load_file(reference / "model.safetensors")
    last = load_file(checkpoints / "step-000040" / "model.safetensors")
    assert sorted(final) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert all(final[k].equal(last[k]) for k in final)
    with safe_open(reference / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["plugstack.config"])["app"]["name"] == "train" and meta["plugstack.step"] == "40"
    assert str(reference / "model.safetensors") in (reference / "stdout.txt").read_text()


def _kill_after_checkpoint(argv: list[str], env: dict[str, str], directory: Path, log: Path) -> int:
    """Start the run slowed down, SIGKILL it once it has gone past its first checkpoint."""
    with open(log, "w") as err:
        proc = subprocess.Popen([str(BIN), *argv], env={**os.environ, **env, "TRAINPLUG_STEP_SLEEP": "0.03"},
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        metrics = directory / "metrics.csv"
        while not ((directory / "checkpoints" / "step-000010").is_dir() and metrics.exists()
                   and len(metrics.read_text().splitlines()) > 13):  # header + steps 1-10 + some past it
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed: " \
                                        f"{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path, train_env, reference):
    import torch
    from safetensors.torch import load_file

    directory = tmp_path / "train"
    argv = [*TINY, f"app.directory={directory}"]
    pid = _kill_after_checkpoint(argv, train_env, directory, tmp_path / "killed.log")
    newest = max(int(p.name.split("-")[1]) for p in (directory / "checkpoints").glob("step-*"))
    assert len(steps_of(directory / "metrics.csv")) > newest  # rows past the checkpoint: to be trained again
    # A kill while a checkpoint was being written leaves its temporary directory:
    leftover = directory / "checkpoints" / (temp_prefix("step-000050").replace(f"-{os.getpid()}-", f"-{pid}-") + "x")
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")

    result = train(argv, train_env)
    check(result, 0, [f"resuming from step {newest} "])
    assert not leftover.exists()
    assert steps_of(directory / "metrics.csv") == list(range(1, 41))  # each step exactly once
    assert steps_of(directory / "eval.csv") == [20, 40]
    resumed = [float(r["loss"]) for r in rows(directory / "metrics.csv")]
    uninterrupted = [float(r["loss"]) for r in rows(reference / "metrics.csv")]
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-9)
    mine, theirs = load_file(directory / "model.safetensors"), load_file(reference / "model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # the determinism contract: bit for bit


def test_an_interrupted_run_keeps_the_steps_it_finished(tmp_path, plugstack_cli, monkeypatch):
    monkeypatch.setenv("TRAINPLUG_INTERRUPT_AT", "7")  # Ctrl-C during step 7, before the first checkpoint
    directory = tmp_path / "train"
    result = plugstack_cli([*TINY, "backend.threads=1", f"app.directory={directory}"])
    check(result, 130, ["checkpoint at step 6 written"])
    assert steps_of(directory / "metrics.csv") == list(range(1, 7))
    assert [p.name for p in (directory / "checkpoints").iterdir()] == ["step-000006"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])  # same size, other tensor bytes
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated-weights": ("model.safetensors", _truncate, "is damaged"),
    "garbled-optimizer-state": ("optimizer.safetensors", _garble, "is damaged"),
    "state-not-json": ("state.json", lambda p: p.write_text('{"step": 40, "files": '), "is not valid JSON"),
    "weights-missing": ("model.safetensors", Path.unlink, "is missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_and_kept(case, tmp_path, plugstack_cli, reference):
    name, damage, says = DAMAGE[case]
    directory = tmp_path / "train"
    shutil.copytree(reference, directory)
    newest = directory / "checkpoints" / "step-000040"
    damage(newest / name)
    before = snapshot(directory)
    result = plugstack_cli([*TINY, f"app.directory={directory}"])
    check(result, 2, [f"{newest / name} {says}", "Nothing was deleted", f"move {newest} out of", "app.resume=false"])
    assert snapshot(directory) == before


MISMATCH = {
    "lr-and-model-option": ({"app__lr": 0.03, "model__width": 32},
                            "app.lr is 0.02 there, 0.03 now; model.width is 16 there, 32 now"),
    "fewer-steps": ({"app__steps": 30}, "already trained to step 40, past app.steps=30"),
    # a cosine schedule is planned over app.steps: more steps would jump the learning rate back up
    "more-steps-on-a-decaying-schedule": ({"app__steps": 60}, "app.schedule_steps is 40 there, 60 now"),
}


@pytest.mark.parametrize("case", list(MISMATCH))
def test_a_checkpoint_of_another_training_is_refused(case, tmp_path, plugstack_cli, reference):
    changes, says = MISMATCH[case]
    directory = tmp_path / "train"
    shutil.copytree(reference, directory)
    before = snapshot(directory)
    result = plugstack_cli(with_options([*TINY, f"app.directory={directory}"], **changes))
    check(result, 2, [says, "another app.directory", "app.resume=false"])
    assert snapshot(directory) == before
