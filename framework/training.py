"""The training interface a model plugin offers ``app=train`` (``plugstack.Trainable``).

The model brings *what* is learned — the trainable module, the data in batches, the loss;
``app=train`` brings *how* — optimiser, schedule, precision, clipping, evaluation,
checkpoints, resume and PyTorch DDP. A model offers it through its ``offers`` mapping::

    def load(cfg):
        ...
        return plugstack.Model(..., offers={"train": lambda: MyTrainable(module, data)})

    class MyTrainable(plugstack.Trainable):
        def batches(self, split, *, batch_size, seed, rank=0, world_size=1):
            ...                                  # yields whatever loss() takes
        def loss(self, module, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(module(x), y)

Determinism is part of the contract, so a run killed and resumed loses no step and
repeats none: ``batches(split="train", ...)`` is a pure function of its arguments (the
app skips the batches a resumed run has already trained on), and the app seeds torch's
global generator from ``(seed, step, rank)`` before every step, so random draws inside
``loss`` (noise, dropout) are reproducible too.

What is saved is the Trainable's to say: checkpoints and the final ``model.safetensors``
hold :meth:`Trainable.state_dict` (by default the module's whole ``state_dict()``; a
LoRA Trainable returns its adapter's tensors alone) with :meth:`Trainable.weights_metadata`
beside the app's own keys, and a resumed run hands them back to
:meth:`Trainable.load_state_dict`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["TRAIN", "Trainable", "epoch_shards", "to_device"]

#: The key of :attr:`plugstack.Model.offers` under which a model offers its training
#: interface: a callable taking no arguments and returning a :class:`Trainable`.
TRAIN = "train"


class Trainable(ABC):
    """One model's training interface: a module, its batches and its loss.

    ``module`` is the ``torch.nn.Module`` whose parameters are trained (those with
    ``requires_grad``); the app moves it to the training device and may wrap it (DDP),
    so :meth:`loss` must call the ``module`` it is given, not ``self.module``.
    """

    #: The module trained; :meth:`state_dict` says which of its tensors checkpoints hold.
    module: torch.nn.Module

    @abstractmethod
    def batches(self, split: str, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[Any]:
        """Batches of ``split`` (``"train"`` or ``"eval"``) in an order fixed by ``seed``.

        ``"train"`` never ends (epoch after epoch, reshuffled per epoch); ``"eval"`` is one
        pass over held-out data. A batch is a tensor or a tuple/list/dict of tensors (the
        app moves them to the device) holding ``batch_size`` items for this ``rank`` of
        ``world_size`` processes: ranks see disjoint items.
        """

    @abstractmethod
    def loss(self, module: torch.nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]:
        """The scalar loss of ``batch`` through ``module`` (optionally with named metrics
        to log beside it)."""

    def evaluate(self, module: torch.nn.Module, *, batch_size: int, seed: int) -> dict[str, float]:
        """Held-out metrics, called in eval mode without gradients. By default the mean
        loss over the ``"eval"`` batches, as ``{"eval_loss": ...}``."""
        import torch

        total, count = 0.0, 0
        for batch in self.batches("eval", batch_size=batch_size, seed=seed):
            out = self.loss(module, to_device(batch, next(module.parameters()).device))
            loss = out[0] if isinstance(out, tuple) else out
            total, count = total + float(loss), count + 1
        return {"eval_loss": total / count if count else float(torch.nan)}

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """The tensors a checkpoint and the final weights file hold: by default every tensor
        of ``self.module``; a Trainable that trains a small part of it (an adapter) returns
        that part, so files stay small. Whatever :meth:`load_state_dict` takes back."""
        return self.module.state_dict()

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put back what :meth:`state_dict` returned (resuming a run); a name missing, extra
        or of another shape raises (``RuntimeError``, ``KeyError`` or ``ValueError``)."""
        self.module.load_state_dict(dict(tensors), strict=True)

    def weights_metadata(self) -> dict[str, str]:
        """String metadata stored in the weights files beside the app's ``plugstack.*`` keys
        (safetensors metadata): what a loader needs to use the tensors (an adapter's rank)."""
        return {}

    def usage(self, weights: str) -> str | None:
        """How a person uses the trained ``weights`` file (a command line), printed when
        training ends; ``None``: the app says how to load the tensors instead."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts stored beside each checkpoint (architecture, data)."""
        return {}


def epoch_shards(count: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 items: str = "items", source: str = "the data") -> Iterator[tuple[int, Any]]:
    """``(epoch, indices)`` for ever: this rank's share of ``count`` items in each epoch, what
    :meth:`Trainable.batches` needs to meet its contract. Each epoch is a permutation fixed by
    ``(seed, epoch)``, cut so every rank gets as many whole batches, then strided by rank (ranks
    see disjoint items and stay in step). Too few items for one step is a
    :class:`plugstack.ConfigError` naming ``app.batch_size`` (``items``, ``source``: what the
    message calls them), never an endless loop."""
    import numpy as np

    from .errors import ConfigError

    usable = count - count % (batch_size * world_size)
    if usable == 0:
        raise ConfigError(f"app.batch_size={batch_size} on {world_size} process(es) needs "
                          f"{batch_size * world_size} {items} a step; {source} has {count}. Lower app.batch_size.")
    epoch = 0
    while True:
        yield epoch, np.random.default_rng([seed, epoch]).permutation(count)[:usable][rank::world_size]
        epoch += 1


def to_device(batch: Any, device: Any) -> Any:
    """``batch`` with every tensor in it on ``device``."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch

