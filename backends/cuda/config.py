"""Options of the ``cuda`` backend (the ``backend=cuda`` config group). Light module."""

from __future__ import annotations

from dataclasses import dataclass

#: Compute dtypes the cuda backend runs in (bf16 needs compute capability >= 8.0).
CUDA_DTYPES = ("fp16", "bf16", "fp32")


@dataclass
class CudaBackendConfig:
    """Eager PyTorch on an NVIDIA GPU.

    ``device_index``: which GPU (as torch numbers them, i.e. after CUDA_VISIBLE_DEVICES).
    ``dtype``: ``fp16``, ``bf16`` or ``fp32``.
    ``static_cache``: decoders keep their KV cache in buffers preallocated once per state
    (``max_cache_len`` positions) and written in place, instead of growing by concatenation.
    ``max_cache_len``: positions of the static cache; 0 = the model's context length.
    ``cuda_graphs``: capture the one-token decode step as a CUDA graph per batch size and
    replay it (needs ``static_cache``; one live state per batch size).
    """

    name: str = "cuda"
    device_index: int = 0
    dtype: str = "fp16"
    cuda_graphs: bool = False
    static_cache: bool = True
    max_cache_len: int = 0
