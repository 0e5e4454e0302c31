"""The plugin module named by this package's ``plugstack`` entry point.

Light by design: it imports only the plugstack API and dataclasses; the backend and the
app live in their own modules, named as strings, and load when a run uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import plugstack


@dataclass
class PinnedCpuConfig:
    """The options of ``backend=pinned-cpu``: one source of truth, no YAML needed."""

    name: str = "pinned-cpu"
    #: CPU cores to pin the process to (empty: all); torch uses one thread per core.
    cores: list[int] = field(default_factory=list)
    #: Compute dtype: fp32 | bf16.
    dtype: str = "fp32"


@dataclass
class BigramConfig:
    """The options of ``model=bigram``."""

    name: str = "bigram"
    #: Text file to count byte pairs from; null = the package's own sample text.
    corpus: Optional[str] = None
    #: Added to every pair's count, so pairs the text never shows keep some probability.
    smoothing: float = 0.0001
    #: A model.safetensors that `app=train` wrote for this model; null = count the corpus.
    weights: Optional[str] = None


@dataclass
class DescribeConfig:
    """The options of ``app=describe``."""

    name: str = "describe"
    #: Also time one real step of the model on the backend.
    run_step: bool = True


@plugstack.hookimpl
def plugstack_register_backends(register: plugstack.Register) -> None:
    register("pinned-cpu", "plugstack_example.backend:PinnedCpuBackend", config=PinnedCpuConfig,
             description="PyTorch eager on pinned CPU cores, with per-step timing")


@plugstack.hookimpl
def plugstack_register_models(register: plugstack.Register) -> None:
    register("bigram", "plugstack_example.bigram:load", config=BigramConfig,
             description="a byte-level bigram language model counted from a text file")


@plugstack.hookimpl
def plugstack_register_apps(register: plugstack.Register) -> None:
    register("describe", "plugstack_example.describe:DescribeApp", config=DescribeConfig,
             description="print the model, its step signature and device; time one step")


@plugstack.hookimpl
def plugstack_config_searchpath() -> str:
    # Presets beyond the defaults, e.g. backend=pinned-cpu-bf16.
    return "pkg://plugstack_example.conf"
