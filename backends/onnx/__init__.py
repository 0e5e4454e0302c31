"""The ``onnx`` backend: export a model's step graph once, run it with ONNX Runtime.

Kept light on purpose: importing this module (plugin discovery, ``plugstack --help``)
imports neither torch nor onnxruntime; the factory below is imported on first use.
"""

from plugstack import hookimpl

from .config import OnnxBackendConfig

__all__ = ["OnnxBackendConfig"]


@hookimpl
def plugstack_register_backends(register):
    register(
        "onnx",
        "plugstack.backends.onnx.backend:OnnxBackend",
        config=OnnxBackendConfig,
        description="ONNX Runtime (CPU; CUDA with onnxruntime-gpu): exported, cached, optionally int8/int4",
    )
