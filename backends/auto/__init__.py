"""The ``auto`` backend: picks the first available backend. Registration only."""

from plugstack import hookimpl

from .config import AutoBackendConfig

__all__ = ["AutoBackendConfig", "plugstack_register_backends"]


@hookimpl
def plugstack_register_backends(register):
    register(
        "auto",
        "plugstack.backends.auto.backend:AutoBackend",
        config=AutoBackendConfig,
        description="the first available of backend.order (default cuda, onnx, cpu); PLUGSTACK_BACKEND wins",
    )
