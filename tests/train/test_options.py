"""Bad options and impossible runs of app=train: one row each, exit 2 with one clear line, no
traceback, nothing allocated or left behind; then the option checks one by one (in-process:
each of them refuses the run the same way, as the fresh-process row shows for one)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from badinput import check
from train_cli import train

from plugstack.errors import ConfigError, UnsupportedOptionError
from plugstack.plugins.train.app import resolve_precision
from plugstack.plugins.train.config import TrainAppConfig
from plugstack.plugins.train.config import check as check_options
from plugstack.plugins.train.schedule import lr_at, step_seed
from plugstack.plugins.train.store import Checkpoint, CheckpointError, TrainDir, differences

BASE = ["app=train", "model=tiny", "backend=cpu", "app.steps=20"]


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]
    says: list[str]
    env: dict[str, str] = field(default_factory=dict)


ROWS = [
    Row("steps-not-a-number", ["app.steps=many"], ["app.steps"]),
    Row("inference-only-backend", ["backend=onnx"], ["only runs inference", "backend=cpu"]),
    Row("model-offers-no-train", ["model=no-train"], ["model 'no-train' offers no training interface"]),
    Row("directory-under-a-file", ["app.directory={tmp}/file/train"], ["{tmp}/file", "app.directory"]),
    Row("not-a-torchrun-rank", [], ["WORLD_SIZE='two' is not an integer", "torchrun"], env={"WORLD_SIZE": "two"}),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_bad_option_is_refused_before_anything_is_allocated(row, tmp_path, plugstack_cli, monkeypatch):
    (tmp_path / "file").write_text("a file where a directory should be")
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in [*BASE, f"app.directory={tmp_path}/train", *row.argv]]
    result = plugstack_cli(argv)
    check(result, 2, [s.replace("{tmp}", str(tmp_path)) for s in row.says])
    assert not (tmp_path / "train").exists()  # refused runs leave no training directory behind


def test_a_bad_option_exits_2_from_a_fresh_process(tmp_path, train_env):
    result = train([*BASE, "app.optimizer=adam", f"app.directory={tmp_path}/train"], train_env)
    check(result, 2, ["app.optimizer='adam' is not known: expected one of adamw | sgd"])
    assert not (tmp_path / "train").exists()


def test_a_directory_another_training_holds_is_refused(tmp_path, plugstack_cli):
    from filelock import FileLock

    (tmp_path / "train").mkdir()
    with FileLock(str(tmp_path / "train" / ".lock"), timeout=0):
        result = plugstack_cli([*BASE, f"app.directory={tmp_path}/train"])
    check(result, 2, ["another training is running in", "choose another app.directory"])


CHECKS = [
    ({"optimizer": "lion"}, "app.optimizer='lion' is not known: expected one of adamw | sgd"),
    ({"schedule": "step"}, "app.schedule='step' is not known: expected one of constant | cosine | linear"),
    ({"precision": "int8"}, "expected one of auto | fp32 | bf16"),
    ({"steps": 0}, "app.steps=0"),
    ({"batch_size": -1}, "app.batch_size=-1"),
    ({"lr": 0.0}, "app.lr=0.0 is invalid: expected a learning rate > 0"),
    ({"lr": math.nan}, "app.lr=nan"),
    ({"eps": 0.0}, "app.eps=0.0"),
    ({"weight_decay": -0.1}, "app.weight_decay=-0.1"),
    ({"beta1": 1.0}, "app.beta1=1.0 is invalid: expected a number in [0, 1)"),
    ({"beta2": -0.5}, "app.beta2=-0.5"),
    ({"momentum": 1.5}, "app.momentum=1.5"),
    ({"warmup_steps": -1}, "app.warmup_steps=-1"),
    ({"warmup_steps": 5, "steps": 3}, "app.warmup_steps=5 must be below app.steps=3"),
    ({"grad_clip": 0.0}, "app.grad_clip=0.0 is invalid: expected a norm > 0, or null"),
    ({"eval_every": -1}, "app.eval_every=-1"),
    ({"checkpoint_every": -5}, "app.checkpoint_every=-5"),
    ({"log_every": 0}, "app.log_every=0"),
    ({"keep_checkpoints": 0}, "app.keep_checkpoints=0"),
]


@pytest.mark.parametrize(("changes", "says"), CHECKS, ids=[next(iter(c)) + "-" + s[-12:] for c, s in CHECKS])
def test_each_option_is_checked_by_name(changes, says):
    with pytest.raises(ConfigError) as err:
        check_options(replace(TrainAppConfig(), **changes))
    assert says in str(err.value)


def test_the_defaults_and_off_switches_pass():
    check_options(TrainAppConfig())
    check_options(TrainAppConfig(grad_clip=None, eval_every=0, checkpoint_every=0, optimizer="sgd", momentum=0.0))


def test_precision_follows_the_device(monkeypatch):
    import torch

    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "an old GPU")
    assert resolve_precision("auto", "cuda:0") == "fp32"
    with pytest.raises(UnsupportedOptionError, match=r"an old GPU does not support bf16; use app\.precision=fp32"):
        resolve_precision("bf16", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda:0") == "bf16"


def test_the_learning_rate_is_a_function_of_the_step():
    def at(step, schedule, warmup=0):
        return lr_at(step, lr=1.0, schedule=schedule, warmup_steps=warmup, steps=10)

    assert [at(s, "constant", 4) for s in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert at(1, "cosine") == 1.0 and 0 < at(10, "cosine") < 0.05
    assert at(1, "linear") == 1.0 and at(10, "linear") == pytest.approx(0.1)
    assert at(5, "cosine", 4) == 1.0  # decay starts after warmup
    assert len({step_seed(0, s, r) for s in range(50) for r in range(4)}) == 200
    assert step_seed(3, 7, 1) == step_seed(3, 7, 1) < 2**63


def test_only_what_changes_the_training_blocks_a_resume(tmp_path):
    options = {"app": {"lr": 0.1, "batch_size": 8}, "model": {"name": "tiny", "width": 16}, "world_size": 1}
    tdir, ckpt = TrainDir(tmp_path), Checkpoint(Path(tmp_path), 40, {"options": options})
    tdir.check_resumable(ckpt, options, 40)  # the finished run, again
    tdir.check_resumable(ckpt, options, 400)  # more steps: training goes on
    with pytest.raises(CheckpointError, match=r"past app\.steps=39"):
        tdir.check_resumable(ckpt, options, 39)
    other = {**options, "app": {"lr": 0.2, "batch_size": 8}, "world_size": 2}
    assert differences(options, other) == ["app.lr is 0.1 there, 0.2 now", "world_size is 1 there, 2 now"]
    assert differences(options, {**options, "model": {"name": "tiny"}}) == ["model.width is 16 there, unset now"]
