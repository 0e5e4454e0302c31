"""Options of the ``train`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass
from typing import Any, Optional

from plugstack.errors import ConfigError

__all__ = ["OPTIMIZERS", "PRECISIONS", "RESUME_KEYS", "SCHEDULES", "TrainAppConfig", "check"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16")
#: Options a checkpoint must share with the run that resumes it: changing any of them would
#: make the resumed run a different training (``steps`` may grow: training goes on longer).
RESUME_KEYS = ("optimizer", "lr", "weight_decay", "beta1", "beta2", "eps", "momentum", "schedule",
               "warmup_steps", "batch_size", "seed", "grad_clip")


@dataclass
class TrainAppConfig:
    """Train the chosen model (``app=train``) with what it offers as ``offers["train"]``
    (a :class:`plugstack.Trainable`): checkpoints, resume, metrics and PyTorch DDP included."""

    name: str = "train"
    #: Optimiser: adamw | sgd.
    optimizer: str = "adamw"
    #: Peak learning rate (reached after warmup_steps), > 0.
    lr: float = 0.001
    #: adamw: decoupled weight decay; sgd: L2 penalty. 0 = none.
    weight_decay: float = 0.0
    #: adamw's decay rate of the gradient average, in [0, 1).
    beta1: float = 0.9
    #: adamw's decay rate of the squared-gradient average, in [0, 1).
    beta2: float = 0.999
    #: adamw's term added to the denominator for numerical stability, > 0.
    eps: float = 1e-8
    #: sgd's momentum, in [0, 1); 0 = plain sgd.
    momentum: float = 0.9
    #: Learning rate after warmup: constant | cosine | linear (both decay towards 0 at app.steps).
    schedule: str = "constant"
    #: Steps of linear warmup from 0 to app.lr; must be below app.steps.
    warmup_steps: int = 0
    #: Items per optimiser step on each process (DDP: every rank takes this many of its own).
    batch_size: int = 32
    #: Optimiser steps to train in all (a resumed run counts the ones already done).
    steps: int = 1000
    #: Fixes the data order and every random draw: (seed, step, rank) seeds each step.
    seed: int = 0
    #: Clip the gradients' global norm to this; null = no clipping.
    grad_clip: Optional[float] = 1.0
    #: auto | fp32 | bf16. auto: bf16 autocast on a CUDA GPU that supports it, else fp32.
    precision: str = "auto"
    #: Evaluate on the held-out split every this many steps and at the end; 0 = at the end only.
    eval_every: int = 100
    #: Log the loss (train.step) every this many steps; metrics.csv gets every step anyway.
    log_every: int = 10
    #: Write a checkpoint every this many steps and at the end; 0 = at the end only.
    checkpoint_every: int = 100
    #: Newest checkpoints kept; older ones are removed once a newer one is complete.
    keep_checkpoints: int = 2
    #: Checkpoints, metrics.csv, loss.png and model.safetensors go here; null =
    #: $PLUGSTACK_OUTPUTS/train/<model name> (outputs/train/<model name> when unset).
    directory: Optional[str] = None
    #: Continue from the newest checkpoint in app.directory; false = start over (the old
    #: training is moved aside into app.directory/replaced-<time>, not deleted).
    resume: bool = True


def _one_of(cfg: Any, key: str, valid: tuple[str, ...]) -> None:
    value = getattr(cfg, key)
    if value not in valid:
        raise ConfigError(f"app.{key}={value!r} is not known: expected one of {' | '.join(valid)}.")


def _at_least(cfg: Any, key: str, low: float, what: str) -> None:
    value = getattr(cfg, key)
    if not value >= low:  # also catches nan
        raise ConfigError(f"app.{key}={value} is invalid: expected {what}.")


def _fraction(cfg: Any, key: str) -> None:
    value = getattr(cfg, key)
    if not 0 <= value < 1:
        raise ConfigError(f"app.{key}={value} is invalid: expected a number in [0, 1).")


def check(cfg: Any) -> None:
    """Refuse an invalid option by name, saying what is valid, before anything is allocated."""
    _one_of(cfg, "optimizer", OPTIMIZERS)
    _one_of(cfg, "schedule", SCHEDULES)
    _one_of(cfg, "precision", PRECISIONS)
    _at_least(cfg, "steps", 1, "an integer >= 1")
    _at_least(cfg, "batch_size", 1, "an integer >= 1")
    if not cfg.lr > 0:
        raise ConfigError(f"app.lr={cfg.lr} is invalid: expected a learning rate > 0, e.g. app.lr=0.001.")
    if not cfg.eps > 0:
        raise ConfigError(f"app.eps={cfg.eps} is invalid: expected a number > 0, e.g. app.eps=1e-8.")
    _at_least(cfg, "weight_decay", 0, "a number >= 0 (0 = no weight decay)")
    for key in ("beta1", "beta2", "momentum"):
        _fraction(cfg, key)
    _at_least(cfg, "warmup_steps", 0, "an integer >= 0")
    if cfg.warmup_steps >= cfg.steps:
        raise ConfigError(f"app.warmup_steps={cfg.warmup_steps} must be below app.steps={cfg.steps}: the learning "
                          f"rate would never reach app.lr. Lower app.warmup_steps or raise app.steps.")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ConfigError(f"app.grad_clip={cfg.grad_clip} is invalid: expected a norm > 0, or null for no clipping.")
    for key, what in (("eval_every", "an integer >= 0 (0 = evaluate at the end only)"),
                      ("checkpoint_every", "an integer >= 0 (0 = checkpoint at the end only)")):
        _at_least(cfg, key, 0, what)
    _at_least(cfg, "log_every", 1, "an integer >= 1")
    _at_least(cfg, "keep_checkpoints", 1, "an integer >= 1 (the newest checkpoint is what a rerun resumes from)")
