"""Direct preference optimisation (Rafailov et al., 2023) for the llama model's ``app=train``.

Each pair is the prompt with the chosen answer and with the rejected one. The loss is
``-log σ(β·m)`` with the margin ``m = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))``,
each ``log π`` summed over the answer's tokens. The reference ``π_ref`` is where training
started (the base model, or ``model.finetune.init_adapter``, e.g. the SFT adapter): a frozen
copy of the trained parameters, run with ``torch.func.functional_call`` so the model is held
once. ``model.finetune.sft_weight`` adds that much of the chosen answers' next-token loss
(RPO, Pang et al., 2024): plain DPO lowers the chosen answers' likelihood too, when they
share most tokens with the rejected ones. The logged ``accuracy`` is the share of pairs
whose margin is positive: the implicit reward prefers the chosen answer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugstack.model import Model
from plugstack.training import to_device

from .finetune import LlamaTrainable, collate
from .model import Llama
from .sft_data import Pair, load_pairs

__all__ = ["DPOTrainable", "make_dpo", "sequence_logprobs"]


def sequence_logprobs(module: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[B]``: each row's log-probability of its answer tokens (``batch`` from :func:`collate`)."""
    logits = module(batch["input_ids"], batch["attention_mask"], batch["select"])  # [N, V], N selected positions
    token = -F.cross_entropy(logits, batch["labels"], reduction="none")  # [N]
    rows = batch["select"].nonzero()[:, 0]  # [N]: row-major, the order x[select] took them in
    return torch.zeros(batch["select"].shape[0], device=token.device).index_add(0, rows, token)


def pair_batch(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """The chosen answers in rows ``[0, B)``, the rejected ones in rows ``[B, 2B)``."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


class DPOTrainable(LlamaTrainable):
    """DPO on preference pairs (see the module)."""

    objective = "dpo"
    items = "preference pairs"

    def __init__(self, llama: Llama, *, beta: float, sft_weight: float = 0.0, **common: Any) -> None:
        super().__init__(llama, **common)
        self.beta, self.sft_weight = float(beta), float(sft_weight)
        self.reference = self.trained_copy()  # before any step, also on resume: make() runs before the restore

    def make_batch(self, rows: list[Pair]) -> dict[str, torch.Tensor]:
        return pair_batch(rows, self.pad_id)

    @torch.no_grad()
    def reference_logprobs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[2B]``: :func:`sequence_logprobs` under the frozen starting weights, without dropout."""
        was = self.module.training
        self.module.eval()
        try:
            frozen = functools.partial(torch.func.functional_call, self.module, self.reference, strict=False)
            return sequence_logprobs(lambda *args: frozen(args), batch)
        finally:
            self.module.train(was)

    def margins(self, module: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B], [2B])``: each pair's implicit-reward margin ``m`` (see the module), and the
        policy's log-probability of each answer."""
        reference = self.reference_logprobs(batch)  # [2B]
        policy = sequence_logprobs(module, batch)
        chosen, rejected = (policy - reference).chunk(2)
        return chosen - rejected, policy

    def loss(self, module: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        m, policy = self.margins(module, batch)
        loss = -F.logsigmoid(self.beta * m).mean()
        if self.sft_weight:  # RPO: the chosen answers' own likelihood keeps them from sinking with the rejected
            chosen_tokens = batch["select"][: m.shape[0]].sum()
            loss = loss - self.sft_weight * policy[: m.shape[0]].sum() / chosen_tokens
        return loss, {"accuracy": float((m > 0).float().mean()), "margin": float(self.beta * m.mean().detach())}

    def evaluate(self, module: nn.Module, *, batch_size: int, seed: int) -> dict[str, float]:
        """Held-out DPO loss, preference accuracy and mean β·margin (no pairs given: no metric)."""
        if not self.held_out:
            return {}
        device = next(module.parameters()).device
        m = torch.cat([self.margins(module, to_device(b, device))[0]
                       for b in self.batches("eval", batch_size=batch_size, seed=seed)])
        return {"eval_loss": float(-F.logsigmoid(self.beta * m).mean()),
                "eval_accuracy": float((m > 0).float().mean()), "eval_margin": float(self.beta * m.mean())}

    def sizes(self) -> dict[str, Any]:
        return {"beta": self.beta, "sft_weight": self.sft_weight, "train_pairs": len(self.train),
                "eval_pairs": len(self.held_out)}


def make_dpo(model: Model, ft: Any, max_length: int, **common: Any) -> DPOTrainable:
    tok = model.tokenizer
    train, skipped = load_pairs(ft.data, tok, max_length=max_length)
    held_out = load_pairs(ft.eval_data, tok, max_length=max_length,
                          setting="model.finetune.eval_data")[0] if ft.eval_data else []
    common["facts"]["skipped_too_long"] = skipped
    return DPOTrainable(model.module, train=train, held_out=held_out, beta=ft.beta, sft_weight=ft.sft_weight,
                        **common)
