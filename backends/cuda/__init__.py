"""The ``cuda`` backend: PyTorch on an NVIDIA GPU. Registration only; nothing heavy here."""

from plugstack import hookimpl

from .config import CudaBackendConfig

__all__ = ["CudaBackendConfig", "plugstack_register_backends"]


@hookimpl
def plugstack_register_backends(register):
    register(
        "cuda",
        "plugstack.backends.cuda.backend:CudaBackend",
        config=CudaBackendConfig,
        description="PyTorch on an NVIDIA GPU (fp16/bf16/fp32, static KV cache, optional CUDA graphs)",
    )
