"""Continuous batching: many requests decoded together on one Runner, joining and leaving
the running batch between decode steps.

One engine thread owns one slot state of ``max_batch`` slots. Each turn of its loop:

1. :meth:`Engine._retire` releases the slots of cancelled requests;
2. :meth:`Engine._admit` prefills waiting requests into free slots (``runner.admit``,
   while the other slots keep their caches) and chooses each one's first token;
3. :meth:`Engine._step` runs ONE ``runner.run`` over every live slot and chooses each
   row's next token with that request's own :class:`~plugstack.sampling.SamplingParams`
   (its own ``torch.Generator``), then feeds it to that request's ``TextAssembler``.

It drives the step contract of :mod:`plugstack.decode` with its pieces (``Feeds``,
``prefill``, ``decode_one_token``, ``Rows``): a slot holds exactly its own positions, so
a request gets the tokens it would get alone (greedy). Consumers receive :class:`Delta`
s thread-safely, through their own ``emit`` callback (an asyncio server passes one that
calls ``loop.call_soon_threadsafe``) or from :meth:`Request.deltas`::

    with Engine(runner, tokenizer, max_batch=8) as engine:
        request = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_new_tokens=20))
        text, last = request.wait()            # last.finish_reason: "stop" | "length"
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from .decode import (
    Feeds,
    Rows,
    check_decoder,
    context_window,
    decode_one_token,
    fit_prompts,
    prefill,
    torch_threads_for,
)
from .detokenize import TextAssembler
from .errors import EngineClosedError, GenerationError, QueueFullError
from .sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from .backend import Runner
    from .model import Tokenizer

__all__ = ["Delta", "Engine", "Request"]

log = structlog.get_logger("plugstack.engine")
_stdlib_log = logging.getLogger("plugstack.engine")  # to skip building a DEBUG line per step when it is off

#: Ends of a request besides the decode loop's "stop" and "length".
CANCELLED, ERROR = "cancelled", "error"


@dataclass(frozen=True)
class Delta:
    """The next piece of one request's output. The last one has ``finish_reason`` set:
    ``"stop"`` (EOS or a stop string), ``"length"``, ``"cancelled"`` or ``"error"``
    (``error`` then says why)."""

    text: str
    prompt_tokens: int
    #: Tokens generated so far (an EOS that ended the request is not counted).
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


class Request:
    """A submitted request as its submitter sees it: its deltas, and a way to cancel it."""

    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams,
                 emit: Callable[[Delta], None] | None, wake: Callable[[], None]) -> None:
        self.id, self.prompt, self.params = request_id, prompt, params
        self._queue: queue.Queue[Delta] | None = None if emit else queue.Queue()
        self.emit: Callable[[Delta], None] = emit or self._queue.put  # type: ignore[union-attr]
        self._wake = wake
        self.cancel_reason: str | None = None
        self.submitted = time.perf_counter()
        #: The largest batch this request was stepped in (1 = alone).
        self.max_batch = 0

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def cancel(self, reason: str = "cancelled by the client") -> None:
        """Stop generating; the slot is released before the engine's next step."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._wake()

    def deltas(self, timeout: float | None = None) -> Iterator[Delta]:
        """The deltas as they come, up to the last one (only without an ``emit`` callback)."""
        if self._queue is None:
            raise GenerationError("this request's deltas go to its emit callback, not to deltas()")
        while True:
            delta = self._queue.get(timeout=timeout)
            yield delta
            if delta.finish_reason is not None:
                return

    def wait(self, timeout: float | None = None) -> tuple[str, Delta]:
        """The whole text and the last delta."""
        parts = list(self.deltas(timeout))
        return "".join(d.text for d in parts), parts[-1]


class _Sequence:
    """A request in a slot: its one-row decode progress (``Rows``) and its text."""

    def __init__(self, request: Request, slot: int, tokenizer: Tokenizer, context_length: int | None) -> None:
        self.request, self.slot, self.steps = request, slot, 0
        self.text = TextAssembler(tokenizer, request.params.stop)
        self.pending = ""  # text released since the last delta
        self.rows = Rows([request.prompt], request.params, eos_ids=tokenizer.eos_token_ids,
                         context_length=context_length, on_token=self._on_token)

    def _on_token(self, row: int, token: int) -> bool:
        self.pending += self.text.push(token)
        return self.text.stopped  # a complete stop string ends the request with "stop"

    @property
    def finish(self) -> str | None:
        return self.rows.finish[0]

    @property
    def last_token(self) -> int:
        return self.rows.generated[0][-1]

    def delta(self, finish: str | None = None, error: str | None = None) -> Delta:
        text, self.pending = self.pending, ""
        return Delta(text, len(self.request.prompt), len(self.rows.generated[0]), finish, error)


