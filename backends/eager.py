"""Eager PyTorch execution of a step signature, shared by the ``cpu`` and ``cuda`` backends.

The state is a plain list of tensors in the signature's state order; each step's
``present`` outputs become the next step's ``past`` inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from plugstack.backend import Runner, StepOutput
from plugstack.errors import UnsupportedOptionError
from plugstack.signature import FLOAT, StepSignature

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        self._out_index = {name: i for i, name in enumerate(signature.output_names)}

    def _dtype_of(self, spec_dtype: str) -> torch.dtype:
        return self.torch_dtype if spec_dtype == FLOAT else getattr(torch, spec_dtype)

    def new_state(self, batch_size: int) -> list[torch.Tensor]:
        state = []
        for name in self.signature.state_inputs:
            spec = self.signature.spec(name)
            shape = [batch_size if d == "batch" else 0 if d == self.signature.state_axis else d for d in spec.shape]
            if any(isinstance(d, str) for d in shape):
                raise ValueError(f"cannot size state tensor {name!r}: unknown dim in {spec.shape}")
            state.append(torch.zeros(shape, dtype=self._dtype_of(spec.dtype), device=self.device))
        return state

    def state_length(self, state: list[torch.Tensor]) -> int:
        if not state:
            return 0
        spec = self.signature.spec(self.signature.state_inputs[0])
        return state[0].shape[spec.shape.index(self.signature.state_axis)]

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, torch.Tensor], state: Any = None) -> StepOutput:
        if state is None and self.signature.state:
            batch = next(iter(inputs.values())).shape[0]
            state = self.new_state(batch)
        args = []
        for name in self.signature.input_names:
            if name in self._state_index:
                args.append(state[self._state_index[name]])
            else:
                try:
                    t = inputs[name]
                except KeyError:
                    raise KeyError(f"missing input {name!r}; this step needs {self.signature.feed_inputs}") from None
                args.append(t.to(self.device))
        results = self.module(*args)
        outputs = {}
        next_state = [None] * len(self._state_index)
        state_out = {o: self._state_index[i] for i, o in self.signature.state}
        for name, value in zip(self.signature.output_names, results, strict=True):
            if name in state_out:
                next_state[state_out[name]] = value
            else:
                outputs[name] = value.float().cpu() if value.is_floating_point() else value.cpu()
        return StepOutput(outputs, next_state)

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
