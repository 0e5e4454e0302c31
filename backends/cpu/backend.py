"""The ``cpu`` backend: the model's own torch module, run eagerly on the CPU.

This module stays light (``plugstack backends`` imports it to call ``probe``); torch is
imported by ``prepare``.
"""

from __future__ import annotations

import copy
import importlib.util
import time
import warnings
from typing import TYPE_CHECKING, Any

import structlog

from plugstack.backend import Availability, Backend
from plugstack.errors import UnsupportedOptionError

from .config import CPU_DTYPES, CPU_QUANTIZE, CpuBackendConfig
from .device import check_threads, cpu_device_info

if TYPE_CHECKING:
    import torch

    from plugstack.backend import Runner
    from plugstack.model import Model

log = structlog.get_logger("plugstack.backends.cpu")


class CpuBackend(Backend):
    """Eager PyTorch on the CPU, optionally in bf16, dynamic int8 or ``torch.compile``-d.

    ``prepare`` never changes the caller's weights: converting the dtype or quantising
    works on a deep copy. In fp32 the runner shares the caller's module (no second copy of
    the weights) and puts it in eval mode. ``threads`` sets torch's process-wide
    intra-op thread count.
    """

    capabilities = frozenset({"inference", "training", "batch", "dtype:fp32", "dtype:bf16", "quantize:int8"})

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg if cfg is not None else CpuBackendConfig())
        check_options(self.cfg)

    def probe(self) -> Availability:
        if importlib.util.find_spec("torch") is None:
            return Availability.no("torch is not installed; `pip install torch` or use backend=onnx")
        return Availability(True, device=cpu_device_info())

    def training_device(self) -> str:
        return "cpu"

    def prepare(self, model: Model) -> Runner:
        import torch

        from plugstack.backends.eager import EagerRunner

        cfg = self.cfg
        start = time.perf_counter()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.dtype == "bf16" and not cpu_device_info().extra["fast_bf16"]:
            log.warning(
                "backend.cpu.bf16_emulated",
                hint="this CPU has no AVX512-BF16/AMX: bf16 matmuls are emulated, so prefill is slower "
                "than fp32 (memory-bound decode may still gain from the halved weights)",
            )
        module = model.module
        if cfg.quantize == "int8" and not any(isinstance(m, torch.nn.Linear) for m in module.modules()):
            raise UnsupportedOptionError(
                f"backend=cpu quantize=int8 quantises nn.Linear layers, and model {model.name!r} has none, so "
                f"it would change nothing: use backend.quantize=null for this model.")
        if cfg.dtype != "fp32" or cfg.quantize:
            module = copy.deepcopy(module)  # the caller's module keeps its weights
        if cfg.quantize == "int8":
            module = quantize_int8(module)
        runner = EagerRunner(module, model.signature, device="cpu", dtype=cfg.dtype)
        runner.prepared = {"weights": "int8" if cfg.quantize == "int8" else cfg.dtype, "compile": bool(cfg.compile)}
        if cfg.compile:
            # dynamic=True: one graph for every prompt/past length instead of one per shape.
            runner.module = torch.compile(runner.module, dynamic=True)
        log.info(
            "backend.cpu.prepared",
            model=model.name,
            dtype=cfg.dtype,
            quantize=cfg.quantize,
            compile=bool(cfg.compile),
            threads=torch.get_num_threads(),
            seconds=round(time.perf_counter() - start, 3),
        )
        return runner


def check_options(cfg: Any) -> None:
    """Raise UnsupportedOptionError for option values the cpu backend cannot honour."""
    if cfg.dtype not in CPU_DTYPES:
        hint = " (fp16 matmuls are not accelerated on CPUs; use bf16)" if cfg.dtype == "fp16" else ""
        raise UnsupportedOptionError(
            f"backend=cpu does not support dtype={cfg.dtype!r}{hint}. "
            f"Valid values: {', '.join(CPU_DTYPES)}. Set e.g. backend.dtype=fp32."
        )
    if cfg.quantize in ("null", "none", "None", ""):  # as the onnx backend reads them: no quantisation
        cfg.quantize = None
    if cfg.quantize is not None and cfg.quantize not in CPU_QUANTIZE:
        raise UnsupportedOptionError(
            f"backend=cpu does not support quantize={cfg.quantize!r}. "
            f"Valid values: {', '.join(CPU_QUANTIZE)} or null (no quantisation). "
            f"For 4-bit weights use backend=onnx."
        )
    if cfg.quantize == "int8" and cfg.dtype != "fp32":
        raise UnsupportedOptionError(
            f"backend=cpu quantize=int8 computes activations in fp32, so dtype={cfg.dtype!r} "
            f"cannot be combined with it. Set backend.dtype=fp32 or backend.quantize=null."
        )
    if int(cfg.threads) < 0:
        raise UnsupportedOptionError(
            f"backend=cpu threads={cfg.threads} is negative. Use 0 (torch's default) or a positive count."
        )
    check_threads(int(cfg.threads), "cpu")


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 on every ``nn.Linear``: int8 weights with one scale per output channel,
    activations quantised per batch at run time. Replaces the layers of ``module`` in place
    and returns it.

    Per-channel rather than torch's per-tensor default: on SmolLM2-135M (48 greedy tokens,
    teacher-forced) it agrees with fp32 markedly more often, at the same speed
    (benchmarks/bench_quality.py).
    """
    import torch

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a
        # dependency (it pins its own torch); the eager API still works in torch 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
