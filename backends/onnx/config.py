"""Options of the ``onnx`` backend (the ``backend=onnx`` config group).

A light module: the dataclass (each option's default and doc) plus :func:`validate`, which
turns a bad value into an :class:`~plugstack.errors.UnsupportedOptionError` naming the
valid ones. No onnxruntime here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from plugstack.backends.cpu.device import check_threads
from plugstack.errors import UnsupportedOptionError

#: Execution providers ONNX Runtime knows by name. Whether one is *available* depends on
#: the installed onnxruntime distribution and the hardware: see ``OnnxBackend.probe``.
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "XnnpackExecutionProvider",
    "WebGpuExecutionProvider",
)
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
#: ``None`` keeps fp32/fp16 weights; ``int8``/``int4`` quantise the fp32 graph block-wise
#: (ONNX Runtime's MatMulNBits, see ``quantize.py``); ``native`` writes the weights as the
#: model's file stores them (a GGUF's Q4_0/Q4_1/Q8_0/Q4_K blocks, see ``plugstack.nbits``), with
#: no error of its own; ``auto`` is ``native`` where the model's graph builder can, else ``None``.
QUANTIZE_CHOICES = (None, "int8", "int4", "native", "auto")
#: ``backend.accuracy_level`` values: ONNX Runtime's MatMulNBits compute modes that matter on CPUs.
ACCURACY_LEVELS = (0, 4)
DTYPES = ("fp32", "fp16")
#: How the step graph is made: ``fused`` (the model plugin's own graph builder, see
#: ``plugstack.builders``; the Llama plugin's uses ONNX Runtime's fused operators), ``export``
#: (torch.onnx dynamo export, any model), ``auto`` (fused where the model offers it, else export).
GRAPHS = ("auto", "export", "fused")
#: How a KV cache is kept between steps: ``concat`` (ONNX Runtime copies the whole cache into
#: a new present every step), ``shared`` (one preallocated buffer per state tensor that the
#: graph appends to in place: graphs whose builder declares it, on the CPU provider), ``auto``
#: (shared where it applies, else concat).
KV_CACHES = ("auto", "concat", "shared")
#: Opsets the exporter is tested with. 23 has the standard RMSNormalization/Attention ops.
MIN_OPSET, MAX_OPSET = 18, 23


@dataclass
class OnnxBackendConfig:
    """ONNX Runtime (``backend=onnx``): the step graph is made once (cached), then run by ORT."""

    name: str = "onnx"
    #: Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    threads: int = 2
    #: Execution providers in order of preference, e.g. ``[CUDAExecutionProvider, CPUExecutionProvider]``.
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    #: ONNX Runtime graph optimisation level: disable | basic | extended | all.
    graph_optimization: str = "all"
    #: Weights of the graph: auto (native where the weights come block-quantised from a GGUF,
    #: else null) | native (the file's own blocks) | null (fp32) | int8 | int4 (the fp32 graph
    #: quantised again; int4 costs small models much quality).
    quantize: Optional[str] = "auto"
    #: MatMulNBits compute for quantised weights: 0 (fp32 activations: with native weights, the
    #: file's arithmetic exactly) | 4 (int8 activations per block: faster, not exact) | null: 0
    #: for native, 4 for int8/int4 (ONNX Runtime has no fast fp32 kernel for 8 bits).
    accuracy_level: Optional[int] = None
    #: Compute dtype of the graph: fp32, or fp16 with the CUDA provider first (graph=export).
    dtype: str = "fp32"
    #: How the graph is made: auto (the model's own builder where it offers one) | fused
    #: (that builder, or an error) | export (torch.onnx, any model).
    graph: str = "auto"
    #: ONNX opset of the export.
    opset: int = 23
    #: Where exported graphs are cached; null = $PLUGSTACK_HOME/onnx or the user cache dir.
    cache_dir: Optional[str] = None
    #: Compare the freshly built graph with the eager module once, before caching it.
    verify: bool = True
    #: Max |difference| / max(1, |value|) allowed by that comparison for fp32 graphs.
    tolerance: float = 1e-4
    #: KV cache between steps: auto | shared (preallocated, appended in place) | concat (see KV_CACHES).
    kv_cache: str = "auto"
    #: Positions one slot of the shared KV buffer holds (capped at the model's context
    #: length); 0 = the context length. Memory: layers x 2 x kv_heads x head_dim x 4 bytes
    #: per position and slot, touched only as it fills.
    max_cache_len: int = 4096
    #: Let ONNX Runtime's worker threads keep spinning a while after a step, so the next step
    #: starts without waking them (onnxruntime-genai never stops them). The price: torch work
    #: started in the same process meanwhile has a core less. false stops them after each step.
    spin_between_runs: bool = True


def _bad(option: str, value: Any, valid: Any, hint: str = "") -> UnsupportedOptionError:
    return UnsupportedOptionError(
        f"backend.{option}={value!r} is not supported by the onnx backend. Valid values: {valid}.{hint}"
    )


def accuracy_level_for(cfg: OnnxBackendConfig, quantize: str | None) -> int:
    """``backend.accuracy_level``, or its default for ``quantize``: 0 (exact) for native, else 4."""
    if cfg.accuracy_level is not None:
        return cfg.accuracy_level
    return 0 if quantize == "native" else 4


def validate(cfg: OnnxBackendConfig) -> None:
    """Raise :class:`UnsupportedOptionError` for any option the onnx backend cannot honour."""
    if cfg.threads < 0:
        raise _bad("threads", cfg.threads, "0 (ONNX Runtime default) or a positive number of threads")
    check_threads(cfg.threads, "onnx")
    if not cfg.providers:
        raise _bad("providers", cfg.providers, f"a non-empty list of {', '.join(KNOWN_PROVIDERS)}")
    for p in cfg.providers:
        if p not in KNOWN_PROVIDERS:
            from plugstack.errors import suggestion_text

            raise _bad("providers", p, ", ".join(KNOWN_PROVIDERS), suggestion_text(p, KNOWN_PROVIDERS))
    if cfg.graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise _bad("graph_optimization", cfg.graph_optimization, ", ".join(GRAPH_OPTIMIZATIONS))
    if cfg.quantize in ("null", "none", "None", ""):
        cfg.quantize = None
    if cfg.quantize not in QUANTIZE_CHOICES:
        raise _bad("quantize", cfg.quantize, "auto, native, null, int8, int4")
    if cfg.accuracy_level is not None and cfg.accuracy_level not in ACCURACY_LEVELS:
        raise _bad("accuracy_level", cfg.accuracy_level, "4 (int8 activations, fast) or 0 (fp32 activations, exact)")
    if cfg.dtype not in DTYPES:
        raise _bad("dtype", cfg.dtype, ", ".join(DTYPES))
    if cfg.dtype == "fp16" and cfg.providers[0] != "CUDAExecutionProvider":
        raise _bad(
            "dtype",
            cfg.dtype,
            "fp32 (fp16 only with providers=[CUDAExecutionProvider, ...])",
            " ONNX Runtime's CPU kernels for fp16 are slow or missing; use fp32 or quantize=int8 on CPU.",
        )
    if cfg.quantize == "auto" and cfg.dtype != "fp32":
        cfg.quantize = None  # native weights compute in fp32: an fp16 graph keeps float weights
    if cfg.quantize is not None and cfg.dtype != "fp32":
        raise _bad("quantize", cfg.quantize, "null with dtype=fp16", " Quantisation starts from an fp32 graph.")
    if cfg.quantize == "native" and cfg.graph == "export":
        raise _bad("quantize", cfg.quantize, "null, int8 or int4 with graph=export",
                   " Native weights are written by the model's own graph builder (backend.graph=auto or fused).")
    if cfg.graph not in GRAPHS:
        raise _bad("graph", cfg.graph, ", ".join(GRAPHS))
    if cfg.graph == "fused" and cfg.dtype != "fp32":
        raise _bad("dtype", cfg.dtype, "fp32 with graph=fused", " Use graph=export for fp16.")
    if not MIN_OPSET <= cfg.opset <= MAX_OPSET:
        raise _bad("opset", cfg.opset, f"{MIN_OPSET}..{MAX_OPSET}")
    if cfg.kv_cache not in KV_CACHES:
        raise _bad("kv_cache", cfg.kv_cache, ", ".join(KV_CACHES))
    if cfg.max_cache_len < 0:
        raise _bad("max_cache_len", cfg.max_cache_len,
                   "0 (the model's context length) or a positive number of positions")
    if cfg.tolerance <= 0:
        raise _bad("tolerance", cfg.tolerance, "a positive float such as 1e-4")
