"""What CPU this is, read from the OS without importing torch (``plugstack backends``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from plugstack.backend import DeviceInfo

from .config import CPU_DTYPES

#: /proc/cpuinfo flags that make bf16 matmuls fast (otherwise bf16 is emulated and slow).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of the first processor; empty where the file is absent (macOS...)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm
            flags = set(value.split())
        if name and flags:
            break
    return name, flags


def usable_cores() -> int:
    """Cores this process may run on (affinity and cgroup-limited sets count, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_device_info() -> DeviceInfo:
    name, flags = _cpuinfo()
    extra: dict[str, object] = {
        "arch": platform.machine(),
        "fast_bf16": any(f in flags for f in BF16_FLAGS),
    }
    try:
        extra["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        extra["torch"] = None
    return DeviceInfo(
        name=name or platform.processor() or platform.machine() or "cpu",
        memory_bytes=memory_bytes(),
        threads=usable_cores(),
        dtypes=CPU_DTYPES,
        extra=extra,
    )


def check_threads(threads: int, backend: str) -> None:
    """Warn when a backend is asked for more compute threads than this process may use:
    they contend for the cores and every step gets much slower (hundreds of times here)."""
    cores = usable_cores()
    if threads > cores:
        import structlog

        structlog.get_logger("plugstack.backend").warning(
            "backend.threads_oversubscribed", backend=backend, threads=threads, usable_cores=cores,
            hint=f"set backend.threads={cores} or lower (0 lets the library choose)",
        )
