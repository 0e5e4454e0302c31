"""Runs an exported step graph with an ``onnxruntime.InferenceSession``.

State is a list of numpy arrays in the signature's state order (the KV cache as
``past.i.key/value``); each step's ``present`` outputs become the next step's ``past``.
Measured on SmolLM2 (notes): with per-layer past/present tensors the weights dominate
decode time up to a few hundred tokens, so this plain scheme costs nothing measurable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from plugstack.backend import Runner, StepOutput
from plugstack.errors import GenerationError
from plugstack.signature import FLOAT, StepSignature

from .config import OnnxBackendConfig

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NP_FLOAT = {"fp32": np.float32, "fp16": np.float16}


def session_options(cfg: OnnxBackendConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[cfg.graph_optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if cfg.threads:
        so.intra_op_num_threads = cfg.threads
    # One step runs one graph; a second pool of threads would only compete for the cores.
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures reach the user as GenerationError with ORT's message
    # ORT's idle intra-op threads spin-wait by default; in a process that also runs torch
    # (eager backends, a tokenizer, the transformers peer in benchmarks) that spinning
    # stole the cores: transformers decoding fell from 17.7 to 5.4 tok/s beside idle
    # sessions. Blocking waits cost ORT itself little at decode sizes (see bench_decode).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRunner(Runner):
    """One ``InferenceSession`` over one exported step graph."""

    def __init__(self, model_path: Path, signature: StepSignature, cfg: OnnxBackendConfig,
                 *, dtype: str = "fp32") -> None:
        self.signature = signature
        self.dtype = dtype if cfg.quantize is None else cfg.quantize
        self.path = Path(model_path)
        #: The cache entry the graph came from (set by ``OnnxBackend.prepare``).
        self.cache_entry: Any = None
        self.session: ort.InferenceSession | None = ort.InferenceSession(
            str(model_path), sess_options=session_options(cfg), providers=list(cfg.providers)
        )
        self.providers = self.session.get_providers()
        self._np_float = _NP_FLOAT[dtype]
        self._state_index = {name: i for i, name in enumerate(signature.state_inputs)}
        self._state_out = {o: self._state_index[i] for i, o in signature.state}
        graph_inputs = {i.name for i in self.session.get_inputs()}
        self._feed_names = [n for n in signature.input_names if n in graph_inputs]

    def _np_dtype(self, spec_dtype: str) -> Any:
        return self._np_float if spec_dtype == FLOAT else np.dtype(spec_dtype)

    def new_state(self, batch_size: int) -> list[np.ndarray]:
        state = []
        for name in self.signature.state_inputs:
            spec = self.signature.spec(name)
            shape = [batch_size if d == "batch" else 0 if d == self.signature.state_axis else d
                     for d in spec.shape]
            if any(isinstance(d, str) for d in shape):
                raise ValueError(f"cannot size state tensor {name!r}: unknown dim in {spec.shape}")
            state.append(np.zeros(shape, dtype=self._np_dtype(spec.dtype)))
        return state

    def state_length(self, state: list[np.ndarray]) -> int:
        if not state:
            return 0
        spec = self.signature.spec(self.signature.state_inputs[0])
        return int(state[0].shape[spec.shape.index(self.signature.state_axis)])

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        want = self._np_dtype(self.signature.spec(name).dtype)
        return np.ascontiguousarray(value, dtype=want)

    def run(self, inputs: Mapping[str, Any], state: Any = None) -> StepOutput:
        if self.session is None:
            raise GenerationError("this onnx runner was closed; prepare the model again")
        if state is None and self.signature.state:
            batch = np.shape(next(iter(inputs.values())))[0]
            state = self.new_state(batch)
        feed: dict[str, np.ndarray] = {}
        for name in self._feed_names:
            if name in self._state_index:
                feed[name] = self._to_numpy(name, state[self._state_index[name]])
                continue
            try:
                value = inputs[name]
            except KeyError:
                raise KeyError(f"missing input {name!r}; this step needs {self.signature.feed_inputs}") from None
            feed[name] = self._to_numpy(name, value)
        try:
            results = self.session.run(self.signature.output_names, feed)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            shapes = {k: list(v.shape) for k, v in feed.items() if not k.startswith("past.")}
            expected = {t.name: list(t.shape) for t in self.signature.inputs if t.name in shapes}
            raise GenerationError(
                f"ONNX Runtime rejected the step inputs {shapes}; the graph expects {expected} "
                f"(past state length {self.state_length(state) if state else 0}). Details: {e}"
            ) from e
        outputs: dict[str, torch.Tensor] = {}
        next_state: list[Any] = [None] * len(self._state_index)
        for name, value in zip(self.signature.output_names, results, strict=True):
            if name in self._state_out:
                next_state[self._state_out[name]] = value
            else:
                t = torch.from_numpy(value)
                outputs[name] = t.float() if t.is_floating_point() else t
        return StepOutput(outputs, next_state)

    def close(self) -> None:
        self.session = None
