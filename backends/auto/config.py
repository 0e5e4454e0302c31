"""Options of the ``auto`` backend (the ``backend=auto`` config group). Light module."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Fastest first: a GPU if there is one, then ONNX Runtime (faster than eager torch on
#: CPUs, see the notes), then eager PyTorch on the CPU, which runs everywhere.
DEFAULT_ORDER = ["cuda", "onnx", "cpu"]
#: Environment variable naming the one backend ``auto`` must use (wins over ``order``).
ENV_VAR = "PLUGSTACK_BACKEND"


@dataclass
class AutoBackendConfig:
    """The first available backend of ``order``, with its default options (``backend=auto``)."""

    name: str = "auto"
    #: Backends to try, in order; the environment variable PLUGSTACK_BACKEND=<name> wins over it.
    order: list[str] = field(default_factory=lambda: list(DEFAULT_ORDER))
