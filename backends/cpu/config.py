"""Options of the ``cpu`` backend (the ``backend=cpu`` config group). Light module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: Compute dtypes the cpu backend runs in.
CPU_DTYPES = ("fp32", "bf16")
#: Weight quantisation schemes the cpu backend offers.
CPU_QUANTIZE = ("int8",)


@dataclass
class CpuBackendConfig:
    """Eager PyTorch on the CPU.

    ``threads``: intra-op threads; 0 keeps torch's default (all cores torch sees).
    ``dtype``: ``fp32`` or ``bf16``. bf16 halves the weights' memory; its matmuls are native
    only on CPUs with AVX512-BF16/AMX (elsewhere prefill is ~4x slower, decode still gains).
    ``quantize``: ``int8`` = dynamic int8 on every ``nn.Linear`` (torch.ao), or none.
    ``compile``: wrap the module in ``torch.compile`` (compiling takes seconds for a tiny
    model and minutes for a real one, once per new input shape family).
    """

    name: str = "cpu"
    threads: int = 0
    dtype: str = "fp32"
    quantize: Optional[str] = None
    compile: bool = False
