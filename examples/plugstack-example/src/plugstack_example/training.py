"""What ``model=bigram`` offers ``app=train``: its table learnt by gradient descent.

A third-party model becomes trainable by offering a :class:`plugstack.Trainable` under
``offers["train"]``; the app brings the optimiser, checkpoints, resume and DDP. Here the
items are the corpus's byte pairs (the byte before, the byte after), one in ten held out,
and the loss is next-byte cross-entropy. Training starts from a uniform table (or from
``model.weights``, to train on), so the loss falls from ln(257) towards what counting gets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional

import plugstack

from .bigram import EOS, VOCAB, Bigram

__all__ = ["BigramTrainable", "byte_pairs"]


def byte_pairs(text: bytes) -> torch.Tensor:
    """``[n, 2]`` (byte, next byte) pairs of every line, each line ending in ``EOS``."""
    pairs = []
    for line in text.splitlines():
        ids = [*line, EOS]
        pairs += itertools.pairwise(ids)
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


class BigramTrainable(plugstack.Trainable):
    def __init__(self, text: bytes, table: torch.Tensor | None = None, source: str = "") -> None:
        self.module = Bigram(torch.zeros(VOCAB, VOCAB) if table is None else table.clone())
        self.module.table.weight.requires_grad_(True)
        pairs = byte_pairs(text)
        held_out = torch.arange(len(pairs)) % 10 == 9
        self.train_pairs, self.eval_pairs = pairs[~held_out], pairs[held_out]
        self.facts = {"vocab": VOCAB, "train_pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs),
                      "corpus": source, "init": "uniform" if table is None else "model.weights"}

    def batches(self, split: str, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "eval":
            for start in range(0, len(self.eval_pairs), batch_size):
                chunk = self.eval_pairs[start : start + batch_size]
                yield chunk[:, 0], chunk[:, 1]
            return
        share = len(self.train_pairs) // world_size
        if share < batch_size:
            raise plugstack.ConfigError(f"app.batch_size={batch_size} is more than the {share} byte pairs each of "
                                        f"{world_size} process(es) gets from the corpus: lower app.batch_size.")
        epoch = 0
        while True:  # reshuffled each epoch; rank r takes every world_size-th pair from r, all ranks alike many
            generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
            order = torch.randperm(len(self.train_pairs), generator=generator)[: share * world_size][rank::world_size]
            for start in range(0, len(order) - batch_size + 1, batch_size):
                chunk = self.train_pairs[order[start : start + batch_size]]
                yield chunk[:, 0], chunk[:, 1]
            epoch += 1

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        before, after = batch
        (logits,) = module(before[:, None])
        accuracy = (logits.argmax(-1) == after).float().mean()
        return functional.cross_entropy(logits.float(), after), {"accuracy": float(accuracy)}

    def describe(self) -> dict[str, Any]:
        return dict(self.facts)
