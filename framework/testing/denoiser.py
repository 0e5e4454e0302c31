"""A tiny conditional denoiser: the kit's stateless model (a diffusion model's step).

It predicts the noise in a one-channel ``size x size`` image at a timestep, conditioned
on a few caption word ids (0 = padding), with classifier-free guidance inside the step:
the conditional and the unconditional branch (every token 0) run as one doubled batch and
the step returns ``uncond + guidance * (cond - uncond)``. The conditioning (a sinusoidal
time embedding through an MLP, plus the mean embedding of the non-padding tokens) scales
and shifts the features of two residual conv blocks (FiLM). No state, no mask, no
positions, no graph builder: every backend runs it on its generic path, and the cpu
backend's int8 option has nn.Linear layers to quantise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from plugstack.signature import FLOAT, StepSignature, TensorSpec

__all__ = ["TinyDenoiser"]

#: Timesteps the example inputs draw from (a DDPM schedule's length).
TIMESTEPS = 1000


class FiLMBlock(nn.Module):
    """conv -> scale/shift by the conditioning -> SiLU -> conv, plus the input."""

    def __init__(self, channels: int, cond: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond, 2 * channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        h = torch.nn.functional.silu(self.conv1(x) * (1 + scale) + shift)
        return x + self.conv2(h)


class TinyDenoiser(nn.Module):
    """``forward(sample [B, 1, S, S], timestep [B], tokens [B, L], guidance [B]) -> (noise [B, 1, S, S],)``."""

    def __init__(self, size: int = 8, caption_length: int = 4, vocab_size: int = 32, channels: int = 8,
                 width: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.size, self.caption_length, self.vocab_size, self.width = size, caption_length, vocab_size, width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.embed = nn.Embedding(vocab_size, width)
        self.text = nn.Linear(width, width)
        self.conv_in = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList([FiLMBlock(channels, width) for _ in range(2)])
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                # Weights ~ 1/sqrt(fan-in) keep activations near unit scale; small biases.
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
            self.embed.weight.mul_(self.width**0.5)  # word vectors of unit scale, as a trained table's
            # Guided noise of about unit scale (as a trained model's), for the kit's tolerances.
            self.conv_out.weight.mul_(0.25)

    def condition(self, timestep: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[B, width]``: the time embedding plus the mean embedding of the non-padding tokens."""
        half = self.width // 2
        freqs = torch.exp(torch.arange(half, device=timestep.device) * (-math.log(10000.0) / half))
        # In fp32 whatever the compute dtype: bf16 cannot resolve sin(999 * f).
        angles = timestep.to(torch.float32)[:, None] * freqs[None, :]  # [B, half]
        time = self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype))
        real = (tokens != 0).to(dtype)[..., None]  # [B, L, 1]
        pooled = (self.embed(tokens) * real).sum(1) / real.sum(1).clamp(min=1.0)  # [B, width]
        return time + self.text(pooled)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor,
                guidance: torch.Tensor) -> tuple[torch.Tensor]:
        rows = sample.shape[0]
        # Conditional rows first, then the same rows with every token padding (unconditional).
        x = torch.cat([sample, sample])  # [2B, 1, S, S]
        cond = self.condition(torch.cat([timestep, timestep]), torch.cat([tokens, torch.zeros_like(tokens)]),
                              sample.dtype)  # [2B, width]
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, cond)
        out = self.conv_out(torch.nn.functional.silu(h))  # [2B, 1, S, S]
        with_text, without = out[:rows], out[rows:]
        g = guidance.to(sample.dtype)[:, None, None, None]  # [B, 1, 1, 1]
        return (without + g * (with_text - without),)

    def signature(self) -> StepSignature:
        image = ("batch", 1, self.size, self.size)
        return StepSignature(
            inputs=(TensorSpec("sample", FLOAT, image), TensorSpec("timestep", "int64", ("batch",)),
                    TensorSpec("tokens", "int64", ("batch", self.caption_length)),
                    TensorSpec("guidance", "float32", ("batch",))),
            outputs=(TensorSpec("noise", FLOAT, image),),
            meta={"image_size": self.size, "caption_length": self.caption_length, "vocab_size": self.vocab_size},
        )

    def example_inputs(self, batch: int = 2, seq: int = 3, past: int = 2) -> tuple[torch.Tensor, ...]:
        """Valid inputs of ``batch`` rows (``seq`` and ``past`` do not apply: a step is one image)."""
        dtype = self.conv_in.weight.dtype
        sample = torch.randn(batch, 1, self.size, self.size, dtype=dtype)
        timestep = torch.randint(0, TIMESTEPS, (batch,))
        tokens = torch.randint(1, self.vocab_size, (batch, self.caption_length))
        tokens[:, -1] = 0  # captions shorter than the window end in padding
        guidance = 1.0 + 4.0 * torch.rand(batch)  # scales used in practice lie in about 1..5
        return sample, timestep, tokens, guidance
