"""Options of the ``cuda`` backend (the ``backend=cuda`` config group). Light module."""

from __future__ import annotations

from dataclasses import dataclass

#: Compute dtypes the cuda backend runs in (bf16 needs compute capability >= 8.0).
CUDA_DTYPES = ("fp16", "bf16", "fp32")


@dataclass
class CudaBackendConfig:
    """Eager PyTorch on an NVIDIA GPU (``backend=cuda``)."""

    name: str = "cuda"
    #: Which GPU, as torch numbers them (after CUDA_VISIBLE_DEVICES).
    device_index: int = 0
    #: Compute dtype: fp16 | bf16 (compute capability >= 8.0) | fp32.
    dtype: str = "fp16"
    #: Capture the one-token step of every slot as a CUDA graph and replay it (needs
    #: static_cache; one live state per number of slots).
    cuda_graphs: bool = False
    #: Keep a growing state (KV cache) in buffers preallocated once per state and written in
    #: place, instead of growing it by concatenation.
    static_cache: bool = True
    #: Positions one slot of the static cache holds; 0 = the model's context length.
    max_cache_len: int = 0
