"""The token-level decode loop: prompt ids in, generated ids out, on any Runner.

It reads like gpt-fast's ``generate.py``: :func:`prefill` admits one prompt into a slot of
the runner's state, :func:`decode_one_token` steps every live slot by one token, and
:func:`decode_n_tokens` chooses tokens and steps until each row has finished.

The loop knows no model family and no backend. It drives a decoder's step through the
runner's slot API (``plugstack.state``): the step takes ``input_ids [batch, seq]`` (plus
the signature's ``positions`` input when it declares one, filled with each token's index
in its sequence) and returns ``logits`` ``[batch, vocab]`` for the last position (or
``[batch, seq, vocab]``, of which the last is used). Row ``i`` of a batch lives in slot
``i``: no padding, so a row's tokens never depend on the other rows. A row that finishes
releases its slot and is no longer stepped.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from .errors import GenerationError
from .sampling import SamplingParams, choose_tokens, greedy_pick, has_nan

if TYPE_CHECKING:
    import torch

    from .backend import Runner
    from .state import SlotState

__all__ = ["GenerationResult", "Timings", "decode_n_tokens", "decode_one_token", "generate_ids", "prefill"]

log = structlog.get_logger("plugstack.generation")

#: Called with (row, token id) after each chosen token; return True to end that row
#: with finish_reason "stop" (how :func:`plugstack.generate` applies stop strings).
TokenCallback = Callable[[int, int], bool]
#: ``(row, token_ids, finish_reason)`` once a row has ended, before the others have.
FinishCallback = Callable[[int, list[int], str], None]


@dataclass
class Timings:
    """Wall-clock split of one generate call (shared by all rows of a batch)."""

    #: Running the prompt(s) through the model and choosing the first token.
    prefill_s: float = 0.0
    #: Every later step.
    decode_s: float = 0.0
    #: Tokens after the first one, per second of decode (the steady-state speed).
    tokens_per_s: float = 0.0


@dataclass
class GenerationResult:
    """One sequence's outcome.

    ``token_ids`` are the generated ids (without the end-of-sequence token that ended the
    sequence); ``text`` is their decoded text, cut before any stop string (empty from
    :func:`generate_ids`). ``finish_reason`` is ``"stop"`` (EOS or a stop string) or
    ``"length"`` (``max_new_tokens`` or the context window reached).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    timings: Timings = field(default_factory=Timings)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


# -- checks before anything runs -------------------------------------------------------------


def context_window(runner: Runner, explicit: int | None = None) -> tuple[int | None, str]:
    """Positions a sequence may reach, and what sets them (for messages): ``explicit``, else
    the model's ``context_length`` meta, capped by what one slot of the runner holds
    (``Runner.slot_capacity``)."""
    model = explicit if explicit is not None else runner.signature.meta.get("context_length")
    cap = getattr(runner, "slot_capacity", None)  # (getattr: duck-typed runners lack it)
    if cap and (not model or int(cap) < int(model)):
        fix = f"raise backend.max_cache_len, up to {model}" if model else "raise backend.max_cache_len"
        return int(cap), f"what one slot of the runner holds ({cap} positions: {fix})"
    return (int(model) if model else None), "the model's context window"


def checked_request(runner: Runner, prompt_ids: Sequence[Sequence[int]], params: SamplingParams | None, *,
                    context_length: int | None, truncate: bool) -> tuple[list[list[int]], SamplingParams, int | None]:
    """A request as the loop runs it: the prompts fitted to the context window (see
    :func:`fit_prompts`), the validated parameters, and the window."""
    params = (params or SamplingParams()).validate()
    ctx, window = context_window(runner, context_length)
    return fit_prompts(prompt_ids, params.max_new_tokens, ctx, truncate, window), params, ctx


def check_decoder(runner: Runner) -> None:
    """Raise :class:`GenerationError` unless the runner's step is one this loop can drive."""
    sig = runner.signature
    extra = [n for n in sig.feed_inputs if n not in ("input_ids", sig.positions)]
    if "input_ids" not in sig.feed_inputs or "logits" not in sig.output_names or extra:
        raise GenerationError(
            f"the generation loop drives decoders whose step takes input_ids (and optionally the "
            f"signature's positions input) and returns logits; this step takes {sig.feed_inputs} and "
            f"returns {sig.output_names}. Use an application made for this kind of model.")


