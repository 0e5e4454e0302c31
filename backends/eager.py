"""Eager PyTorch execution of a step signature, shared by the ``cpu`` and ``cuda`` backends
(and public as ``plugstack.EagerRunner`` for third-party backends that wrap it).

The state is a :class:`plugstack.state.TensorSlots`: each slot's tensors apart, gathered
into one batch per step (growing state padded to the longest row, the padding hidden by
the signature's mask) and scattered back after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from plugstack.backend import Runner
from plugstack.errors import UnsupportedOptionError
from plugstack.signature import FLOAT, StepSignature
from plugstack.state import TensorSlots

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def feed_tensor(value: Any, spec_dtype: str, device: torch.device, compute: torch.dtype) -> torch.Tensor:
    """A step input on ``device``, cast to the compute dtype where the signature says ``float``."""
    t = torch.as_tensor(value)
    return t.to(device, compute) if spec_dtype == FLOAT else t.to(device)


class EagerRunner(Runner):
    """Calls ``module(*inputs)`` in inference mode on one torch device.

    ``module`` is moved/cast in place (``nn.Module.to``) and put in eval mode: pass a copy
    when the caller's module must keep its device and dtype (the backends do).
    """

    def __init__(
        self, module: torch.nn.Module, signature: StepSignature, *, device: str = "cpu", dtype: str = "fp32"
    ) -> None:
        if dtype not in DTYPES:
            raise UnsupportedOptionError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.signature = signature
        self.dtype = dtype
        self.device = torch.device(device)
        self.torch_dtype = DTYPES[dtype]
        self.module = module.to(device=self.device, dtype=self.torch_dtype).eval()
        self._state_index = {name: i for i, name in enumerate(signature.state_inputs)}
        self._state_out = {o: self._state_index[i] for i, o in signature.state}
        #: What the backend did to the module (``preparation()``), e.g. ``{"weights": "int8"}``.
        self.prepared: dict[str, Any] = {}

    def preparation(self) -> dict[str, Any]:
        return dict(self.prepared)

    def _dtype_of(self, spec_dtype: str) -> torch.dtype:
        return self.torch_dtype if spec_dtype == FLOAT else getattr(torch, spec_dtype)

    def new_state(self, slots: int) -> TensorSlots:
        return TensorSlots(self.signature, slots, [self._empty(n) for n in self.signature.state_inputs])

    def _empty(self, name: str) -> torch.Tensor:
        """One row's state tensor before the first step: no positions, or zeros when fixed-size."""
        shape = self.signature.state_shape(name, rows=1, positions=0)
        return torch.zeros(shape, dtype=self._dtype_of(self.signature.spec(name).dtype), device=self.device)

    @torch.inference_mode()
    def step(self, inputs: Mapping[str, Any], state: TensorSlots, rows: list[int], new: int) -> dict[str, Any]:
        sig = self.signature
        past, mask = state.gather(rows, new)
        args = []
        for name in sig.input_names:
            if name in self._state_index:
                args.append(past[self._state_index[name]])
            elif name == sig.mask:
                args.append(mask.to(self.device))
            else:
                args.append(feed_tensor(inputs[name], sig.spec(name).dtype, self.device, self.torch_dtype))
        results = self.module(*args)
        outputs, present = {}, [None] * len(self._state_index)
        for name, value in zip(sig.output_names, results, strict=True):
            if name in self._state_out:
                present[self._state_out[name]] = value
            else:
                outputs[name] = value.float().cpu() if value.is_floating_point() else value.cpu()
        state.scatter(rows, present, new)
        return outputs

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
