"""What the diffusion model offers ``app=train``: the DDPM objective on captioned images.

A batch is ``(images [B, 1, S, S] in [-1, 1], tokens [B, L])`` with each image's caption
phrased afresh from its attributes, and emptied with probability ``caption_dropout`` so the
model also learns the unconditional prediction that classifier-free guidance needs. The
loss is the mean squared error of the predicted noise at a uniformly drawn timestep.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from plugstack.training import Trainable, epoch_shards

from .captions import MAX_TOKENS, caption, encode
from .data import CaptionedImages
from .unet import UNet

__all__ = ["DiffusionTrainable"]


class DiffusionTrainable(Trainable):
    def __init__(self, unet: UNet, data: CaptionedImages, abar: np.ndarray, *, caption_dropout: float = 0.1,
                 facts: Mapping[str, Any] | None = None) -> None:
        self.module = unet
        self.train_data, self.eval_data = data.split()
        self.abar = torch.from_numpy(abar).float()
        self.caption_dropout = caption_dropout
        self.facts = dict(facts or {})

    def batches(self, split: str, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "eval":
            order = np.arange(len(self.eval_data.images))
            yield from self._batches(self.eval_data, order, batch_size, f"eval-{seed}")
            return
        for epoch, order in epoch_shards(len(self.train_data.images), batch_size=batch_size, seed=seed, rank=rank,
                                         world_size=world_size, items="training images"):
            yield from self._batches(self.train_data, order, batch_size, f"{seed}-{epoch}")

    def _batches(self, data: CaptionedImages, order: np.ndarray, batch_size: int,
                 key: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            images = torch.from_numpy(data.images[idx] * 2 - 1)[:, None]  # [B, 1, S, S] in [-1, 1]
            tokens = torch.tensor([self._tokens(data.attributes[i], random.Random(f"{key}-{i}")) for i in idx])
            yield images, tokens

    def _tokens(self, attributes: Mapping[str, str], rng: random.Random) -> list[int]:
        if rng.random() < self.caption_dropout:
            return [0] * MAX_TOKENS
        return encode(caption(attributes, rng))

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._loss(module, batch, None)

    def _loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
              generator: torch.Generator | None) -> torch.Tensor:
        images, tokens = batch
        t = torch.randint(0, len(self.abar), (len(images),), generator=generator)
        noise = torch.randn(images.shape, generator=generator).to(images)
        a = self.abar[t].to(images)[:, None, None, None]
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise
        return torch.nn.functional.mse_loss(module(noisy, t.to(images.device), tokens).float(), noise.float())

    def evaluate(self, module: torch.nn.Module, *, batch_size: int, seed: int) -> dict[str, float]:
        """Mean noise-prediction error on the held-out tenth, at timesteps and noise fixed
        by ``seed`` (so evaluations at different steps compare)."""
        generator = torch.Generator().manual_seed(seed)
        device = next(module.parameters()).device
        losses = [float(self._loss(module, (x.to(device), y.to(device)), generator))
                  for x, y in self.batches("eval", batch_size=batch_size, seed=seed)]
        return {"eval_loss": sum(losses) / len(losses)}

    def usage(self, weights: str) -> str:
        from .config import DigitsDiffusionConfig
        from .loader import TRAINED_AS

        default = DigitsDiffusionConfig()
        sets = "".join(f" 'model.{k}={json.dumps(self.facts[k]).replace(' ', '')}'" for k in TRAINED_AS
                       if self.facts[k] != getattr(default, k))
        return f'plugstack app=image model=digits-diffusion model.weights={weights}{sets} "a bold seven"'

    def describe(self) -> dict[str, Any]:
        return {**self.facts, "train_images": len(self.train_data.images), "eval_images": len(self.eval_data.images)}
