"""Helpers of the app=train tests: the tiny model's reference options, running the CLI,
reading what a run wrote."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from badinput import Result, run

#: The options of the tiny model's reference training (and of the runs compared with it).
TINY = ["app=train", "model=tiny", "backend=cpu", "app.steps=40", "app.batch_size=32", "app.lr=0.02",
        "app.checkpoint_every=10", "app.eval_every=20", "app.keep_checkpoints=2", "app.schedule=cosine",
        "app.warmup_steps=4"]


def train(argv: list[str], env: dict[str, str], **extra_env: str) -> Result:
    return run(argv, env={**env, **extra_env}, timeout=240)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def steps_of(path: Path) -> list[int]:
    return [int(r["step"]) for r in rows(path)]


def with_options(argv: list[str], **changes: object) -> list[str]:
    """``argv`` with ``app__lr=...`` (``app.lr``) set anew: Hydra takes one value per key."""
    keys = {k.replace("__", "."): v for k, v in changes.items()}
    return [a for a in argv if a.split("=", 1)[0] not in keys] + [f"{k}={v}" for k, v in keys.items()]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with its sha256: to show a refused run changed nothing."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}