def fit_prompts(prompt_ids: Sequence[Sequence[int]], max_new: int, ctx: int | None, truncate: bool,
                window: str = "the model's context window", labels: Sequence[str] = (), *,
                max_new_name: str = "max_new_tokens", offer_truncate: bool = True) -> list[list[int]]:
    """Check every prompt is non-empty and fits the context window with ``max_new`` tokens
    after it; with ``truncate`` keep the tail of a prompt that does not fit. ``window``
    names what sets ``ctx`` in messages, ``labels`` each prompt (e.g. ``prompts.txt:3``),
    ``max_new_name`` the caller's name for ``max_new`` (a server's ``max_tokens``);
    ``offer_truncate`` False leaves truncation out of the advice (a caller without it)."""
    prompts = [list(p) for p in prompt_ids]
    if not prompts:
        raise GenerationError("No prompts given: pass at least one prompt.", param="prompt")
    label = (lambda i: labels[i]) if labels else (lambda i: f"Prompt {i}")
    for i, p in enumerate(prompts):
        if not p:
            raise GenerationError(
                f"{label(i)} has no tokens: give a non-empty prompt (an empty string encodes to "
                f"nothing when the tokenizer adds no BOS token).", param="prompt")
    if ctx is None:
        return prompts
    room = ctx - max_new
    if room < 1:
        raise GenerationError(
            f"{max_new_name}={max_new} leaves no room for a prompt in {window} of {ctx} tokens: "
            f"lower {max_new_name} below {ctx}.", param=max_new_name)
    for i, p in enumerate(prompts):
        if len(p) <= room:
            continue
        if not truncate:
            advice = (f", or truncate (app.truncate=true; truncate=True in Python) to keep its last {room} tokens"
                      if offer_truncate else "")
            raise GenerationError(
                f"{label(i)} has {len(p)} tokens; with {max_new_name}={max_new} that needs "
                f"{len(p) + max_new} positions, but {window} is {ctx}. "
                f"Shorten the prompt to at most {room} tokens, lower {max_new_name}{advice}.", param="prompt")
        log.warning("generate.prompt.truncated", prompt=label(i), tokens=len(p), kept=room)
        prompts[i] = p[-room:]
    return prompts


# -- the three steps -------------------------------------------------------------------------


class Feeds:
    """Builds a decoder step's inputs: numpy for runners that take it (``accepts_numpy``;
    a torch call right after a step costs tens of microseconds), torch otherwise."""

    def __init__(self, runner: Runner) -> None:
        self.positions = runner.signature.positions
        if getattr(runner, "accepts_numpy", False):
            import numpy as np

            self._array: Callable[[Any], Any] = lambda rows: np.array(rows, dtype=np.int64)
        else:
            import torch

            self._array = lambda rows: torch.tensor(rows, dtype=torch.int64)

    def __call__(self, tokens: Sequence[Sequence[int]], starts: Sequence[int]) -> dict[str, Any]:
        """Inputs for ``tokens[i]`` appended after ``starts[i]`` positions of row ``i``."""
        feeds = {"input_ids": self._array(tokens)}
        if self.positions:
            spans = [list(range(s, s + len(t))) for t, s in zip(tokens, starts, strict=True)]
            feeds[self.positions] = self._array(spans)
        return feeds

    def one_token(self, tokens: Sequence[int], starts: Sequence[int]) -> dict[str, Any]:
        """Inputs for one new token per row (the decode step: as few calls as possible)."""
        feeds = {"input_ids": self._array([[t] for t in tokens])}
        if self.positions:
            feeds[self.positions] = self._array([[s] for s in starts])
        return feeds


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[rows, vocab]`` logits of each row's last position."""
    return logits[:, -1] if logits.dim() == 3 else logits


def prefill(runner: Runner, state: SlotState, slot: int, prompt: Sequence[int], feeds: Feeds) -> torch.Tensor:
    """Admit ``prompt`` into the free ``slot``; its next-token logits ``[1, vocab]``."""
    out = runner.admit(state, slot, feeds([prompt], [0]))
    return last_logits(out.outputs["logits"])


