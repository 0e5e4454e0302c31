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
    """Eager PyTorch on the CPU (``backend=cpu``)."""

    name: str = "cpu"
    #: Intra-op threads (torch's process-wide count); 0 keeps torch's default (all cores it sees).
    threads: int = 0
    #: Compute dtype: fp32 | bf16 (native matmuls only with AVX512-BF16/AMX; emulated elsewhere).
    dtype: str = "fp32"
    #: Weight quantisation: null | int8 (dynamic int8 on every nn.Linear, one scale per channel).
    quantize: Optional[str] = None
    #: Wrap the module in torch.compile (seconds to compile a tiny model, minutes a real one).
    compile: bool = False
