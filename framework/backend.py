"""The chip-layer interface: a Backend probes its hardware and prepares Runners.

A Runner executes one model's step signature over slot-addressed state (``state.py``);
applications and the generation loop talk to Runners only, never to a backend's library
(torch, ONNX Runtime, ...) directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import GenerationError
from .signature import BATCH

if TYPE_CHECKING:
    import torch

    from .meters import EnergyMeter
    from .model import Model
    from .signature import StepSignature
    from .state import SlotState

__all__ = ["Availability", "Backend", "DeviceInfo", "Runner", "RunnerWrapper", "StepOutput"]


@dataclass
class DeviceInfo:
    """What a backend would run on (shown by ``plugstack backends``)."""

    name: str
    #: Total memory in bytes, ``None`` where unknown.
    memory_bytes: int | None = None
    threads: int | None = None
    dtypes: tuple[str, ...] = ()
    #: Extra facts: execution providers, compute capability, library versions...
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Availability:
    """Whether a backend can run here and, if not, why (said so a user can act on it)."""

    available: bool
    reason: str = ""
    device: DeviceInfo | None = None

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@dataclass
class StepOutput:
    """Outputs of one step by name (one row per stepped slot, in the order asked), and the
    state they were written to (the same object that was passed in)."""

    outputs: dict[str, torch.Tensor]
    state: Any = None


class Runner(ABC):
    """Runs one model's step signature on one backend, over slot-addressed state.

    A runner implements :meth:`new_state` and :meth:`step`; :meth:`run` (and its readable
    forms :meth:`admit` and :meth:`release`) checks the request, splits it where the
    runner cannot step the rows together, and keeps the slots' lengths::

        state = runner.new_state(4)                      # 4 free slots
        runner.admit(state, 0, prompt_a)                 # prefill one sequence into slot 0
        runner.admit(state, 2, prompt_b)                 # ... slot 0 keeps its cache
        out = runner.run(next_tokens, state, slots=[0, 2])  # one step of both
        runner.release(state, 0)                         # slot 0 is free again
    """

    signature: StepSignature
    #: dtype name the runner computes in ("fp32", "bf16", ...).
    dtype: str = "fp32"
    #: Whether the model's compute runs on torch's CPU thread pool. A runner whose compute
    #: runs elsewhere (ONNX Runtime) sets this False; the generation loop then keeps torch
    #: to one thread while it drives the runner, so torch's idle OpenMP workers do not spin
    #: on the cores the runtime needs between its steps.
    uses_torch_threads: bool = True
    #: Whether ``run`` also takes numpy int64 arrays as the step inputs (a runner that
    #: converts them to numpy anyway, like ONNX Runtime's). The generation loop then feeds
    #: numpy between steps and skips torch calls, which are slow right after a step has
    #: pushed the weights through the CPU caches.
    accepts_numpy: bool = False
    #: Positions one slot can hold, where the runner bounds them (preallocated buffers);
    #: ``None``: only the model's context length bounds them.
    slot_capacity: int | None = None

    @abstractmethod
    def new_state(self, slots: int) -> SlotState:
        """A state of ``slots`` free slots (a subclass of :class:`plugstack.SlotState`)."""

    @abstractmethod
    def step(self, inputs: Mapping[str, Any], state: Any, rows: list[int], new: int) -> dict[str, Any]:
        """Compute one step of the slots ``rows`` (row ``i`` of ``inputs`` goes to slot
        ``rows[i]``), each getting ``new`` positions; update their storage in ``state`` and
        return the non-state outputs (CPU tensors, rows in ``rows`` order). Called by
        :meth:`run`, which has checked the request and updates the lengths afterwards."""

    def steps_together(self, state: SlotState, rows: list[int], new: int) -> bool:
        """Can one :meth:`step` serve ``rows``? Otherwise :meth:`run` steps them one by one.
        By default rows of different lengths need a signature ``mask`` to hide padding."""
        sig = self.signature
        if len(rows) < 2 or sig.state_kind != "growing" or sig.mask is not None:
            return True
        return len({state.lengths[s] for s in rows}) == 1

    def run(self, inputs: Mapping[str, Any], state: SlotState | None = None,
            slots: Sequence[int] | None = None) -> StepOutput:
        """Append one step's inputs to the slots ``slots`` (default: every slot of ``state``,
        in order; ``state=None``: a fresh state with one slot per row). A free slot becomes
        live: running a prompt on it admits the sequence. Returns the step's outputs."""
        sig = self.signature
        missing = [n for n in sig.feed_inputs if n not in inputs]
        if missing or (sig.mask is not None and sig.mask in inputs):
            raise GenerationError(_bad_inputs(sig, inputs, missing))
        if not all(hasattr(inputs[n], "shape") for n in sig.feed_inputs):
            raise GenerationError(f"step inputs must be arrays (torch tensors or numpy), got "
                                  f"{ {n: type(inputs[n]).__name__ for n in sig.feed_inputs} }")
        count = sig.rows(inputs)
        if state is None:
            state = self.new_state(count)
        rows = state.rows(slots, count)
        new = sig.new_positions(inputs)
        state.check_room(rows, new)
        if not self.steps_together(state, rows, new):
            return StepOutput(self._row_by_row(inputs, state, rows, new), state)
        outputs = self.step(inputs, state, rows, new)
        state.advance(rows, new)
        return StepOutput(outputs, state)

    def _row_by_row(self, inputs: Mapping[str, Any], state: Any, rows: list[int], new: int) -> dict[str, Any]:
        import torch

        parts = []
        for i, s in enumerate(rows):  # each row's length moves with its own step, even if a later one fails
            parts.append(self.step(_row(self.signature, inputs, i), state, [s], new))
            state.advance([s], new)
        axes = {name: self.signature.spec(name).axis(BATCH) or 0 for name in parts[0]}
        return {name: torch.cat([p[name] for p in parts], dim=axes[name]) for name in parts[0]}

    def admit(self, state: SlotState, slot: int, inputs: Mapping[str, Any]) -> StepOutput:
        """Prefill one sequence (``inputs`` of one row) into the free slot ``slot``."""
        if 0 <= slot < state.size and state.live[slot]:
            raise GenerationError(f"slot {slot} already holds a sequence: release it first, or admit into "
                                  f"a free slot (state.free_slot() gives one)")
        return self.run(inputs, state, [slot])

    def release(self, state: SlotState, slot: int) -> None:
        """Free ``slot`` for reuse; its positions are never seen again."""
        state.release(slot)

    def state_length(self, state: SlotState, slot: int = 0) -> int:
        """How many positions ``slot`` holds (steps taken, for a signature without ``new_axis``)."""
        return state.length(slot)

    def preparation(self) -> dict[str, Any]:
        """How ``Backend.prepare`` made this runner, for benchmarks and logs: e.g. whether a
        compiled graph came from a cache, and the seconds its build took. Empty by default."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release sessions, device memory, threads. Safe to call twice."""


