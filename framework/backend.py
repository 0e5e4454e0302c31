"""The chip-layer interface: a Backend probes its hardware and prepares Runners.

A Runner executes one model's step signature; applications and the generation loop talk
to Runners only, never to a backend's library (torch, ONNX Runtime, ...) directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from .model import Model
    from .signature import StepSignature

__all__ = ["Availability", "Backend", "DeviceInfo", "Runner", "StepOutput"]


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
    """Outputs of one step by name, plus the opaque state to pass to the next step."""

    outputs: dict[str, torch.Tensor]
    state: Any = None


class Runner(ABC):
    """Runs one model's step signature on one backend. Owns its state (KV-cache) buffers."""

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
    #: numpy between steps and skips the torch calls, which cost 20-40 us each right after
    #: a step has pushed the weights through the CPU caches.
    accepts_numpy: bool = False

    @abstractmethod
    def new_state(self, batch_size: int) -> Any:
        """Empty state for ``batch_size`` sequences (e.g. a zero-length KV cache)."""

    @abstractmethod
    def run(self, inputs: Mapping[str, torch.Tensor], state: Any = None) -> StepOutput:
        """Run one step on the non-state inputs; ``state`` comes from ``new_state`` or the
        previous ``run``. Returns outputs on the CPU as torch tensors, and the next state.

        A runner may update ``state`` in place (preallocated KV buffers): always continue
        with the returned state and never reuse one already passed to ``run``."""

    def state_length(self, state: Any) -> int:
        """How many positions ``state`` holds along the signature's ``state_axis``."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release sessions, device memory, threads. Safe to call twice."""


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
