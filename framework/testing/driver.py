"""Drive a Runner's slots the way the generation loop does (tests, kits, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugstack.backend import Runner

__all__ = ["SlotDriver"]


class SlotDriver:
    """Drives a Runner the way the generation loop does: token ids per slot, positions
    from each slot's length (when the signature takes them), logits ``[rows, vocab]``."""

    def __init__(self, runner: Runner, slots: int = 1) -> None:
        self.runner = runner
        self.state = runner.new_state(slots)

    def feed(self, tokens: Sequence[Sequence[int]] | Any, slots: Sequence[int] | None = None) -> Any:
        """Append ``tokens[i]`` to slot ``slots[i]`` (default: every slot); the last logits."""
        import torch

        ids = torch.as_tensor(tokens, dtype=torch.int64)
        if ids.dim() == 1:
            ids = ids[:, None]
        rows = list(range(self.state.size)) if slots is None else list(slots)
        inputs = {"input_ids": ids}
        positions = self.runner.signature.positions
        if positions:
            lengths = self.state.lengths  # (a slot out of range is the runner's to refuse)
            starts = torch.tensor([lengths[s] if 0 <= s < len(lengths) else 0 for s in rows])[:, None]
            inputs[positions] = starts + torch.arange(ids.shape[1])[None, :]
        logits = self.runner.run(inputs, self.state, slots).outputs["logits"]
        return logits[:, -1] if logits.dim() == 3 else logits

    def release(self, slot: int) -> None:
        self.runner.release(self.state, slot)

    def length(self, slot: int = 0) -> int:
        return self.runner.state_length(self.state, slot)
