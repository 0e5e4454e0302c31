"""``OnnxBackend``: probe ONNX Runtime, export + cache + quantise + verify, hand out runners."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any, ClassVar

import structlog

from plugstack.backend import Availability, Backend, DeviceInfo
from plugstack.errors import BackendUnavailableError
from plugstack.model import Model

from .config import OnnxBackendConfig, coerce_config

log = structlog.get_logger("plugstack.onnx")

#: Distributions that provide the ``onnxruntime`` module, and the providers each can offer.
_DISTRIBUTIONS = {
    "onnxruntime": ("CPUExecutionProvider",),
    "onnxruntime-gpu": ("CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-directml": ("DmlExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-openvino": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-qnn": ("QNNExecutionProvider", "CPUExecutionProvider"),
}


def _installed_distributions() -> dict[str, str]:
    found = {}
    for dist in _DISTRIBUTIONS:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return found


def _nvidia_gpu_present() -> bool:
    """Is an NVIDIA driver with a device visible? (No CUDA library is loaded to find out.)"""
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def provider_report() -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(installed distributions, providers that would work, unavailable provider -> why).

    Decided from package metadata and the OS, without importing onnxruntime.
    """
    dists = _installed_distributions()
    usable: list[str] = []
    why_not: dict[str, str] = {}
    for dist in dists:
        for p in _DISTRIBUTIONS[dist]:
            if p not in usable:
                usable.append(p)
    if "CUDAExecutionProvider" in usable and not _nvidia_gpu_present():
        usable = [p for p in usable if p not in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
        why_not["CUDAExecutionProvider"] = "onnxruntime-gpu is installed but no NVIDIA GPU/driver is visible"
    elif "CUDAExecutionProvider" not in usable:
        cpu_only = ", ".join(f"{d} {v}" for d, v in dists.items()) or "no onnxruntime"
        why_not["CUDAExecutionProvider"] = (
            f"needs the onnxruntime-gpu distribution and an NVIDIA GPU; installed: {cpu_only} "
            f"(pip uninstall onnxruntime && pip install onnxruntime-gpu, on a machine with a GPU)"
        )
    return dists, usable, why_not


class OnnxBackend(Backend):
    """ONNX Runtime backend: the model's step graph is exported once, cached, then run by ORT."""

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"inference", "batch", "export:onnx", "quantize:int8", "quantize:int4"}
    )

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        #: The checked options (raises UnsupportedOptionError for a bad value, cheaply).
        self.options: OnnxBackendConfig = coerce_config(cfg)

    # -- probe ---------------------------------------------------------------------

    def probe(self) -> Availability:
        try:
            if importlib.util.find_spec("onnxruntime") is None:
                return Availability.no("onnxruntime is not installed: pip install onnxruntime "
                                       "(or onnxruntime-gpu for CUDA)")
            dists, usable, why_not = provider_report()
            wanted = [p for p in self.options.providers if p in usable]
            missing = {p: why_not.get(p, f"not provided by the installed {', '.join(dists) or 'onnxruntime'}")
                       for p in self.options.providers if p not in usable}
            device = DeviceInfo(
                name=" + ".join(wanted) if wanted else "none",
                threads=self.options.threads or os.cpu_count(),
                dtypes=("fp32", "int8", "int4") + (("fp16",) if "CUDAExecutionProvider" in wanted else ()),
                extra={
                    "distributions": dists,
                    "providers": usable,
                    "unavailable_providers": why_not,
                    "cpu": platform.processor() or platform.machine(),
                },
            )
            if not wanted:
                reasons = "; ".join(f"{p}: {r}" for p, r in missing.items())
                return Availability(False, f"none of backend.providers is available ({reasons}). "
                                           f"Available here: {', '.join(usable)}", device)
            reason = ""
            if missing:
                reason = "falling back: " + "; ".join(f"{p} unavailable ({r})" for p, r in missing.items())
            return Availability(True, reason, device)
        except Exception as e:  # probe never raises
            return Availability.no(f"could not probe onnxruntime: {type(e).__name__}: {e}")

    # -- prepare -------------------------------------------------------------------

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        chosen = [p for p in self.options.providers if p in available]
        dropped = [p for p in self.options.providers if p not in available]
        if not chosen:
            why = provider_report()[2]
            raise BackendUnavailableError(
                f"none of backend.providers={self.options.providers} is available in this onnxruntime "
                f"({', '.join(available)}). {' '.join(why.values())} "
                f"Use backend.providers=[CPUExecutionProvider] or backend=cpu."
            )
        if dropped:
            log.warning("onnx.providers.fallback", unavailable=dropped, using=chosen)
        return chosen

    def cache_dir(self) -> Path:
        from .cache import default_cache_dir

        return Path(self.options.cache_dir).expanduser() if self.options.cache_dir else default_cache_dir()

    def graph_kind(self, model: Model) -> str:
        """``fused`` or ``export``: how this model's graph is made under ``backend.graph``."""
        from .fused import supports

        if self.options.graph == "export" or self.options.dtype != "fp32":
            return "export"
        if supports(model):
            return "fused"
        if self.options.graph == "fused":
            from plugstack.errors import UnsupportedOptionError

            raise UnsupportedOptionError(
                f"backend.graph=fused builds plugstack's Llama decoder only; model {model.name!r} "
                f"(kind {model.kind!r}, module {type(model.module).__name__}) is not one. "
                f"Use backend.graph=auto or export."
            )
        return "export"

    def key_parts(self, model: Model, quantize: str | None) -> dict[str, Any]:
        """Everything a cached graph depends on (hashed into its cache key)."""
        import onnx
        import onnxruntime
        import torch

        from .export import EXPORT_FORMAT_VERSION
        from .fused import FUSED_FORMAT_VERSION

        graph = self.graph_kind(model)
        return {
            "graph": graph,
            "format": EXPORT_FORMAT_VERSION if graph == "export" else FUSED_FORMAT_VERSION,
            "model": model.name,
            "kind": model.kind,
            "weights": model.weights_digest or _state_digest(model),
            "signature": model.signature.describe(),
            "dtype": self.options.dtype,
            "quantize": quantize,
            "opset": self.options.opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxscript": _version("onnxscript"),
        }

    def prepare(self, model: Model):
        from .cache import cache_key, get_or_build
        from .export import export_step
        from .runner import OnnxRunner
        from .verify import verify_against_eager

        opts = OnnxBackendConfig(**{**self.options.__dict__, "providers": self._providers()})
        cache_dir = self.cache_dir()
        dtype = opts.dtype
        made: dict[str, OnnxRunner] = {}  # runners built while verifying, reused (no 2nd session)

        graph = self.graph_kind(model)

        def build_base(tmp: Path) -> dict[str, Any]:
            if graph == "fused":
                from .fused import build_llama

                seconds = build_llama(model, tmp / "model.onnx")
            else:
                seconds = export_step(model, tmp / "model.onnx", opset=opts.opset, dtype=dtype)
            fields: dict[str, Any] = {"model_file": "model.onnx", "graph": graph,
                                      "build_seconds": round(seconds, 2)}
            if opts.verify:
                base_opts = OnnxBackendConfig(**{**opts.__dict__, "quantize": None})
                runner = OnnxRunner(tmp / "model.onnx", model.signature, base_opts, dtype=dtype)
                fields["verify"] = verify_against_eager(runner, model, variant=dtype, tolerance=opts.tolerance)
                if opts.quantize is None:
                    made["runner"] = runner
            return fields

        base_parts = self.key_parts(model, None)
        base = get_or_build(cache_dir, cache_key(base_parts), build_base, describe=base_parts)
        entry = base
        if opts.quantize is not None:
            from .quantize import quantize_graph

            def build_quantized(tmp: Path) -> dict[str, Any]:
                seconds = quantize_graph(base.model_path, tmp / "model.onnx", opts.quantize)
                fields: dict[str, Any] = {"model_file": "model.onnx", "graph": graph,
                                          "quantize_seconds": round(seconds, 2), "base": base.path.name}
                if opts.verify:
                    runner = OnnxRunner(tmp / "model.onnx", model.signature, opts, dtype=dtype)
                    fields["verify"] = verify_against_eager(runner, model, variant=opts.quantize,
                                                            tolerance=opts.tolerance)
                    made["runner"] = runner
                return fields

            q_parts = self.key_parts(model, opts.quantize)
            entry = get_or_build(cache_dir, cache_key(q_parts), build_quantized, describe=q_parts)
        runner = made.get("runner") or OnnxRunner(entry.model_path, model.signature, opts, dtype=dtype)
        runner.path = entry.model_path  # a runner made while verifying saw the temporary dir
        runner.cache_entry = entry  # where the graph lives, and whether this call built it
        # The graph is the same either way (GroupQueryAttention notices past and present
        # sharing one buffer at run time), so kv_cache is not part of the cache key; the
        # verification above ran the graph with concatenated state. The buffers are host
        # memory, so only a CPU session appends in place; others keep concatenating.
        fused_on_cpu = graph == "fused" and runner.providers[0] == "CPUExecutionProvider"
        if opts.kv_cache == "shared" and fused_on_cpu:
            runner.share_kv_buffers(self.cache_capacity(model))
        # ONNX Runtime's CPU GroupQueryAttention refuses several new tokens on top of a cache
        # when batch > 1 ("batch_size must be 1 when sequence_length > 1 and past context is
        # given"): such a step runs token by token instead.
        runner.chunks_token_by_token = fused_on_cpu
        log.info("onnx.prepare.done", model=model.name, graph=graph, quantize=opts.quantize,
                 kv_cache=runner.kv_cache, kv_capacity=runner.capacity or None,
                 providers=runner.providers, cached=not entry.built, path=str(entry.model_path))
        return runner

    def cache_capacity(self, model: Model) -> int:
        """Positions of the shared KV buffer: ``backend.max_cache_len`` capped at the context length."""
        context = int(model.signature.meta.get("context_length") or 0)
        cap = self.options.max_cache_len
        if context <= 0:
            if cap <= 0:
                from plugstack.errors import UnsupportedOptionError

                raise UnsupportedOptionError(
                    f"model {model.name!r} declares no context_length, so backend.max_cache_len=0 cannot size "
                    f"the shared KV buffer: set backend.max_cache_len to a number of positions, or "
                    f"backend.kv_cache=concat.")
            return cap
        return context if cap <= 0 else min(cap, context)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


def _state_digest(model: Model) -> str:
    """sha256 of the module's tensors, for models that did not declare ``weights_digest``."""
    import torch

    h = hashlib.sha256()
    for name, t in model.module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()
