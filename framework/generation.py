"""Text in, text out: the decode loop (``decode.py``) with a tokenizer, stop strings and
UTF-8-safe streaming, on any Runner.

Three entry points, from low to high level:

* :func:`generate_ids` token ids in, token ids out (benchmarks, tests; no tokenizer);
* :func:`generate` strings in, :class:`GenerationResult` out (stop strings, batching);
* :func:`stream` one string in, an iterator of text deltas out (``.result`` at the end).

:class:`~plugstack.sampling.SamplingParams` is re-exported here for convenience.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from .decode import GenerationResult, Timings, checked_request, decode_loop, drain, generate_ids
from .detokenize import TextAssembler
from .errors import GenerationError
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .backend import Runner
    from .model import Tokenizer

#: ``(row, result)`` for one row of :func:`generate`, as soon as it has ended.
ResultCallback = Callable[[int, GenerationResult], None]

__all__ = ["GenerationResult", "SamplingParams", "TextStream", "Timings", "generate", "generate_ids", "stream"]


# -- text level ----------------------------------------------------------------------------


def _text_loop(
    runner: Runner,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    params: SamplingParams,
    context_length: int | None,
    on_result: ResultCallback | None = None,
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

    def on_finish(row: int, ids: list[int], reason: str) -> None:
        tail = texts[row].flush()
        if tail:
            deltas.append((row, tail))
        if on_result is not None:
            on_result(row, GenerationResult(texts[row].text, list(ids), len(prompts[row]), reason))

    loop = decode_loop(runner, prompts, params, eos_ids=tokenizer.eos_token_ids, context_length=context_length,
                       on_token=on_token, on_finish=on_finish)
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
    on_result: ResultCallback | None = None,
) -> list[GenerationResult]:
    """Generate a completion for each prompt (batched together, each in its own slot).

    Prompts are encoded as given (apply a chat template first for chat models). Generation
    of a row ends at an EOS token of ``tokenizer``, at a stop string (cut from the text),
    after ``params.max_new_tokens`` tokens or at the context window. ``on_result(row,
    result)`` receives each row's result as soon as that row ends (to write it before the
    others finish; its ``timings`` are left empty).
    """
    ids, params, ctx = checked_request(runner, _encode(tokenizer, prompts), params, context_length=context_length,
                                       truncate=truncate)
    return drain(_text_loop(runner, tokenizer, ids, params, ctx, on_result))


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
    ids, params, ctx = checked_request(runner, _encode(tokenizer, [prompt]), params, context_length=context_length,
                                       truncate=truncate)
    return TextStream(_text_loop(runner, tokenizer, ids, params, ctx))
