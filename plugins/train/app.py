"""The ``train`` application: what is checked before torch is imported, then the loop.

In order, each refusal exiting 2 with a message that says what to do: the options; the
backend's training device (``onnx`` refuses); the training directory's lock; the newest
checkpoint, when resuming (whole, and of the same training); the model's ``"train"``
offer. Only then is ``loop.py`` (torch, safetensors) imported and anything allocated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from plugstack.app import App, RunContext
from plugstack.errors import UnsupportedOptionError
from plugstack.files import storage_errors
from plugstack.training import TRAIN

from .config import RESUME_KEYS, check
from .ddp import Launch
from .store import Checkpoint, TrainDir

__all__ = ["TrainApp", "default_directory", "resolve_precision"]


def default_directory(model_name: str) -> Path:
    """``$PLUGSTACK_OUTPUTS/train/<model>``: the same for every rerun (and every rank) of a
    command, unlike Hydra's per-run directory, so a rerun finds the checkpoints."""
    root = os.environ.get("PLUGSTACK_OUTPUTS") or "outputs"
    return Path(root).expanduser() / "train" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_name) or "model")


def _plain(node: Any) -> Any:
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``app.precision`` on ``device`` (only a GPU needs asking)."""
    if not device.startswith("cuda") or precision == "fp32":
        return "fp32" if precision == "auto" else precision  # CPU autocast runs bf16 anywhere
    import torch

    supported = torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if supported else "fp32"
    if not supported:
        raise UnsupportedOptionError(f"app.precision=bf16: {torch.cuda.get_device_name(device)} does not support "
                                     f"bf16; use app.precision=fp32 (or auto, which picks what the GPU supports).")
    return precision


class TrainApp(App):
    """Train ``ctx.model``'s ``offers["train"]`` on ``ctx.backend.training_device()``."""

    def run(self, ctx: RunContext) -> int:
        cfg = self.cfg
        check(cfg)
        launch = Launch.from_env()
        device = ctx.backend.training_device()
        precision = resolve_precision(cfg.precision, device)
        path = Path(cfg.directory).expanduser() if cfg.directory else default_directory(str(ctx.cfg.model.name))
        tdir = TrainDir(path.absolute())
        options = {"app": {k: getattr(cfg, k) for k in RESUME_KEYS}, "model": _plain(ctx.cfg.model),
                   "world_size": launch.world_size}
        if cfg.schedule != "constant":  # a decaying schedule is planned over app.steps: more steps is another plan
            options["app"]["schedule_steps"] = cfg.steps
        with storage_errors(tdir.path, what="the training directory", setting="app.directory"):
            with tdir.locked() if launch.main else contextlib.nullcontext():
                resume = self._resume_point(ctx, tdir, options, launch)
                model = ctx.model
                make = model.offers.get(TRAIN)
                if make is None:
                    offers = ", ".join(sorted(model.offers)) or "nothing"
                    raise UnsupportedOptionError(
                        f"model {model.name!r} offers no training interface (it offers {offers}), so app=train "
                        f"cannot train it: choose a model that does, or have its plugin return plugstack.Model(..., "
                        f"offers={{'train': lambda: MyTrainable(...)}}) with a plugstack.Trainable.")
                if not cfg.resume and launch.main:
                    self._move_aside(ctx, tdir)
                from .loop import Trainer

                trainer = Trainer(ctx, cfg, tdir, launch, options, precision)
                return trainer.run(make, device, resume)

    def _resume_point(self, ctx: RunContext, tdir: TrainDir, options: dict[str, Any],
                      launch: Launch) -> Checkpoint | None:
        """The verified checkpoint to continue from, or ``None`` to start at step 0."""
        if launch.main:
            tdir.clean()
        if not self.cfg.resume:
            return None
        ckpt = tdir.newest()
        if ckpt is None:
            return None
        tdir.check_resumable(ckpt, options, self.cfg.steps)
        if launch.main:
            left = self.cfg.steps - ckpt.step
            print(f"plugstack: note: resuming from step {ckpt.step} ({ckpt.path}); {left} step(s) to go.",
                  file=sys.stderr)
            ctx.log.info("train.resume", step=ckpt.step, checkpoint=str(ckpt.path), steps=self.cfg.steps)
        return ckpt

    def _move_aside(self, ctx: RunContext, tdir: TrainDir) -> None:
        """``app.resume=false``: start over, keeping the previous training under ``replaced-<time>``."""
        moved = tdir.move_aside()
        if moved is not None:
            print(f"plugstack: note: app.resume=false: the previous training in {tdir.path} was moved to {moved}.",
                  file=sys.stderr)
            ctx.log.info("train.moved_aside", to=str(moved))
