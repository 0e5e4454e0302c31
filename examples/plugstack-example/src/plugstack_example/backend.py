"""``pinned-cpu``: the built-in ``cpu`` backend, pinned to chosen cores, its runner instrumented."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import structlog

import plugstack
from plugstack import Availability, DeviceInfo, Runner, StepOutput, UnsupportedOptionError

log = structlog.get_logger("plugstack_example.backend")


class TimedRunner(plugstack.RunnerWrapper):
    """Wraps any runner (forwarding its capability flags); counts steps and their time."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner)
        self.steps, self.seconds = 0, 0.0

    def run(self, inputs: Mapping[str, Any], state: Any = None, slots: Any = None) -> StepOutput:
        start = time.perf_counter()
        try:
            return super().run(inputs, state, slots)
        finally:
            self.steps += 1
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        if self.steps >= 0:
            log.info("pinned_cpu.stats", steps=self.steps, seconds=round(self.seconds, 4))
            self.steps = -1  # closed: log once
            super().close()


class PinnedCpuBackend(plugstack.Backend):
    capabilities = frozenset({"inference", "batch", "dtype:bf16"})

    def _cores(self) -> list[int]:
        cores = list(self.cfg.cores) if self.cfg is not None else []
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        bad = [c for c in cores if allowed and c not in allowed]
        if bad:
            raise UnsupportedOptionError(
                f"backend.cores has cores {bad} that this process cannot use; allowed cores: {allowed}"
            )
        return cores or allowed

    def probe(self) -> Availability:
        if not hasattr(os, "sched_setaffinity"):
            return Availability.no("this OS does not support pinning threads to cores")
        try:
            cores = self._cores()
        except UnsupportedOptionError as exc:
            return Availability.no(str(exc))
        return Availability(True, device=DeviceInfo(name=f"cpu cores {cores}", threads=len(cores),
                                                    dtypes=("fp32", "bf16")))

    def prepare(self, model: plugstack.Model) -> Runner:
        dtype = self.cfg.dtype if self.cfg is not None else "fp32"
        if dtype not in ("fp32", "bf16"):
            raise UnsupportedOptionError(f"backend.dtype={dtype!r} is not supported by pinned-cpu; use fp32 or bf16")
        cores = self._cores()
        os.sched_setaffinity(0, cores)
        log.info("pinned_cpu.pinned", cores=cores, threads=len(cores))
        # The built-in cpu backend does the rest (one torch thread per core, a bf16 copy):
        # built by name like any registered backend, and its runner wrapped.
        inner = plugstack.create_backend("cpu", threads=len(cores), dtype=dtype)
        return TimedRunner(inner.prepare(model))