class Engine:
    """Decodes up to ``max_batch`` requests together on ``runner``, admitting waiting ones
    (at most ``max_queue``) into slots as others finish. Thread-safe: call :meth:`submit`
    from any thread; the decoding happens on the engine's own thread (:meth:`start`)."""

    def __init__(self, runner: Runner, tokenizer: Tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 max_tokens_limit: int | None = None, context_length: int | None = None) -> None:
        check_decoder(runner)
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenerationError(f"{name}={value!r} is invalid: expected an integer >= 1.", param=name)
        self.runner, self.tokenizer = runner, tokenizer
        self.max_batch, self.max_queue, self.max_tokens_limit = max_batch, max_queue, max_tokens_limit
        self.context_length, self.window = context_window(runner, context_length)
        self._state = runner.new_state(max_batch)
        self._feeds = Feeds(runner)
        self._live: dict[int, _Sequence] = {}  # by slot, in admission order
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed: str | None = None  # why submit refuses, once it does
        self._stopping = False
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    # -- the submitter's side ----------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               emit: Callable[[Delta], None] | None = None, request_id: str | None = None,
               max_new_name: str = "max_new_tokens") -> Request:
        """Queue one request after checking it (raises :class:`GenerationError`; a full
        queue :class:`QueueFullError`, a closed engine :class:`EngineClosedError`).
        ``emit(delta)`` is called on the engine thread: it must not block. ``max_new_name``
        is the caller's name for ``max_new_tokens`` in messages (a server's ``max_tokens``)."""
        params = (params or SamplingParams()).validate()
        limit = self.max_tokens_limit
        if limit is not None and params.max_new_tokens > limit:
            raise GenerationError(f"{max_new_name}={params.max_new_tokens} is more than the {limit} tokens a "
                                  f"request may ask for here: lower {max_new_name}.", param=max_new_name)
        [prompt] = fit_prompts([prompt_ids], params.max_new_tokens, self.context_length, False, self.window,
                               ["The prompt"], max_new_name=max_new_name, offer_truncate=False)
        with self._cond:
            if self._closed is not None:
                raise EngineClosedError(self._closed)
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (the most this engine "
                                     f"queues: {self.max_queue}) for {self.max_batch} slots: retry later.")
            request = Request(request_id or f"req-{next(self._ids)}", prompt, params, emit, self._notify)
            self._waiting.append(request)
            self._cond.notify()
        return request

    def room(self, prompt_tokens: int) -> int | None:
        """Tokens a prompt of that length leaves in the context window (``None``: no bound)."""
        return None if self.context_length is None else self.context_length - prompt_tokens

    def counts(self) -> dict[str, int]:
        """``running`` (in a slot), ``waiting`` (queued) and ``max_batch``."""
        with self._cond:
            return {"running": len(self._live), "waiting": len(self._waiting), "max_batch": self.max_batch}

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the engine thread (it keeps the caller's structlog context: run_id...)."""
        if self._thread is None:
            run = contextvars.copy_context().run
            self._thread = threading.Thread(target=run, args=(self._run,), name="plugstack-engine", daemon=True)
            self._thread.start()
        return self

    def close_intake(self, reason: str = "the engine is shutting down") -> None:
        """Refuse new requests from now on (:class:`EngineClosedError`); cancel the waiting ones."""
        with self._cond:
            self._closed = self._closed or reason
            for request in self._waiting:
                request.cancel(reason)
            self._cond.notify()

    def cancel_all(self, reason: str) -> None:
        """Cancel every request, running or waiting."""
        with self._cond:
            for request in [*(s.request for s in self._live.values()), *self._waiting]:
                request.cancel(reason)
            self._cond.notify()

    def stop(self, reason: str = "the engine stopped", timeout: float | None = None) -> None:
        """Cancel everything, refuse new requests and end the thread. Safe to call twice."""
        self.close_intake(reason)
        self.cancel_all(reason)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the engine thread -------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Run one token through every slot before the first request: a runner's first step on
        a slot can cost far more than the next ones (ONNX Runtime int4: ~0.25 s per slot),
        and that would land on the first requests' time to first token."""
        t0 = time.perf_counter()
        for slot in range(self.max_batch):
            prefill(self.runner, self._state, slot, [0], self._feeds)  # id 0: in every vocabulary
            self.runner.release(self._state, slot)
        log.info("engine.warmed", slots=self.max_batch, seconds=round(time.perf_counter() - t0, 3))

    def _run(self) -> None:
        try:
            with torch_threads_for(self.runner):
                self._warm_up()
                while self._turn():
                    pass
        except BaseException as exc:  # a bug: say so on every request instead of hanging them
            log.exception("engine.crashed")
            with self._cond:
                self._closed = f"the engine stopped after an internal error: {exc!r}"
            self._fail_all(self._closed)
            return
        self._fail_all(self._closed or "the engine stopped")

    def _turn(self) -> bool:
        """One turn: retire, admit, step. False once stopping."""
        arrivals = self._arrivals()
        if arrivals is None:
            return False
        self._retire()
        for request in arrivals:
            self._admit(request)
        if self._live:
            self._step()
        return True

    def _arrivals(self) -> list[Request] | None:
        """Waiting requests for the free slots (waits while there is nothing to do); None to stop."""
        with self._cond:
            while not self._stopping and not self._live and not self._waiting:
                self._cond.wait()
            if self._stopping:
                return None
            taken, kept, free = [], deque(), self.max_batch - len(self._live)
            for request in self._waiting:  # cancelled ones leave the queue at once, slot or not
                if request.cancelled or free > 0:
                    taken.append(request)
                    free -= not request.cancelled
                else:
                    kept.append(request)
            self._waiting = kept
            return taken

    def _retire(self) -> None:
        """Release the slots of cancelled requests before the next step."""
        for seq in [s for s in self._live.values() if s.request.cancelled]:
            self._finish(seq, CANCELLED, seq.request.cancel_reason)

    def _admit(self, request: Request) -> None:
        """Prefill ``request`` into a free slot and choose its first token."""
        if request.cancelled:
            self._send(request, Delta("", len(request.prompt), 0, CANCELLED, request.cancel_reason))
            return
        slot = self._state.free_slot()
        assert slot is not None  # _arrivals takes no more requests than there are free slots
        seq = _Sequence(request, slot, self.tokenizer, self.context_length)
        running = len(self._live)
        with self._cond:
            self._live[slot] = seq
        if running:
            log.info("engine.join", request_id=request.id, slot=slot, running=running,
                     prompt_tokens=len(request.prompt))
        try:
            logits = prefill(self.runner, self._state, slot, request.prompt, self._feeds)
        except Exception as exc:  # the runner failed on this prompt: only this request ends
            log.exception("engine.prefill_failed", request_id=request.id)
            self._finish(seq, ERROR, f"the backend failed on this prompt: {exc}")
            return
        self._advance(seq, logits, 1)

    def _step(self) -> None:
        """One batched decode step of every live slot, each row sampled its own way."""
        seqs = list(self._live.values())
        slots = [s.slot for s in seqs]
        if _stdlib_log.isEnabledFor(logging.DEBUG):
            log.debug("engine.step", batch=len(seqs))
        try:
            logits = decode_one_token(self.runner, self._state, slots, [s.last_token for s in seqs], self._feeds)
        except Exception as exc:  # the step of all of them failed: each ends with the error
            log.exception("engine.step_failed", batch=len(seqs))
            for seq in seqs:
                self._finish(seq, ERROR, f"the backend failed on a decode step: {exc}")
            return
        for i, seq in enumerate(seqs):
            self._advance(seq, logits[i : i + 1], len(seqs))  # [1, vocab]: this row's logits

    def _advance(self, seq: _Sequence, logits: torch.Tensor, batch: int) -> None:
        """Choose ``seq``'s next token from its logits ``[1, vocab]`` and send the text."""
        seq.request.max_batch = max(seq.request.max_batch, batch)
        try:
            seq.rows.accept([0], seq.rows.choose(logits, [0], seq.steps))
        except GenerationError as exc:  # NaN logits: this request cannot go on
            self._finish(seq, ERROR, str(exc))
            return
        seq.steps += 1
        if seq.finish is not None:
            self._finish(seq, seq.finish)
        elif seq.pending and not self._send(seq.request, seq.delta()):
            self._finish(seq, CANCELLED, "the consumer went away")

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        """Release ``seq``'s slot and send its last delta (the held-back text with it)."""
        self.runner.release(self._state, seq.slot)
        with self._cond:
            self._live.pop(seq.slot, None)
        if reason in ("stop", "length"):
            seq.pending += seq.text.flush()
        request = seq.request
        self._send(request, seq.delta(reason, error))
        log.info("engine.done", request_id=request.id, finish_reason=reason, prompt_tokens=len(request.prompt),
                 completion_tokens=len(seq.rows.generated[0]), max_batch=request.max_batch,
                 seconds=round(time.perf_counter() - request.submitted, 3), **({"error": error} if error else {}))

    def _send(self, request: Request, delta: Delta) -> bool:
        """Hand ``delta`` to the request's consumer; False if the consumer is gone."""
        try:
            request.emit(delta)
        except Exception:  # e.g. the server's event loop has closed
            request.cancel("the consumer went away")
            return False
        return True

    def _fail_all(self, reason: str) -> None:
        """End every remaining request (the thread is stopping)."""
        for seq in list(self._live.values()):
            self._finish(seq, CANCELLED, reason)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            self._send(request, Delta("", len(request.prompt), 0, CANCELLED, request.cancel_reason or reason))
