"""The ``bench`` application: how fast, how big and how hungry a model is on a backend.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports no torch; the application class is imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import BenchAppConfig

__all__ = ["BenchAppConfig", "plugstack_register_apps"]


@hookimpl
def plugstack_register_apps(register):
    register(
        "bench",
        "plugstack.plugins.bench.app:BenchApp",
        config=BenchAppConfig,
        description="Benchmark the model on the backend: load, TTFT, prefill, decode, latency, memory, energy",
    )
