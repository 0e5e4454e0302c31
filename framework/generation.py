"""The decode loop: prompts in, generated tokens and text out, on any Runner.

The loop knows nothing about a model family or a backend. It needs a runner whose step
takes ``input_ids``, ``position_ids`` and ``attention_mask`` and returns last-position
``logits`` ``[B, vocab]`` plus an opaque state (the KV cache), and, for text, a
:class:`plugstack.Tokenizer`.

Batches are left-padded: every row's prompt ends at the same column, so one step feeds one
new token per row. Padding is masked out by ``attention_mask`` and ``position_ids`` count
only real tokens, so a row's result does not depend on its neighbours. Rows that finish
early keep receiving a (masked) pad token until the whole batch is done; their outputs are
ignored. That wastes a little compute but keeps the state opaque to the loop.

Three entry points, from low to high level:

* :func:`generate_ids` token ids in, token ids out (benchmarks, tests; no tokenizer);
* :func:`generate` strings in, :class:`GenerationResult` out (stop strings, batching);
* :func:`stream` one string in, an iterator of text deltas out (``.result`` at the end).

:class:`~plugstack.sampling.SamplingParams` is re-exported here for convenience.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog

from .detokenize import TextAssembler
from .errors import GenerationError
from .sampling import SamplingParams, choose_tokens, greedy_pick, has_nan

if TYPE_CHECKING:
    import torch

    from .backend import Runner
    from .model import Tokenizer

__all__ = ["GenerationResult", "SamplingParams", "TextStream", "Timings", "generate", "generate_ids", "stream"]

log = structlog.get_logger("plugstack.generation")

#: Called with (row, token id) after each chosen token; return True to end that row
#: with finish_reason "stop" (how :func:`generate` applies stop strings).
TokenCallback = Callable[[int, int], bool]


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


# -- token level ---------------------------------------------------------------------------


def _context_length(runner: Runner, explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    value = runner.signature.meta.get("context_length")
    return int(value) if value else None


def _fit_prompts(
    prompt_ids: Sequence[Sequence[int]], max_new: int, context_length: int | None, truncate: bool
) -> list[list[int]]:
    """Check every prompt is non-empty and fits the context window with ``max_new`` tokens
    after it; with ``truncate`` keep the tail of a prompt that does not fit."""
    prompts = [list(p) for p in prompt_ids]
    if not prompts:
        raise GenerationError("No prompts given: pass at least one prompt.")
    for i, p in enumerate(prompts):
        if not p:
            raise GenerationError(
                f"Prompt {i} has no tokens: give a non-empty prompt (an empty string encodes to "
                f"nothing when the tokenizer adds no BOS token)."
            )
    if context_length is None:
        return prompts
    room = context_length - max_new
    if room < 1:
        raise GenerationError(
            f"max_new_tokens={max_new} leaves no room for a prompt in the model's context window "
            f"of {context_length} tokens: lower max_new_tokens below {context_length}."
        )
    for i, p in enumerate(prompts):
        if len(p) <= room:
            continue
        if truncate:
            log.warning("generate.prompt.truncated", prompt=i, tokens=len(p), kept=room)
            prompts[i] = p[-room:]
            continue
        raise GenerationError(
            f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new} that needs "
            f"{len(p) + max_new} positions, but the model's context window is {context_length}. "
            f"Shorten the prompt to at most {room} tokens, lower max_new_tokens, or pass "
            f"truncate=True to keep the last {room} tokens of the prompt."
        )
    return prompts


_threads_lock = threading.Lock()
_threads_users = 0  # loops inside _torch_threads_for now
_threads_saved = 0  # torch's thread count before the first of them came in


@contextlib.contextmanager
def _torch_threads_for(runner: Runner) -> Iterator[None]:
    """Keep torch to one thread while driving a runner whose compute runs outside torch
    (``Runner.uses_torch_threads`` is False, e.g. ONNX Runtime): the loop's light torch work
    would otherwise wake torch's thread pool, whose spinning workers compete with the
    runtime's threads (SmolLM2 int4 on ONNX Runtime: ~130 -> ~180 tok/s). Concurrent loops
    share this: the first one in lowers the count, the last one out restores it."""
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


def _decode_loop(
    runner: Runner,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_ids: Sequence[int],
    context_length: int | None,
    pad_id: int,
    on_token: TokenCallback | None,
) -> Generator[list[tuple[int, int]], None, list[GenerationResult]]:
    """The loop itself. Yields, after each step, the ``(row, token)`` pairs chosen in it,
    and returns the per-row results (``StopIteration.value``)."""
    import torch

    batch = len(prompts)
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    eos = set() if params.ignore_eos else set(eos_ids)

    # Left padding: [pad .. pad, prompt]; positions count real tokens only (0 on padding).
    ids = torch.full((batch, width), pad_id, dtype=torch.int64)
    # The mask grows by a column per step: preallocated, and each step passes a view of it.
    # Columns after the prompt are 1 (a live row's new token) until the row finishes.
    # (Every torch op between steps costs 20-40 us here: the step has just pushed the
    # model's weights through the CPU caches. Hence so few of them per step below.)
    mask_buffer = torch.zeros((batch, width + params.max_new_tokens), dtype=torch.int64)
    mask_buffer[:, width:] = 1
    mask = mask_buffer[:, :width]
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.int64)
        mask[b, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)

    # Which tokens each row already holds, for the repetition penalty (sized on first logits).
    seen = None
    use_penalty = params.repetition_penalty != 1.0

    generated: list[list[int]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    next_pos = list(lengths)

    # A runner that takes numpy step inputs (ONNX Runtime's does) gets them without torch
    # in between steps: each torch call there costs 20-40 us (see above), numpy's less.
    if getattr(runner, "accepts_numpy", False):  # (getattr: duck-typed runners lack it)
        import numpy as np

        feed_mask = mask_buffer.numpy()  # the same memory
        tensor, contiguous = partial(np.array, dtype=np.int64), np.ascontiguousarray
    else:
        feed_mask, tensor, contiguous = mask_buffer, torch.tensor, torch.Tensor.contiguous
    width_now = width

    with _torch_threads_for(runner):
        # Timings count time spent inside the loop only, not in whoever consumes the yields.
        t0 = time.perf_counter()
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask}
        step = runner.run(feeds, runner.new_state(batch))
        t_prefill = t_decode = 0.0
        prefilled = False
        for step_index in itertools.count():
            logits = step.outputs["logits"]
            if logits.dim() == 3:  # a runner that returns every position: keep the last
                logits = logits[:, -1]
            if use_penalty and seen is None:
                seen = _seen_mask(prompts, logits.shape[-1])
            fast = greedy_pick(logits) if params.greedy and seen is None else None
            if fast is not None:
                tokens, nan = fast
            else:
                tokens, nan = None, has_nan(logits)
            if nan:
                # A backend or dtype problem, not a sampling one; say where instead of sampling garbage.
                raise GenerationError(
                    f"The model returned NaN logits at step {step_index} (runner dtype "
                    f"{getattr(runner, 'dtype', '?')}). This is a backend or weights problem: try "
                    f"another backend or dtype (e.g. backend.dtype=fp32) and report it if it persists."
                )
            if tokens is None:
                tokens = choose_tokens(logits, params, generator, seen).tolist()
            chosen = []
            for b, tok in enumerate(tokens):
                if finish[b] is not None:
                    continue
                if tok in eos:
                    finish[b] = "stop"
                else:
                    generated[b].append(tok)
                    chosen.append((b, tok))
                    if seen is not None:
                        seen[b, tok] = True
                    if on_token is not None and on_token(b, tok):
                        finish[b] = "stop"
                    elif len(generated[b]) >= params.max_new_tokens:
                        finish[b] = "length"
                    elif context_length is not None and lengths[b] + len(generated[b]) >= context_length:
                        finish[b] = "length"
                if finish[b] is not None:
                    mask_buffer[b, width_now:] = 0  # the row's later tokens are padding
            elapsed = time.perf_counter() - t0
            if prefilled:
                t_decode += elapsed
            else:
                t_prefill, prefilled = elapsed, True
            if chosen:
                yield chosen
            if all(f is not None for f in finish):
                break
            t0 = time.perf_counter()
            # One new token per row; finished rows get a pad token that nothing attends to.
            live = [finish[b] is None for b in range(batch)]
            new_ids = tensor([[generated[b][-1] if live[b] else pad_id] for b in range(batch)])
            step_pos = tensor([[p] for p in next_pos])
            next_pos = [p + 1 if alive else p for p, alive in zip(next_pos, live, strict=True)]
            width_now += 1
            mask = feed_mask[:, :width_now]
            if batch > 1:
                mask = contiguous(mask)
            step = runner.run({"input_ids": new_ids, "position_ids": step_pos, "attention_mask": mask}, step.state)

        decode_tokens = sum(max(len(g) - 1, 0) for g in generated)
        timings = Timings(
            prefill_s=t_prefill,
            decode_s=t_decode,
            tokens_per_s=decode_tokens / t_decode if t_decode > 0 else 0.0,
        )
        total = sum(len(g) for g in generated)
        log.info(
            "generate.done",
            rows=batch,
            prompt_tokens=sum(lengths),
            tokens=total,
            prefill_ms=round(t_prefill * 1000, 1),
            decode_tok_s=round(timings.tokens_per_s, 1),
        )
        return [GenerationResult("", generated[b], lengths[b], finish[b] or "length", timings) for b in range(batch)]


def _seen_mask(seqs: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """``[B, vocab]`` booleans: which tokens each row already contains (for the penalty)."""
    import torch

    seen = torch.zeros((len(seqs), vocab), dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids = [t for t in s if 0 <= t < vocab]
        if ids:
            seen[b, torch.tensor(ids, dtype=torch.int64)] = True
    return seen


def generate_ids(
    runner: Runner,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    eos_ids: Sequence[int] = (),
    context_length: int | None = None,
    truncate: bool = False,
    pad_id: int = 0,
    on_token: TokenCallback | None = None,
) -> list[GenerationResult]:
    """Generate from token-id prompts (one batch, left-padded). No tokenizer needed.

    ``eos_ids`` end a row (unless ``params.ignore_eos``). ``context_length`` defaults to
    ``runner.signature.meta["context_length"]``; a prompt that does not fit with
    ``max_new_tokens`` after it raises :class:`GenerationError`, or is cut to its tail when
    ``truncate`` is true. ``on_token(row, token)`` may return True to end that row.
    Results have empty ``text``.
    """
    params = (params or SamplingParams()).validate()
    ctx = _context_length(runner, context_length)
    prompts = _fit_prompts(prompt_ids, params.max_new_tokens, ctx, truncate)
    loop = _decode_loop(runner, prompts, params, eos_ids=eos_ids, context_length=ctx, pad_id=pad_id, on_token=on_token)
    while True:
        try:
            next(loop)
        except StopIteration as done:
            return done.value


# -- text level ----------------------------------------------------------------------------


def _text_loop(
    runner: Runner,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams,
    context_length: int | None,
) -> Generator[tuple[int, str], None, list[GenerationResult]]:
    """Run the loop with one :class:`TextAssembler` per row; yield ``(row, delta)`` for
    every non-empty text delta and return the results with their text filled in."""
    texts = [TextAssembler(tokenizer, params.stop) for _ in prompts]
    deltas: list[tuple[int, str]] = []

    def on_token(row: int, token: int) -> bool:
        delta = texts[row].push(token)
        if delta:
            deltas.append((row, delta))
        return texts[row].stopped

    loop = _decode_loop(
        runner,
        prompts,
        params,
        eos_ids=tokenizer.eos_token_ids,
        context_length=context_length,
        pad_id=tokenizer.pad_token_id,
        on_token=on_token,
    )
    while True:
        try:
            next(loop)
        except StopIteration as done:
            results: list[GenerationResult] = done.value
            break
        yield from deltas
        deltas.clear()
    for row, result in enumerate(results):
        tail = texts[row].flush()
        if tail:
            yield row, tail
        result.text = texts[row].text
    return results


def _encode(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    if isinstance(prompts, str):
        raise GenerationError("prompts must be a list of strings, got a single string: wrap it in a list.")
    return [tokenizer.encode(p) for p in prompts]


def generate(
    runner: Runner,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    params: SamplingParams | None = None,
    *,
    truncate: bool = False,
    context_length: int | None = None,
) -> list[GenerationResult]:
    """Generate a completion for each prompt (batched together, left-padded).

    Prompts are encoded as given (apply a chat template first for chat models). Generation
    of a row ends at an EOS token of ``tokenizer``, at a stop string (cut from the text),
    after ``params.max_new_tokens`` tokens or at the context window.
    """
    params = (params or SamplingParams()).validate()
    ctx = _context_length(runner, context_length)
    ids = _fit_prompts(_encode(tokenizer, prompts), params.max_new_tokens, ctx, truncate)
    loop = _text_loop(runner, tokenizer, ids, params, ctx)
    while True:
        try:
            next(loop)
        except StopIteration as done:
            return done.value


class TextStream(Iterator[str]):
    """Iterator of text deltas for one prompt; ``result`` holds the
    :class:`GenerationResult` once the iterator is exhausted (``None`` before).

    Each delta is whole characters (never half of a multi-byte UTF-8 sequence) and never
    part of a stop string; ``"".join(deltas) == result.text``.
    """

    def __init__(self, loop: Generator[tuple[int, str], None, list[GenerationResult]]) -> None:
        self._loop = loop
        self.result: GenerationResult | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        try:
            return next(self._loop)[1]
        except StopIteration as done:
            self.result = done.value[0]
            raise StopIteration from None

    def close(self) -> None:
        """Stop generating early (e.g. the client went away); ``result`` stays ``None``."""
        self._loop.close()


def stream(
    runner: Runner,
    tokenizer: Tokenizer,
    prompt: str,
    params: SamplingParams | None = None,
    *,
    truncate: bool = False,
    context_length: int | None = None,
) -> TextStream:
    """Generate for one prompt, yielding text as it is produced.

    Invalid parameters and prompts that do not fit raise here, before the first token::

        s = stream(runner, tok, "Hello", SamplingParams(max_new_tokens=20))
        for delta in s:
            print(delta, end="", flush=True)
        print(s.result.finish_reason)
    """
    if not isinstance(prompt, str):
        raise GenerationError(f"prompt must be a string, got {type(prompt).__name__}: use generate() for a batch.")
    params = (params or SamplingParams()).validate()
    ctx = _context_length(runner, context_length)
    ids = _fit_prompts(_encode(tokenizer, [prompt]), params.max_new_tokens, ctx, truncate)
    return TextStream(_text_loop(runner, tokenizer, ids, params, ctx))
