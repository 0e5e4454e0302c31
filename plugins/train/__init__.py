"""The ``train`` application: train any model that offers a :class:`plugstack.Trainable`.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports no torch; the application class is imported on first use, and torch only once
the options, the directory and any checkpoint to resume have been checked.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import TrainAppConfig

__all__ = ["TrainAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "train",
        "plugstack.plugins.train.app:TrainApp",
        config=TrainAppConfig,
        description="Train the model it offers (checkpoints, resume, metrics.csv, loss.png, PyTorch DDP "
        "under torchrun)",
    )
