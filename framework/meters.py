"""What a benchmark reads from the machine: peak memory, energy, and the environment.

Every reading says where it came from, and a reading the platform does not offer is
reported as unavailable with the reason, never estimated.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["EnergyMeter", "PeakRSS", "environment", "nvml_meter", "rapl_meter"]

POWERCAP = Path("/sys/class/powercap")


class PeakRSS:
    """This process's peak resident memory over a stretch of work (Linux ``VmHWM``).

    Construction lowers the peak to the current size (``/proc/self/clear_refs``), so jobs
    of a sweep that share a process each get their own peak; ``start_bytes`` is what the
    process held when the stretch began (what earlier work left behind)."""

    def __init__(self) -> None:
        self.start_bytes = self.current()
        self.resettable = _write("/proc/self/clear_refs", "5")
        if self.resettable:
            self.start_bytes = self.current()

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(found.group(1)) * 1024 if found else None

    def current(self) -> int | None:
        return self._status("VmRSS")

    def peak(self) -> int | None:
        """The peak since construction (since the process started, where it cannot be reset)."""
        found = self._status("VmHWM")
        if found is not None:
            return found
        import resource  # not Linux: the lifetime peak is all there is (kB on Linux, bytes on macOS)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def source(self) -> str:
        return "VmHWM since start of bench (reset)" if self.resettable else "process lifetime peak RSS"


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


@dataclass
class EnergyMeter:
    """Cumulative energy counters (joules) of some domains: :meth:`joules_since` sums
    their growth since :meth:`start`. ``wrap`` is each counter's range, for counters that
    roll over (RAPL's)."""

    source: str
    read_counters: Any  # () -> list[float] joules, one per domain
    wrap: list[float] = field(default_factory=list)

    def start(self) -> list[float]:
        return self.read_counters()

    def joules_since(self, before: list[float]) -> float:
        total = 0.0
        for i, (a, b) in enumerate(zip(before, self.read_counters(), strict=True)):
            delta = b - a
            if delta < 0 and i < len(self.wrap):  # the counter rolled over once
                delta += self.wrap[i]
            total += delta
        return total


def rapl_meter(root: Path | None = None) -> tuple[EnergyMeter | None, str]:
    """A meter over every CPU package's RAPL counter under ``root``, or ``None`` and why not.

    Only top-level packages (``intel-rapl:N``) are summed: their sub-domains (cores, dram)
    are parts of them. The counter covers the whole package: other processes' work counts.
    ``root`` defaults to :data:`POWERCAP`."""
    root = Path(root) if root is not None else POWERCAP
    if not root.is_dir():
        return None, f"no {root} (the kernel exposes no RAPL counters here: a VM, a container or not Linux)"
    packages = sorted(p for p in root.glob("*rapl:*") if re.fullmatch(r"[a-z-]*rapl:\d+", p.name))
    if not packages:
        return None, f"{root} has no RAPL package domains"
    counters, wraps = [], []
    for p in packages:
        try:
            int((p / "energy_uj").read_text())
        except (OSError, ValueError) as exc:
            why = "not readable by this user (root only since Linux 5.10)" if isinstance(exc, PermissionError) else exc
            return None, f"{p / 'energy_uj'}: {why}"
        counters.append(p / "energy_uj")
        try:
            wraps.append(int((p / "max_energy_range_uj").read_text()) / 1e6)
        except (OSError, ValueError):
            wraps.append(0.0)

    def read() -> list[float]:
        return [int(c.read_text()) / 1e6 for c in counters]

    names = ", ".join(p.name for p in packages)
    return EnergyMeter(f"RAPL {names} (whole CPU package)", read, wraps), ""


def nvml_meter(index: int) -> tuple[EnergyMeter | None, str]:
    """A meter over GPU ``index``'s NVML energy counter (Volta and later), or ``None`` and why."""
    try:
        import pynvml
    except ImportError:
        return None, "NVML bindings are not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as exc:
        return None, f"NVML offers no energy counter for GPU {index}: {exc}"

    def read() -> list[float]:
        return [pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0]  # mJ

    return EnergyMeter(f"NVML GPU {index} total energy", read), ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


#: Distributions whose versions a result records (read from package metadata: nothing imported).
VERSIONED = ("plugstack", "torch", "onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers", "hydra-core")


def environment() -> dict[str, Any]:
    """Where a result came from, so it can be reproduced: machine, OS, versions, threads."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "cpu": _cpu_model(),
        "cpus_usable": usable,
        "cpus_total": os.cpu_count(),
        "memory_bytes": memory,
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "versions": {d: v for d in VERSIONED if (v := _version(d)) is not None},
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
