"""The denoiser: a small text-conditioned UNet, and the guided step backends run.

:class:`UNet` predicts the noise in a noisy image from the timestep and a caption's token
ids (trained with the DDPM objective). :class:`GuidedDenoiser` is the model's *step*: it
runs the UNet on the caption and on the empty caption in one doubled batch and mixes the
two with classifier-free guidance, so one step of the sampling loop is one backend call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GuidedDenoiser", "TextEncoder", "UNet"]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TextEncoder(nn.Module):
    """A two-layer Transformer over the caption's words; the summary token's output is the
    caption's embedding. Padding (id 0) is masked out; the summary token is always there,
    so the empty caption (every id 0) is well defined: classifier-free guidance's null."""

    def __init__(self, vocab_size: int, width: int = 64, max_tokens: int = 8, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab_size + 1, width)
        self.summary = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, max_tokens + 1, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n = tokens.shape
        x = torch.cat([self.summary.expand(b, 1, -1), self.embed(tokens)], dim=1)  # [B, 1 + L, W]
        x = x + self.position[:, : n + 1]
        keep = torch.cat([torch.ones_like(tokens[:, :1]), tokens], dim=1) != 0  # [B, 1 + L]
        bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, -1e4)
        for block in self.blocks:
            x = block(x, bias[:, None, None, :])  # bias: [B, 1, 1, 1 + L] over the keys
        return self.norm(x[:, 0])


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads) + bias  # [B, heads, N, N]
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class _ResBlock(nn.Module):
    """Two 3x3 convolutions; the time+text embedding scales and shifts between them (FiLM)."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(nn.functional.silu(e))[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(nn.functional.silu(h)) + self.skip(x)


class UNet(nn.Module):
    """``forward(sample [B, 1, S, S], timestep [B], tokens [B, L]) -> noise [B, 1, S, S]``.

    One residual block per resolution on the way down (S, S/2, S/4 for three levels) and
    one on the way up, each joined to the down path by a skip connection."""

    def __init__(self, vocab_size: int, channels: Sequence[int] = (32, 64, 64), text_width: int = 64,
                 max_tokens: int = 8) -> None:
        super().__init__()
        channels = list(channels)
        emb = 4 * channels[0]
        self.time_width = channels[0]
        self.time = nn.Sequential(nn.Linear(channels[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.text = TextEncoder(vocab_size, text_width, max_tokens)
        self.text_proj = nn.Linear(text_width, emb)
        self.conv_in = nn.Conv2d(1, channels[0], 3, padding=1)
        ins = [channels[0], *channels[:-1]]
        self.down = nn.ModuleList(_ResBlock(i, o, emb) for i, o in zip(ins, channels, strict=True))
        self.pool = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.mid = _ResBlock(channels[-1], channels[-1], emb)
        ins_up = [channels[-1], *channels[::-1][1:]]  # each up block takes the previous one's output
        outs_up = [*ins_up[1:], channels[0]]
        self.up = nn.ModuleList(_ResBlock(i + c, o, emb)
                                for i, c, o in zip(ins_up, channels[::-1], outs_up, strict=True))
        self.norm_out = nn.GroupNorm(8, channels[0])
        self.conv_out = nn.Conv2d(channels[0], 1, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        e = self.time(timestep_embedding(timestep, self.time_width).to(sample.dtype))
        e = e + self.text_proj(self.text(tokens))
        h = self.conv_in(sample)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)  # [B, C, S/2^(i+1), ...]
        h = self.mid(h, e)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), e)
            if i < len(self.up) - 1:
                h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class GuidedDenoiser(nn.Module):
    """The step: ``forward(sample, timestep, tokens, guidance [B]) -> (noise,)``, the guided
    prediction ``uncond + guidance * (cond - uncond)`` (0: unconditional, 1: conditional)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor,
                guidance: torch.Tensor) -> tuple[torch.Tensor]:
        both = self.unet(torch.cat([sample, sample]), torch.cat([timestep, timestep]),
                         torch.cat([tokens, torch.zeros_like(tokens)]))  # [2B, 1, S, S]
        n = sample.shape[0]
        cond, uncond = both[:n], both[n:]  # slices, not chunk(): a dynamic-size split trips the ONNX optimiser
        return (uncond + guidance.to(sample.dtype)[:, None, None, None] * (cond - uncond),)  # outputs are a tuple