def decode_one_token(runner: Runner, state: SlotState, slots: list[int], tokens: list[int], feeds: Feeds) -> Any:
    """Append ``tokens[i]`` to slot ``slots[i]``; the next-token logits ``[rows, vocab]``."""
    out = runner.run(feeds.one_token(tokens, [state.lengths[s] for s in slots]), state, slots)
    return last_logits(out.outputs["logits"])


class Rows:
    """Per-row progress of one call: the tokens chosen so far and why each row ended."""

    def __init__(self, prompts: list[list[int]], params: SamplingParams, *, eos_ids: Sequence[int],
                 context_length: int | None, on_token: TokenCallback | None,
                 on_finish: FinishCallback | None = None) -> None:
        import torch

        self.prompts, self.params = prompts, params
        self.eos = set() if params.ignore_eos else set(eos_ids)
        self.context_length, self.on_token, self.on_finish = context_length, on_token, on_finish
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.finish: list[str | None] = [None] * len(prompts)
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        #: Which tokens each row already holds, for the repetition penalty (sized on first use).
        self.seen: torch.Tensor | None = None

    def live(self) -> list[int]:
        return [b for b, f in enumerate(self.finish) if f is None]

    def choose(self, logits: torch.Tensor, rows: list[int], step: int) -> list[int]:
        """The next token of each row in ``rows`` from their logits ``[rows, vocab]``."""
        params = self.params
        if params.repetition_penalty != 1.0 and self.seen is None:
            self.seen = _seen_mask(self.prompts, logits.shape[-1])
        fast = greedy_pick(logits) if params.greedy and self.seen is None else None
        tokens, nan = fast if fast is not None else (None, has_nan(logits))
        if nan:  # a backend or dtype problem, not a sampling one: say where instead of sampling garbage
            raise GenerationError(
                f"The model returned NaN logits at step {step}. This is a backend or weights problem: "
                f"try another backend or dtype (e.g. backend.dtype=fp32) and report it if it persists.")
        if tokens is None:
            seen = None if self.seen is None else self.seen[rows]
            tokens = choose_tokens(logits, params, self.generator, seen).tolist()
        return tokens

    def accept(self, rows: list[int], tokens: list[int]) -> list[tuple[int, int]]:
        """Record each row's token, end rows that are done; the ``(row, token)`` pairs kept."""
        kept = []
        for b, tok in zip(rows, tokens, strict=True):
            if tok in self.eos:
                self.finish[b] = "stop"
                continue
            self.generated[b].append(tok)
            kept.append((b, tok))
            if self.seen is not None:
                self.seen[b, tok] = True
            if self.on_token is not None and self.on_token(b, tok):
                self.finish[b] = "stop"
            elif len(self.generated[b]) >= self.params.max_new_tokens or self._at_context_end(b):
                self.finish[b] = "length"
        return kept

    def _at_context_end(self, b: int) -> bool:
        return self.context_length is not None and len(self.prompts[b]) + len(self.generated[b]) >= self.context_length


def decode_n_tokens(runner: Runner, state: SlotState, rows: Rows, logits: torch.Tensor, feeds: Feeds,
                    clock: Timings) -> Generator[list[tuple[int, int]], None, None]:
    """From the prompts' logits (one row per slot), choose and step until every row has
    ended; yield each step's ``(row, token)`` pairs. Finished rows release their slots.
    ``clock`` accumulates the time spent here (not in whoever consumes the yields)."""
    live = rows.live()
    t0 = time.perf_counter()
    for step in itertools.count():
        kept = rows.accept(live, rows.choose(logits, live, step))
        for b in live:
            if rows.finish[b] is not None:
                runner.release(state, b)
                if rows.on_finish is not None:
                    rows.on_finish(b, rows.generated[b], rows.finish[b])
        live = rows.live()
        elapsed = time.perf_counter() - t0
        if step == 0:
            clock.prefill_s += elapsed
        else:
            clock.decode_s += elapsed
        if kept:
            yield kept
        if not live:
            return
        t0 = time.perf_counter()
        logits = decode_one_token(runner, state, live, [rows.generated[b][-1] for b in live], feeds)


