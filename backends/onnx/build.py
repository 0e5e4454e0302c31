"""Making a model's step graph: which path (the model's own builder or the generic export),
the cache entries (fp32, then quantised), the first-build verification, and the runner
over the cached graph (an entry ONNX Runtime cannot load is rebuilt once, see ``cache.use_entry``).

The backend knows no model: it asks ``model.builders["onnx"]`` (``plugstack.builders``)
and falls back to ``torch.onnx`` export when the model offers none or its builder declines,
logging which path it took and why (``onnx.graph``).
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from plugstack.builders import BuiltGraph, GraphRequest, OnnxGraphBuilder
from plugstack.errors import ModelLoadError, UnsupportedOptionError
from plugstack.model import Model

from .cache import CacheEntry, DamagedEntry, cache_key, get_or_build, use_entry
from .config import OnnxBackendConfig, accuracy_level_for

log = structlog.get_logger("plugstack.onnx")

#: ``Model.builders`` key this backend asks for.
BUILDER_KEY = "onnx"
#: Bump when what ``export.py`` writes changes: part of the cache key of exported graphs.
EXPORT_FORMAT_VERSION = 1


def choose_builder(model: Model, options: OnnxBackendConfig) -> tuple[OnnxGraphBuilder | None, str | None]:
    """The model's graph builder under ``backend.graph`` (``None``: the generic export), and
    what ``backend.quantize`` comes to with it (``auto``: ``native`` where that builder can)."""
    builder = model.builders.get(BUILDER_KEY)
    if options.graph == "export":
        why = "backend.graph=export"
    elif builder is None:
        why = f"model {model.name!r} offers no ONNX graph builder (Model.builders[{BUILDER_KEY!r}])"
    elif not isinstance(builder, OnnxGraphBuilder):
        why = f"Model.builders[{BUILDER_KEY!r}] of {model.name!r} is not an OnnxGraphBuilder (needs version, "
        why += "declines, build)"
    else:
        why = builder.declines(model, request_of(options, None))
    if why:
        if options.graph == "fused":
            raise UnsupportedOptionError(f"backend.graph=fused needs the model's own graph builder, but {why}. "
                                         f"Use backend.graph=auto (or export) for the generic torch.onnx export.")
        if options.quantize == "native":
            raise UnsupportedOptionError(f"backend.quantize=native needs the model's own graph builder, but {why}. "
                                         f"Use backend.quantize=int8, int4 or null.")
        log.info("onnx.graph", path="export", reason=why, model=model.name)
        return None, None if options.quantize == "auto" else options.quantize
    log.info("onnx.graph", path="builder", builder=_name(builder), model=model.name)
    return builder, native_or_not(model, options, builder)


def native_or_not(model: Model, options: OnnxBackendConfig, builder: OnnxGraphBuilder) -> str | None:
    """``backend.quantize`` resolved for ``builder``: ``auto`` is ``native`` where it can write it."""
    if options.quantize not in ("native", "auto"):
        return options.quantize
    why = builder.declines(model, request_of(options, "native"))
    if not why:
        return "native"
    if options.quantize == "native":
        raise UnsupportedOptionError(f"backend.quantize=native cannot apply: {why}. Use backend.quantize=null "
                                     f"(fp32), int8 or int4, which quantise the float graph.")
    log.info("onnx.quantize.auto", chose=None, reason=why, model=model.name)
    return None


def request_of(options: OnnxBackendConfig, quantize: str | None) -> GraphRequest:
    return GraphRequest(dtype=options.dtype, opset=options.opset, quantize=quantize,
                        accuracy_level=accuracy_level_for(options, quantize))


def _name(builder: Any) -> str:
    return f"{type(builder).__module__}.{type(builder).__qualname__}"


def key_parts(model: Model, options: OnnxBackendConfig, builder: OnnxGraphBuilder | None,
              quantize: str | None) -> dict[str, Any]:
    """Everything a cached graph depends on (hashed into its cache key). Library versions come
    from package metadata: a cache hit imports neither torch nor onnx."""
    from plugstack.files import module_digest

    return {
        "graph": _name(builder) if builder is not None else "export",
        "format": builder.version if builder is not None else EXPORT_FORMAT_VERSION,
        "model": model.name,
        "weights": model.weights_digest or module_digest(model.module),
        "signature": model.signature.describe(),
        "dtype": options.dtype,
        "quantize": quantize,
        "accuracy_level": options.accuracy_level if quantize else None,
        "opset": options.opset,
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxscript": _version("onnxscript"),
    }


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


#: ``make_runner(path, options, graph) -> runner`` as the backend configures them.
MakeRunner = Callable[[Path, OnnxBackendConfig, BuiltGraph], Any]


def graph_of(entry: CacheEntry) -> BuiltGraph:
    """How to drive the graph of a cache entry (what its builder declared)."""
    features = entry.manifest.get("graph_features", {})
    try:
        return BuiltGraph(**features)
    except (TypeError, ValueError) as e:  # not a mapping, keys or values BuiltGraph does not take
        raise DamagedEntry(entry.path, f"manifest 'graph_features' {features!r} does not fit BuiltGraph ({e})") from e


def cannot_load(e: BaseException) -> bool:
    """Is ``e`` a failure to read a graph file (ONNX Runtime's, onnx's, protobuf's, or a file gone)?"""
    top = type(e).__module__.split(".")[0]
    return top in ("onnxruntime", "onnx", "google") or isinstance(e, (FileNotFoundError, IsADirectoryError))


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:500]}"