class RunnerWrapper(Runner):
    """A Runner that forwards everything to ``inner``, capability flags included: subclass
    it and override only what you add (timing, logging, tracing)::

        class TimedRunner(plugstack.RunnerWrapper):
            def run(self, inputs, state=None, slots=None):
                start = time.perf_counter()
                try:
                    return super().run(inputs, state, slots)
                finally:
                    self.seconds += time.perf_counter() - start
    """

    def __init__(self, inner: Runner) -> None:
        self.inner = inner

    signature = property(lambda self: self.inner.signature)  # type: ignore[assignment]
    dtype = property(lambda self: self.inner.dtype)  # type: ignore[assignment]
    uses_torch_threads = property(lambda self: getattr(self.inner, "uses_torch_threads", True))  # type: ignore[assignment]
    accepts_numpy = property(lambda self: getattr(self.inner, "accepts_numpy", False))  # type: ignore[assignment]
    slot_capacity = property(lambda self: getattr(self.inner, "slot_capacity", None))  # type: ignore[assignment]

    def new_state(self, slots: int) -> SlotState:
        return self.inner.new_state(slots)

    def step(self, inputs: Mapping[str, Any], state: Any, rows: list[int], new: int) -> dict[str, Any]:
        return self.inner.step(inputs, state, rows, new)

    def steps_together(self, state: SlotState, rows: list[int], new: int) -> bool:
        return self.inner.steps_together(state, rows, new)

    def release(self, state: SlotState, slot: int) -> None:
        self.inner.release(state, slot)

    def state_length(self, state: SlotState, slot: int = 0) -> int:
        return self.inner.state_length(state, slot)

    def preparation(self) -> dict[str, Any]:
        return self.inner.preparation()

    def close(self) -> None:
        self.inner.close()


def _bad_inputs(sig: StepSignature, inputs: Mapping[str, Any], missing: list[str]) -> str:
    if missing:
        return f"missing step input(s) {missing}: this step takes {sig.feed_inputs} (got {sorted(inputs)})"
    return (f"{sig.mask!r} is filled in by the runner from each slot's length: leave it out of the step "
            f"inputs, which are {sig.feed_inputs}")


def _row(signature: StepSignature, inputs: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` of every batched feed input (keeping the batch dimension)."""
    out = {}
    for name, value in inputs.items():
        axis = signature.spec(name).axis(BATCH) if name in signature.input_names else None
        out[name] = value if axis is None else value[(slice(None),) * axis + (slice(i, i + 1),)]
    return out


class Backend(ABC):
    """A chip-layer plugin. Subclasses are registered with ``register_backend``.

    Construction must be cheap and must not import heavy libraries: ``probe`` and
    ``prepare`` do that, when the backend is actually used.
    """

    #: What this backend can do: "inference", "training", "batch", "quantize:int8", ...
    capabilities: ClassVar[frozenset[str]] = frozenset({"inference"})

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    @abstractmethod
    def probe(self) -> Availability:
        """Is the hardware/library there? Never raises; says why not."""

    @abstractmethod
    def prepare(self, model: Model) -> Runner:
        """Turn ``model`` into a Runner for this backend (may export, compile, quantise)."""

    def training_device(self) -> str:
        """The torch device ``app=train`` trains on with this backend (``"cpu"``,
        ``"cuda:0"``). Backends without the ``"training"`` capability refuse, saying so."""
        from .errors import UnsupportedOptionError

        caps = ", ".join(sorted(self.capabilities))
        raise UnsupportedOptionError(
            f"backend {type(self).__name__} only runs inference (capabilities: {caps}); "
            f"train with backend=cpu or backend=cuda, then run the trained model on any backend.")

    def runs_as(self) -> str | None:
        """The name of the backend that runs the steps, when it is not this one (a backend
        that delegates, like ``auto``, names its choice); logs and ``run.json`` show it."""
        return None

    # -- what a benchmark asks (``app=bench``); the defaults suit backends that run in host memory

    def reset_peak_memory(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start a new peak for :meth:`peak_memory` (called before ``prepare``)."""

    def peak_memory(self) -> int | None:
        """Most bytes the device's own allocator held since :meth:`reset_peak_memory`;
        ``None`` where the backend's memory is the process's (measured as its RSS)."""
        return None

    def energy_meter(self) -> EnergyMeter | None:
        """A :class:`plugstack.meters.EnergyMeter` of the device the steps run on, where it
        has its own counter (a GPU's); ``None``: the CPU's (RAPL, where readable) applies."""
        return None
