"""Is there a CUDA-capable torch and an NVIDIA GPU? Answered without importing torch.

``plugstack backends`` must stay fast and must not import torch, so the probe reads
torch's generated ``version.py`` as text (``cuda = None`` in CPU builds) and asks the
driver (``nvidia-smi``, else ``/proc/driver/nvidia/gpus``) for the GPUs. ``prepare``
re-checks with ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from plugstack.backend import Availability, DeviceInfo

from .config import CUDA_DTYPES

#: What to do instead, appended to every "unavailable" reason.
ALTERNATIVES = "Use backend=cpu or backend=onnx instead"


@dataclass
class TorchBuild:
    """What the installed torch was built with (all ``None`` when torch is absent)."""

    version: str | None = None
    cuda: str | None = None
    hip: str | None = None


@dataclass
class Gpu:
    name: str
    memory_bytes: int | None = None
    compute_capability: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def torch_build() -> TorchBuild:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return TorchBuild()
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    build = TorchBuild(version=version)
    try:
        text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
    except OSError:
        return build
    for key in ("cuda", "hip"):
        # e.g. `cuda: Optional[str] = '12.8'` or `cuda = None`
        m = re.search(rf"^{key}\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        setattr(build, key, m.group(1) if m else None)
    return build


def _nvidia_smi() -> list[Gpu] | None:
    """GPUs as nvidia-smi lists them; ``None`` when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    # compute_cap needs a recent driver; fall back to the fields every driver knows.
    for fields in ("name,memory.total,compute_cap,driver_version", "name,memory.total"):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0:
            break
    else:
        return None
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts or not parts[0]:
            continue
        mib = parts[1] if len(parts) > 1 else ""
        gpus.append(
            Gpu(
                name=parts[0],
                memory_bytes=int(float(mib)) * 2**20 if re.fullmatch(r"[\d.]+", mib) else None,
                compute_capability=parts[2] if len(parts) > 2 and parts[2] not in ("", "[N/A]") else None,
                extra={"driver": parts[3]} if len(parts) > 3 else {},
            )
        )
    return gpus


def _proc_gpus(root: str = "/proc/driver/nvidia/gpus") -> list[Gpu]:
    """GPUs the kernel driver knows (no memory size there)."""
    gpus = []
    base = Path(root)
    if not base.is_dir():
        return gpus
    for info in sorted(base.glob("*/information")):
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r"^Model:\s*(.+)$", text, re.MULTILINE)
        gpus.append(Gpu(name=m.group(1).strip() if m else "NVIDIA GPU"))
    return gpus


def find_gpus() -> list[Gpu]:
    """Physical NVIDIA GPUs, narrowed and reordered by CUDA_VISIBLE_DEVICES like torch does."""
    gpus = _nvidia_smi()
    if gpus is None:
        gpus = _proc_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if not ids or ids[0] == "-1":
        return []
    if all(i.isdigit() for i in ids):
        picked = []
        for i in ids:
            if int(i) >= len(gpus):
                break  # CUDA stops at the first invalid index
            picked.append(gpus[int(i)])
        return picked
    return gpus  # UUIDs / MIG names: cannot map without the driver; let torch decide


def probe_cuda(device_index: int = 0) -> Availability:
    """Availability of GPU ``device_index`` for torch, with every reason it is not usable."""
    build = torch_build()
    reasons = []
    if build.version is None:
        reasons.append("torch is not installed")
    elif build.cuda is None:
        kind = f"a ROCm (HIP {build.hip}) build" if build.hip else "a CPU-only build"
        reasons.append(f"torch {build.version} is built without CUDA ({kind})")
    gpus = find_gpus()
    if not gpus:
        if "CUDA_VISIBLE_DEVICES" in os.environ and (_nvidia_smi() or _proc_gpus()):
            reasons.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU")
        else:
            reasons.append(
                "no NVIDIA GPU found (nvidia-smi is not on PATH or lists none, and /proc/driver/nvidia/gpus is empty)"
            )
    elif device_index >= len(gpus) or device_index < 0:
        reasons.append(f"device_index={device_index} but {len(gpus)} GPU(s) are visible (valid: 0..{len(gpus) - 1})")
    if reasons:
        return Availability.no("; ".join(reasons) + f". {ALTERNATIVES}.")
    gpu = gpus[device_index]
    dtypes = CUDA_DTYPES
    if gpu.compute_capability and float(gpu.compute_capability) < 8.0:
        dtypes = tuple(d for d in CUDA_DTYPES if d != "bf16")
    extra = {"torch": build.version, "cuda": build.cuda, "gpus": len(gpus), **gpu.extra}
    if gpu.compute_capability:
        extra["compute_capability"] = gpu.compute_capability
    return Availability(
        True,
        device=DeviceInfo(name=gpu.name, memory_bytes=gpu.memory_bytes, threads=None, dtypes=dtypes, extra=extra),
    )
