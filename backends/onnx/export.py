"""Export a model's step module to an ONNX file with ``torch.onnx.export(dynamo=True)``.

The export works on a deep copy of the module (the user's model is never touched), with
the output head untied from the embedding so that weight quantisers see a plain MatMul.
Graph inputs/outputs take the signature's names, and every symbolic dimension of the
signature (``batch``, ``seq``, ``past``, ``total`` ...) is dynamic in the graph and carries
the signature's name.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import warnings
from pathlib import Path

import structlog
import torch
from torch import nn

from plugstack.compare import example_inputs
from plugstack.errors import ModelLoadError
from plugstack.model import Model
from plugstack.signature import StepSignature

log = structlog.get_logger("plugstack.onnx")

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def untie_parameters(module: nn.Module) -> int:
    """Give every parameter that is shared between modules its own copy; returns how many.

    The dynamo exporter keeps a tied embedding/head as one initializer used through a
    transposed Gemm, which weight quantisers skip: untying makes the head a plain weight.
    """
    seen: dict[int, nn.Parameter] = {}
    untied = 0
    for _, mod in module.named_modules(remove_duplicate=False):
        for p_name, p in list(mod.named_parameters(recurse=False)):
            if id(p) in seen:
                setattr(mod, p_name, nn.Parameter(p.detach().clone(), requires_grad=False))
                untied += 1
            else:
                seen[id(p)] = p
    return untied


def _dynamic_shapes(signature: StepSignature, n_positional: int) -> tuple:
    """``dynamic_shapes`` for torch.export: one dict per input, trailing ones as ``*args``.

    The step forward takes ``(a, b, c, *rest)``; torch.export wants the ``*rest`` part
    as one nested tuple. ``Dim.DYNAMIC`` lets the exporter work out relations such as
    ``total = past + seq`` itself; the signature's names are put back afterwards.
    """
    from torch.export import Dim

    specs = [{axis: Dim.DYNAMIC for axis in signature.spec(n).dynamic_axes()} or None
             for n in signature.input_names]
    if n_positional >= len(specs):
        return tuple(specs)
    return (*specs[:n_positional], tuple(specs[n_positional:]))


def _positional_count(module: nn.Module) -> int:
    """Number of named positional parameters of ``forward`` before a ``*args``."""
    import inspect

    params = list(inspect.signature(module.forward).parameters.values())
    named = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return named
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            named += 1
    return 1 << 30  # no *args: every input is its own positional argument


def _rename_dims(onnx_path: Path, signature: StepSignature) -> None:
    """Give graph inputs/outputs the signature's dim names instead of the exporter's s0, s1..."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    by_name = {t.name: t for t in signature.inputs + signature.outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        spec = by_name.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            continue
        for dim, want in zip(dims, spec.shape, strict=True):
            if isinstance(want, str):
                dim.dim_param = want
    onnx.save(proto, str(onnx_path))


def export_step(model: Model, path: Path, *, opset: int, dtype: str = "fp32") -> float:
    """Export ``model``'s step to ``path`` (one self-contained .onnx file); returns seconds."""
    signature = model.signature
    module = copy.deepcopy(model.module).to(dtype=TORCH_DTYPES[dtype]).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    untied = untie_parameters(module)
    # Every dynamic dim >= 2, or the exporter specialises it to a constant 0/1.
    inputs = example_inputs(model, batch=2, seq=3, past=2)
    inputs = tuple(t.to(TORCH_DTYPES[dtype]) if t.is_floating_point() else t for t in inputs)
    if len(inputs) != len(signature.inputs):
        raise ModelLoadError(
            f"model {model.name!r}: example_inputs() returned {len(inputs)} tensors but its signature "
            f"declares {len(signature.inputs)} inputs ({signature.input_names[:4]}...). Fix the model plugin."
        )
    dynamic_shapes = _dynamic_shapes(signature, _positional_count(module))
    # The exporter's graph passes log every rewrite at INFO; keep the user's console readable.
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "torchvision is not installed. Skipping torchvision::nms" (x4) is about ops no plugstack model uses.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    log.info("onnx.export.start", model=model.name, opset=opset, dtype=dtype, untied_parameters=untied)
    start = time.perf_counter()
    with _progress(f"exporting {model.name} to ONNX (opset {opset}, {dtype})"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch's own deprecations inside export
        try:
            program = torch.onnx.export(
                module,
                inputs,
                dynamo=True,
                input_names=signature.input_names,
                output_names=signature.output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
            program.save(str(path))
        except Exception as e:  # the exporter raises many types; all mean the same to a user
            raise ModelLoadError(
                f"could not export model {model.name!r} to ONNX (opset {opset}): {type(e).__name__}: "
                f"{str(e)[:2000]}\nUse backend=cpu for this model, or try another backend.opset."
            ) from e
    _rename_dims(path, signature)
    seconds = time.perf_counter() - start
    log.info("onnx.export.done", model=model.name, seconds=round(seconds, 2), path=str(path),
             bytes=path.stat().st_size)
    return seconds


class _progress:
    """A spinner with elapsed time on stderr while a slow step runs (no-op if rich breaks)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._p = None

    def __enter__(self) -> _progress:
        try:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._p = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                console=Console(file=sys.stderr), transient=True,
            )
            self._p.start()
            self._p.add_task(self.what, total=None)
        except Exception:  # progress display is a nicety, never a failure
            self._p = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