def load_runner(make_runner: MakeRunner, entry: CacheEntry, options: OnnxBackendConfig) -> Any:
    """A runner over a cached entry's graph; one ONNX Runtime cannot load is a :class:`DamagedEntry`."""
    graph = graph_of(entry)
    try:
        return make_runner(entry.model_path, options, graph)
    except Exception as e:
        if not cannot_load(e):
            raise
        raise DamagedEntry(entry.path, f"ONNX Runtime cannot load {entry.model_path.name}: {_why(e)}") from e


def _fresh_runner(make_runner: MakeRunner, path: Path, options: OnnxBackendConfig, graph: BuiltGraph,
                  model: Model) -> Any:
    """A runner over a graph just built (to verify it): one that cannot load is a real error."""
    try:
        return make_runner(path, options, graph)
    except Exception as e:
        if not cannot_load(e):
            raise
        raise ModelLoadError(
            f"the ONNX graph just built for model {model.name!r} cannot be loaded by ONNX Runtime ({_why(e)}). "
            f"Try backend.graph=export (the generic torch.onnx export) or backend=cpu, and report it.") from e


def runner_from_cache(model: Model, options: OnnxBackendConfig, builder: OnnxGraphBuilder | None,
                      cache_dir: Path, make_runner: MakeRunner) -> Any:
    """The runner over the cached graph (fp32, native, or its ``backend.quantize`` version), each
    entry built on a miss and rebuilt once if it turns out damaged on use. ``options`` as
    ``OnnxBackend.prepare`` resolved them: ``quantize`` by :func:`choose_builder`, and
    ``accuracy_level`` by ``accuracy_level_for``."""
    made: dict[str, Any] = {}  # a runner built while verifying, reused (no 2nd session)

    def use(entry: CacheEntry) -> Any:
        runner = made.pop("runner", None) or load_runner(make_runner, entry, options)
        runner.path = entry.model_path  # a runner made while verifying saw the temporary dir
        runner.cache_entry = entry  # where the graph lives, and whether this call built it
        return runner

    def base() -> CacheEntry:
        return base_entry(model, options, builder, cache_dir, make_runner, made)

    if options.quantize in (None, "native"):  # the builder writes native weights itself
        return use_entry(base, use)
    return use_entry(base, lambda b: use_entry(
        lambda: quantized_entry(model, options, builder, b, cache_dir, make_runner, made), use))


def base_entry(model: Model, options: OnnxBackendConfig, builder: OnnxGraphBuilder | None, cache_dir: Path,
               make_runner: MakeRunner, made: dict[str, Any]) -> CacheEntry:
    """The graph the builder or the export writes (fp32, fp16 or native weights), built (and
    verified) on a miss. A runner made while verifying is left in ``made["runner"]`` when no
    quantisation follows."""
    def build(tmp: Path) -> dict[str, Any]:  # torch is imported here, on a miss only
        from .export import export_step
        from .verify import verify_against_eager

        path = tmp / "model.onnx"
        if builder is not None:
            graph = builder.build(model, path, request_of(options, native))
        else:
            export_step(model, path, opset=options.opset, dtype=options.dtype)
            graph = BuiltGraph()
        fields: dict[str, Any] = {"model_file": path.name, "graph_features": graph.as_dict()}
        if options.verify:
            runner = _fresh_runner(make_runner, path, _unquantised(options), graph, model)
            fields["verify"] = verify_against_eager(runner, model, variant=native or options.dtype,
                                                    tolerance=options.tolerance, accuracy_level=options.accuracy_level)
            if options.quantize in (None, "native"):
                made["runner"] = runner
        return fields

    native = "native" if options.quantize == "native" else None
    parts = key_parts(model, options, builder, native)
    return get_or_build(cache_dir, cache_key(parts), build, describe=parts)


def _unquantised(options: OnnxBackendConfig) -> OnnxBackendConfig:
    import dataclasses

    return options if options.quantize == "native" else dataclasses.replace(options, quantize=None)


def quantized_entry(model: Model, options: OnnxBackendConfig, builder: OnnxGraphBuilder | None, base: CacheEntry,
                    cache_dir: Path, make_runner: MakeRunner, made: dict[str, Any]) -> CacheEntry:
    """The ``backend.quantize`` version of ``base``, built (and verified) on a miss."""
    def build(tmp: Path) -> dict[str, Any]:
        from .quantize import quantize_graph
        from .verify import verify_against_eager

        path = tmp / "model.onnx"
        graph = graph_of(base)
        try:
            quantised = quantize_graph(base.model_path, path, options.quantize, options.accuracy_level)
        except Exception as e:  # the base graph cannot be read: rebuild it (use_entry)
            if not cannot_load(e):
                raise
            raise DamagedEntry(base.path, f"cannot read {base.model_path.name} to quantise it: {_why(e)}") from e
        if not quantised:
            raise UnsupportedOptionError(
                f"backend.quantize={options.quantize} found no MatMul to quantise in the graph of model "
                f"{model.name!r}, so it would change nothing: use backend.quantize=null for this model.")
        fields: dict[str, Any] = {"model_file": path.name, "graph_features": graph.as_dict(),
                                  "base": base.path.name, "quantized_matmuls": quantised}
        if options.verify:
            runner = _fresh_runner(make_runner, path, options, graph, model)
            fields["verify"] = verify_against_eager(runner, model, variant=options.quantize,
                                                    tolerance=options.tolerance, accuracy_level=options.accuracy_level)
            made["runner"] = runner
        return fields

    parts = key_parts(model, options, builder, options.quantize)
    return get_or_build(cache_dir, cache_key(parts), build, describe=parts)