def _seen_mask(seqs: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """``[B, vocab]`` booleans: which tokens each row already contains (for the penalty)."""
    import torch

    seen = torch.zeros((len(seqs), vocab), dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids = [t for t in s if 0 <= t < vocab]
        if ids:
            seen[b, torch.tensor(ids, dtype=torch.int64)] = True
    return seen


# -- the whole loop --------------------------------------------------------------------------

_threads_lock = threading.Lock()
_threads_users = 0  # loops inside torch_threads_for now
_threads_saved = 0  # torch's thread count before the first of them came in


@contextlib.contextmanager
def torch_threads_for(runner: Runner) -> Iterator[None]:
    """Keep torch to one thread while driving a runner whose compute runs outside torch
    (``Runner.uses_torch_threads`` False, e.g. ONNX Runtime): the loop's light torch work
    would otherwise wake torch's thread pool, whose spinning workers compete with the
    runtime's threads. Concurrent loops share this: the first one in lowers the count,
    the last one out restores it."""
    global _threads_users, _threads_saved
    import torch

    if getattr(runner, "uses_torch_threads", True):
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved != 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved != 1:
                torch.set_num_threads(_threads_saved)


def decode_loop(runner: Runner, prompts: list[list[int]], params: SamplingParams, *, eos_ids: Sequence[int],
                context_length: int | None, on_token: TokenCallback | None,
                on_finish: FinishCallback | None = None,
                ) -> Generator[list[tuple[int, int]], None, list[GenerationResult]]:
    """Prefill every prompt into its own slot, then decode; yields each step's
    ``(row, token)`` pairs and returns the per-row results (``StopIteration.value``)."""
    check_decoder(runner)
    rows = Rows(prompts, params, eos_ids=eos_ids, context_length=context_length, on_token=on_token,
                on_finish=on_finish)
    clock = Timings()
    with torch_threads_for(runner):
        t0 = time.perf_counter()
        feeds = Feeds(runner)
        state = runner.new_state(len(prompts))
        first = [prefill(runner, state, b, p, feeds) for b, p in enumerate(prompts)]
        logits = first[0] if len(first) == 1 else _stack(first)
        clock.prefill_s = time.perf_counter() - t0
        yield from decode_n_tokens(runner, state, rows, logits, feeds, clock)
    decoded = sum(max(len(g) - 1, 0) for g in rows.generated)
    clock.tokens_per_s = decoded / clock.decode_s if clock.decode_s > 0 else 0.0
    log.info("generate.done", rows=len(prompts), prompt_tokens=sum(map(len, prompts)),
             tokens=sum(map(len, rows.generated)), prefill_ms=round(clock.prefill_s * 1000, 1),
             decode_tok_s=round(clock.tokens_per_s, 1))
    return [GenerationResult("", g, len(p), f or "length", clock)
            for g, p, f in zip(rows.generated, prompts, rows.finish, strict=True)]


def _stack(logits: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.cat(logits, dim=0)


def generate_ids(
    runner: Runner,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    eos_ids: Sequence[int] = (),
    context_length: int | None = None,
    truncate: bool = False,
    on_token: TokenCallback | None = None,
) -> list[GenerationResult]:
    """Generate from token-id prompts, each in its own slot of one state. No tokenizer needed.

    ``eos_ids`` end a row (unless ``params.ignore_eos``). ``context_length`` defaults to
    the model's (``signature.meta["context_length"]``, capped by the runner's slots); a
    prompt that does not fit with ``max_new_tokens`` after it raises
    :class:`GenerationError`, or is cut to its tail when ``truncate`` is true.
    ``on_token(row, token)`` may return True to end that row. Results have empty ``text``.
    """
    prompts, params, ctx = checked_request(runner, prompt_ids, params, context_length=context_length,
                                           truncate=truncate)
    loop = decode_loop(runner, prompts, params, eos_ids=eos_ids, context_length=ctx, on_token=on_token)
    return drain(loop)


def drain(loop: Generator[Any, None, Any]) -> Any:
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(loop)
        except StopIteration as done:
            return done.value
