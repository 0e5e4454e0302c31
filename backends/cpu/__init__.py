"""The ``cpu`` backend: eager PyTorch on the CPU. Registration only; nothing heavy here."""

from plugstack import hookimpl

from .config import CpuBackendConfig

__all__ = ["CpuBackendConfig", "plugstack_register_backends"]


@hookimpl
def plugstack_register_backends(register):
    register(
        "cpu",
        "plugstack.backends.cpu.backend:CpuBackend",
        config=CpuBackendConfig,
        description="PyTorch eager on the CPU (fp32/bf16, optional dynamic int8, optional torch.compile)",
    )
