"""Sampling parameters and the logits processors that apply them.

The order is the one Hugging Face ``generate`` uses, so results are comparable:
repetition penalty -> temperature -> top-k -> top-p -> sample (or argmax when greedy).
Every processor works on a ``[batch, vocab]`` float tensor and returns a new one.

torch is imported lazily (inside the functions) so that importing this module, e.g. to
build a ``SamplingParams`` from a config, stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .errors import GenerationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SamplingParams",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "choose_tokens",
    "process_logits",
    "sampling_distribution",
]


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop (validated on construction).

    Also the sampling options of applications: an app's config dataclass inherits from it
    (``app.temperature=0.7``), so these defaults and docs are the only ones.
    """

    #: Tokens to generate at most.
    max_new_tokens: int = 128
    #: 0 = greedy (argmax); higher is more random.
    temperature: float = 0.0
    #: Sample among the k most likely tokens; 0 = off.
    top_k: int = 0
    #: Sample among the most likely tokens holding this much probability; 1.0 = off.
    top_p: float = 1.0
    #: > 1 discourages tokens already in the sequence (the CTRL rule); 1.0 = off.
    repetition_penalty: float = 1.0
    #: Makes sampling reproducible; null = a fresh random seed per call.
    seed: Optional[int] = None
    #: Strings that end a sequence (not part of the returned text).
    stop: list[str] = field(default_factory=list)
    #: Keep generating past end-of-sequence tokens (benchmarks: a fixed number of tokens).
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> SamplingParams:
        """Raise :class:`GenerationError` naming the first invalid parameter."""

        def bad(name: str, value: object, expected: str) -> GenerationError:
            return GenerationError(f"Invalid sampling parameter {name}={value!r}: expected {expected}.", param=name)

        def number(name: str, value: object, *, integer: bool = False) -> float:
            # bool is an int subclass; `temperature=True` is a mistake, not 1.0.
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise bad(name, value, "an integer" if integer else "a number")
            if isinstance(value, float) and math.isnan(value):
                raise bad(name, value, "a number, not NaN")
            return value

        if number("max_new_tokens", self.max_new_tokens, integer=True) < 1:
            raise bad("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        t = number("temperature", self.temperature)
        if t < 0 or math.isinf(t):
            raise bad("temperature", t, "a finite number >= 0 (0 means greedy decoding)")
        if number("top_k", self.top_k, integer=True) < 0:
            raise bad("top_k", self.top_k, "an integer >= 0 (0 switches top-k off)")
        p = number("top_p", self.top_p)
        if not 0 < p <= 1:
            raise bad("top_p", p, "a number in (0, 1] (1 switches top-p off)")
        r = number("repetition_penalty", self.repetition_penalty)
        if not 0 < r or math.isinf(r):
            raise bad("repetition_penalty", r, "a finite number > 0 (1 switches the penalty off)")
        if self.seed is not None and not 0 <= number("seed", self.seed, integer=True) < 2**64:
            raise bad("seed", self.seed, "an integer in [0, 2**64) (torch's generator takes 64 bits)")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise bad("stop", self.stop, "a list of strings")
        if any(s == "" for s in self.stop):
            raise bad("stop", self.stop, "non-empty strings (an empty stop string would match at once)")
        return self


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL rule (as in Hugging Face): for every token already in the sequence
    (``seen[b, v]`` true), divide a positive logit by ``penalty`` and multiply a negative one,
    so a penalty > 1 always makes a repeat less likely."""
    import torch

    if penalty == 1.0:
        return logits
    # Touch only the seen entries: a full-vocabulary where() costs much more per step.
    rows, cols = seen.nonzero(as_tuple=True)
    values = logits[rows, cols]
    out = logits.clone()
    out[rows, cols] = torch.where(values > 0, values / penalty, values * penalty)
    return out


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (exactly ``k``: ties broken by index)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keep = logits.topk(k, dim=-1).indices
    return logits.new_full(logits.shape, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums
    to at least ``p`` (always at least the most likely token)."""
    import torch

    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Probability mass strictly before each token: a token is needed while that is < p.
    before = probs.cumsum(dim=-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None) -> torch.Tensor:
    """Penalty, temperature, top-k and top-p (in that order) as ``-inf`` masks on ``[B, V]``
    logits: the plain statement of what :func:`sampling_distribution` computes faster."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    return apply_top_p(logits, params.top_p)


#: Candidates first tried for top-p without top-k; widened until they hold mass ``p``.
_NUCLEUS_GUESS = 256


def sampling_distribution(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distribution to sample from, after temperature, top-k and top-p.

    Returns ``(probs, ids)``: ``probs`` ``[B, K]`` (unnormalised where top-p cut it; zeros
    are excluded tokens) over candidate token ids ``ids`` ``[B, K]``, or ``ids=None`` when
    ``probs`` covers the whole vocabulary. Sorting a whole vocabulary costs a sizeable part
    of a decode step on a CPU, so the candidates come from ``topk`` instead: the
    ``top_k`` best, or for top-p alone a few hundred that already hold mass ``p`` (widened
    when they do not), which gives exactly the nucleus of :func:`apply_top_p`.
    """
    logits = logits / params.temperature
    vocab = logits.shape[-1]
    ids = None
    if 0 < params.top_k < vocab:
        logits, ids = logits.topk(params.top_k, dim=-1)  # sorted, best first
    probs = logits.softmax(dim=-1)
    if params.top_p >= 1.0:
        return probs, ids
    if ids is None:
        k = min(_NUCLEUS_GUESS, vocab)
        while True:
            top, ids = probs.topk(k, dim=-1)
            if k == vocab or bool((top.sum(dim=-1) >= params.top_p).all()):
                break
            k = min(k * 8, vocab)
        probs = top
    before = probs.cumsum(dim=-1) - probs
    return probs.masked_fill(before >= params.top_p, 0.0), ids


def has_nan(logits: torch.Tensor) -> bool:
    """Does ``logits`` hold a NaN? (numpy on the CPU: much faster than torch's ``isnan().any()``)."""
    import numpy as np
    import torch

    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        return bool(np.isnan(logits.detach().numpy()).any())
    return bool(logits.isnan().any())


def greedy_pick(logits: torch.Tensor) -> tuple[list[int], bool] | None:
    """Greedy tokens of CPU float logits ``[B, V]`` in one numpy pass, and whether a row held
    a NaN (argmax returns a row's first NaN, so reading the picked entries is enough).

    The decode loop's fast path: right after a quantised step every call is cold (the
    weights have just gone through the CPU caches), and torch's argmax and NaN check cost
    several times numpy's one pass. Returns None where it does not apply (other
    devices or dtypes); :func:`choose_tokens` handles every case.
    """
    try:
        values = logits.numpy()  # a CPU tensor without grad
    except (TypeError, RuntimeError):  # another device, bfloat16, or requires_grad
        return None
    if values.dtype.kind != "f":
        return None
    tokens = values.argmax(axis=-1).tolist()
    return tokens, any(math.isnan(values[row, token]) for row, token in enumerate(tokens))


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Next token id per row (``[B]`` int64) from last-position logits ``[B, V]``."""
    import torch

    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        # numpy's argmax where it can (see greedy_pick); both pick the first maximum and
        # treat NaN as the maximum.
        picked = greedy_pick(logits)
        return logits.argmax(dim=-1) if picked is None else torch.tensor(picked[0], dtype=torch.int64)
    probs, ids = sampling_distribution(logits, params)
    # Inverse-CDF sampling: one uniform draw per row and a binary search; needs no
    # normalisation and is much faster than torch.multinomial over a large vocabulary.
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return choice if ids is None else ids.gather(-1, choice[:, None]).squeeze(-1)
