"""``OnnxBackend``: probe ONNX Runtime; make, cache and verify the graph (``build.py``); hand out runners."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as md
import importlib.util
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from plugstack.backend import Availability, Backend, DeviceInfo
from plugstack.builders import BuiltGraph
from plugstack.config import options
from plugstack.errors import BackendUnavailableError
from plugstack.model import Model

from .config import OnnxBackendConfig, accuracy_level_for, validate

if TYPE_CHECKING:
    from .runner import OnnxRunner

log = structlog.get_logger("plugstack.onnx")

#: What ``plugstack backends`` says about ``backend.quantize``.
QUANTIZE_NOTE = ("auto (default): native where the weights come block-quantised from a GGUF, else fp32; "
                 "native: the file's own Q4_0/Q4_1/Q8_0/Q4_K blocks as MatMulNBits, no added error; "
                 "int8|int4: the fp32 graph quantised again; accuracy_level=0 (fp32 activations: with "
                 "native, the file's exact arithmetic; native's default) or 4 (int8 activations, faster; "
                 "int8/int4's default)")

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
        {"inference", "batch", "export:onnx", "quantize:int8", "quantize:int4", "quantize:native"}
    )

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        #: The checked options (raises UnsupportedOptionError for a bad value, cheaply).
        self.options: OnnxBackendConfig = options(OnnxBackendConfig, cfg)
        validate(self.options)

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
                    "quantize": QUANTIZE_NOTE,
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

    def _cache_setting(self) -> str:
        """What a user changes to move the graph cache (named by storage errors)."""
        from plugstack.files import home_setting

        return f"backend.cache_dir (now {self.options.cache_dir})" if self.options.cache_dir else home_setting()

    def prepare(self, model: Model) -> OnnxRunner:
        from plugstack.files import storage_errors

        from .build import choose_builder, runner_from_cache

        opts = dataclasses.replace(self.options, providers=self._providers())
        builder, quantize = choose_builder(model, opts)
        opts = dataclasses.replace(opts, quantize=quantize, accuracy_level=accuracy_level_for(opts, quantize))
        if builder is None:  # the generic export concatenates: refuse what cannot apply before exporting
            self.kv_mode(model, BuiltGraph(), opts.providers[0])
        make = functools.partial(self._runner, model)
        with storage_errors(self.cache_dir(), what="the ONNX graph cache", setting=self._cache_setting()):
            runner = runner_from_cache(model, opts, builder, self.cache_dir(), make)
        log.info("onnx.prepare.done", model=model.name, quantize=opts.quantize,
                 accuracy_level=opts.accuracy_level if opts.quantize else None, kv_cache=runner.kv_cache,
                 slot_capacity=runner.slot_capacity, providers=runner.providers, cached=not runner.cache_entry.built,
                 path=str(runner.path))
        return runner

    def _runner(self, model: Model, path: Path, opts: OnnxBackendConfig, graph: BuiltGraph) -> OnnxRunner:
        """A runner over the graph at ``path``, its state kept as :meth:`kv_mode` says."""
        from .runner import OnnxRunner

        runner = OnnxRunner(path, model.signature, opts, dtype=opts.dtype, graph=graph)
        if self.kv_mode(model, graph, runner.providers[0]) == "shared":
            runner.share_kv_buffers(self.cache_capacity(model))
        return runner

    def kv_mode(self, model: Model, graph: BuiltGraph, provider: str) -> str:
        """``shared`` or ``concat`` under ``backend.kv_cache`` for this graph; an explicit
        ``shared`` that cannot apply is refused, naming why."""
        wanted = self.options.kv_cache
        if model.signature.state_kind != "growing":
            why = f"model {model.name!r} has no KV cache (its state is {model.signature.state_kind})"
        elif not graph.inplace_state:
            why = "its graph concatenates its cache (the generic torch.onnx export does)"
        elif provider != "CPUExecutionProvider":
            why = f"the shared buffers are host memory, and the session runs on {provider}"
        elif not model.signature.batch_first():
            why = "the shared buffers are sliced by slot, and the signature's batch dimension is not first"
        else:
            return "concat" if wanted == "concat" else "shared"
        if wanted == "shared":
            from plugstack.errors import UnsupportedOptionError

            raise UnsupportedOptionError(f"backend.kv_cache=shared cannot apply: {why}. Use backend.kv_cache=auto "
                                         f"(shared where it applies) or concat.")
        return "concat"

    def cache_capacity(self, model: Model) -> int:
        """Positions a slot's shared KV buffer holds: ``backend.max_cache_len`` capped at the context length."""
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
