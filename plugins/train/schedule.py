"""Pure functions of the step: the learning rate and the seed of torch's global generator.

Both depend on nothing but their arguments, so a resumed run computes exactly what an
uninterrupted one would have (no scheduler or generator state to save).
"""

from __future__ import annotations

import hashlib
import math

__all__ = ["lr_at", "step_seed"]


def lr_at(step: int, *, lr: float, schedule: str, warmup_steps: int, steps: int) -> float:
    """The learning rate of optimiser step ``step`` (1-based): linear warmup to ``lr`` over
    ``warmup_steps``, then ``schedule`` (constant, or cosine/linear decay towards 0, which
    the last step approaches but does not reach: no step is wasted at lr 0)."""
    if step <= warmup_steps:
        return lr * step / warmup_steps
    done = (step - warmup_steps - 1) / max(1, steps - warmup_steps)  # in [0, 1)
    done = min(done, 1.0)  # a run resumed with fewer steps than its schedule was made for
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * done))
    if schedule == "linear":
        return lr * (1.0 - done)
    return lr


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's global generator before step ``step`` on ``rank`` (step 0: the
    model's initialisation). A hash, so nearby (seed, step, rank) give unrelated streams."""
    digest = hashlib.sha256(f"plugstack.train/{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch.manual_seed takes < 2**63
