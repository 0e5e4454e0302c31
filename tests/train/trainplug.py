"""A test-only plugin (installed-looking, on PYTHONPATH by conftest): ``model=tiny``, a small
regression MLP that offers ``train``, and ``model=no-train``, which offers nothing.

Light at import, like any plugin. ``TRAINPLUG_STEP_SLEEP`` (seconds) slows each loss call,
so a test can kill a run mid-way; ``TRAINPLUG_INTERRUPT_AT=n`` raises KeyboardInterrupt (as
Ctrl-C would) in the n-th training step. The noise added in ``loss`` draws from torch's
global generator, which the app seeds per step, so a resumed run must reproduce it exactly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import plugstack


@dataclass
class TinyConfig:
    name: str = "tiny"
    #: Hidden units of the MLP.
    width: int = 16


def _signature() -> plugstack.StepSignature:
    return plugstack.StepSignature(inputs=(plugstack.TensorSpec("x", "float32", ("batch", 4)),),
                                   outputs=(plugstack.TensorSpec("y", "float32", ("batch", 1)),))


class TinyTrainable(plugstack.Trainable):
    def __init__(self, width: int) -> None:
        import torch

        self.module = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(640, 4, generator=g)
        y = torch.sin(x @ torch.randn(4, 1, generator=g))
        self.x, self.y, self.x_eval, self.y_eval = x[:512], y[:512], x[512:], y[512:]
        self.calls = 0

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1):
        import torch

        if split == "eval":
            for s in range(0, len(self.x_eval), batch_size):
                yield self.x_eval[s : s + batch_size], self.y_eval[s : s + batch_size]
            return
        epoch = 0
        while True:
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            order = order[rank::world_size]
            for s in range(0, len(order) - batch_size + 1, batch_size):
                yield self.x[order[s : s + batch_size]], self.y[order[s : s + batch_size]]
            epoch += 1

    def loss(self, module, batch):
        import torch

        delay = float(os.environ.get("TRAINPLUG_STEP_SLEEP") or 0)
        if delay:
            time.sleep(delay)
        if module.training:
            self.calls += 1
            if self.calls == int(os.environ.get("TRAINPLUG_INTERRUPT_AT") or 0):
                raise KeyboardInterrupt
        x, y = batch
        noisy = x + 0.05 * torch.randn_like(x)
        return torch.nn.functional.mse_loss(module(noisy), y)

    def describe(self):
        return {"kind": "tiny mlp", "train_items": len(self.x)}


def load_tiny(cfg: TinyConfig) -> plugstack.Model:
    import torch

    return plugstack.Model(name="tiny", kind="regressor", module=torch.nn.Identity(), signature=_signature(),
                           example_inputs=lambda: (torch.zeros(2, 4),),
                           offers={"train": lambda: TinyTrainable(cfg.width)})


def _never():
    raise AssertionError("model=no-train's module is never needed")


def load_untrainable(cfg) -> plugstack.Model:
    return plugstack.Model(name="no-train", kind="regressor", module=None, make_module=_never,
                           signature=_signature(), example_inputs=lambda: ())


@plugstack.hookimpl
def plugstack_register_models(register):
    register("tiny", "trainplug:load_tiny", config=TinyConfig, description="a tiny MLP that offers train")
    register("no-train", "trainplug:load_untrainable", description="a model that offers no train")
