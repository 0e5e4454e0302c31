"""A tiny recurrent language model: the kit's model of a different shape than a decoder.

A diagonal linear recurrence over byte embeddings (in the spirit of LRU / S4D layers):
``h_t = a * h_{t-1} + W x_t`` with a learned decay ``a`` in (0, 1) per channel, then a
small readout. Its state is one ``[batch, hidden]`` vector, the same size whatever the
length (``state_axis=None``); it has no attention mask and no positions. A step of ``T``
tokens is computed in parallel (``h_t = a^(t+1) h_0 + sum_s a^(t-s) u_s``), so the whole
step exports to ONNX without a loop.
"""

from __future__ import annotations

import torch
from torch import nn

from plugstack.signature import FLOAT, StepSignature, TensorSpec

__all__ = ["TinyRecurrentLM"]


class TinyRecurrentLM(nn.Module):
    """``forward(input_ids [B, T], state [B, H]) -> (logits [B, vocab], next_state [B, H])``."""

    def __init__(self, vocab_size: int = 258, width: int = 32, hidden: int = 48, seed: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.hidden = vocab_size, hidden
        self.embed = nn.Embedding(vocab_size, width)
        self.inp = nn.Linear(width, hidden)
        self.decay_logit = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, width)
        self.head = nn.Linear(width, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.decay_logit.copy_(torch.linspace(-2.0, 3.0, hidden))  # memories from short to long
            # Logits and states of about the tiny Llama's scale, for the kit's tolerances.
            self.head.weight.mul_(0.05)
            self.inp.weight.mul_(0.2)

    def forward(self, input_ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(input_ids)  # [B, T, W]
        u = self.inp(x)  # [B, T, H]
        a = torch.sigmoid(self.decay_logit)  # [H]
        t = torch.arange(input_ids.shape[1], device=input_ids.device)
        lag = (t[:, None] - t[None, :])[..., None]  # [T, T, 1]: how far back input s is from t
        weights = torch.where(lag >= 0, a ** lag.clamp(min=0).to(a.dtype), torch.zeros_like(a))  # [T, T, H]
        h = torch.einsum("tsh,bsh->bth", weights, u) + a ** (t[:, None] + 1).to(a.dtype) * state[:, None, :]
        y = x + self.out(torch.tanh(h))  # [B, T, W]
        return self.head(y[:, -1]).float(), h[:, -1]

    def signature(self) -> StepSignature:
        return StepSignature(
            inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),
                    TensorSpec("state.h", FLOAT, ("batch", self.hidden))),
            outputs=(TensorSpec("logits", "float32", ("batch", self.vocab_size)),
                     TensorSpec("state.h_next", FLOAT, ("batch", self.hidden))),
            state=(("state.h", "state.h_next"),),
            new_axis="seq",
            meta={"vocab_size": self.vocab_size},
        )

    def example_inputs(self, batch: int = 2, seq: int = 3, past: int = 2) -> tuple[torch.Tensor, ...]:
        """Valid inputs with every dynamic dim >= 2 (exporters specialise 0 and 1)."""
        ids = torch.randint(0, self.vocab_size, (batch, seq))
        return ids, torch.randn(batch, self.hidden, dtype=self.embed.weight.dtype) * 0.1
