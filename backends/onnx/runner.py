"""Runs an exported step graph with an ``onnxruntime.InferenceSession``.

Two ways to keep the KV cache between steps (``backend.kv_cache``):

``concat``
    State is a list of numpy arrays in the signature's state order (``past.i.key/value``);
    each step's ``present`` outputs become the next step's ``past``. ONNX Runtime writes
    the whole cache into a fresh ``present`` every step, so a step copies
    ``layers x 2 x kv_heads x head_dim x 4`` bytes per cached position (SmolLM2: 46 KiB,
    i.e. 138 MiB per step at 3000 positions). The exported graph always works this way.
``shared`` (fused graph only)
    State is a :class:`SharedKV`: one preallocated ``[batch, kv_heads, capacity, head_dim]``
    buffer per state tensor, bound through IOBinding as both ``past`` and ``present``.
    GroupQueryAttention sees the same pointer and appends the new positions in place
    (ONNX Runtime's ``past_present_share_buffer``); ``seqlens_k``/``total_sequence_length``
    (from the attention mask's width) say how much of the buffer is valid. Nothing is
    copied; only attention itself still grows with the context. Left padding stays inside
    the buffer as it does with ``concat``; the attention bias masks it.

Measured on SmolLM2, 2 threads, 64 greedy tokens after a 40/1000/3000-token prompt, both
schemes alternating in one process: the same tokens, and decode tok/s concat -> shared of
fp32 39.9 -> 40.0, 26.8 -> 33.4, 17.5 -> 26.2; int4 102 -> 107, 50 -> 73, 21 -> 41. On a
loaded machine (other processes on the cores) the gap at 3000 was similar or wider. Hence
``shared`` is the default.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
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
    # Spin-wait inside a run (hundreds of small kernels per decode step: waking sleeping
    # threads for each costs ~1.4x on SmolLM2 int4). Between runs, by default, too: the
    # workers spin ~60 ms after a step and the next one finds them awake (~5% a step);
    # spin_between_runs=false stops them as each run returns, for processes whose torch
    # work must not lose a core to them (see OnnxBackendConfig).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "0" if cfg.spin_between_runs else "1")
    return so


@dataclass
class KVBuffers:
    """Preallocated KV buffers of one batch size, and the two IOBindings that bind them.

    ``arrays`` are the numpy buffers (state order, ``[batch, kv_heads, capacity, head_dim]``),
    ``values`` the OrtValues over the same memory. ``bindings`` are two IOBindings that
    bind them as both past and present, each with its own preallocated arrays for the
    other (fixed-shape) outputs, the logits: rebinding ~60 tensors every step cost ~5% of
    an int4 decode step. Steps alternate between the two, so the logits handed out by one
    step stay the caller's through the next; a binding whose arrays are still held after
    that gets fresh ones (see ``OnnxRunner._run_shared``).
    """

    arrays: list[np.ndarray]
    values: list[Any]
    bindings: list[Any] = dataclasses.field(default_factory=list, repr=False)
    outputs: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list, repr=False)
    turn: int = 0
    unheld: int = 0

    @property
    def batch(self) -> int:
        return int(self.arrays[0].shape[0]) if self.arrays else 0

    @property
    def capacity(self) -> int:
        return int(self.arrays[0].shape[2]) if self.arrays else 0


class _Lease:
    """Held by every SharedKV of one sequence of steps; when the last is dropped, the
    runner takes the buffers back for the next ``new_state`` (see ``_recycle``)."""


@dataclass
class SharedKV:
    """State of a ``kv_cache=shared`` runner: preallocated buffers plus how much is filled.

    A step updates the buffers in place and returns a new ``SharedKV`` over them with a
    larger ``length`` (valid positions): as the Runner contract says, continue with the
    returned state and never reuse an older one. Once no ``SharedKV`` over the buffers is
    left, the runner reuses them for its next ``new_state`` of the same batch size: fresh
    buffers cost ~10 ms of page mapping per generation and a page fault every few steps.
    """

    buffers: KVBuffers
    length: int
    lease: _Lease = dataclasses.field(default_factory=_Lease, repr=False)

    @property
    def arrays(self) -> list[np.ndarray]:
        return self.buffers.arrays

    @property
    def values(self) -> list[Any]:
        return self.buffers.values

    @property
    def batch(self) -> int:
        return self.buffers.batch

    @property
    def capacity(self) -> int:
        return self.buffers.capacity


class OnnxRunner(Runner):
    """One ``InferenceSession`` over one exported step graph."""

    #: The model runs on ONNX Runtime's threads; torch only does light work between steps.
    uses_torch_threads = False
    #: Step inputs may be numpy arrays (they become numpy for ONNX Runtime anyway).
    accepts_numpy = True

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
        #: Step inputs the graph does not read (the fused graph's position_ids): still required.
        self._unread = [n for n in signature.feed_inputs if n not in graph_inputs]
        self._dtypes = {t.name: self._np_dtype(t.dtype) for t in signature.inputs}
        #: ``concat`` or ``shared`` (see the module docstring); set by :meth:`share_kv_buffers`.
        self.kv_cache = "concat"
        #: Positions each shared buffer holds (0 with ``concat``).
        self.capacity = 0
        #: Run a multi-token step on a non-empty cache with batch > 1 one token at a time
        #: (set by OnnxBackend.prepare where the graph's attention cannot do it at once).
        self.chunks_token_by_token = False
        #: Buffers whose last SharedKV was dropped, kept for the next new_state.
        self._spare: KVBuffers | None = None
        self._spare_lock = threading.Lock()

    def share_kv_buffers(self, capacity: int) -> None:
        """Keep the KV cache in preallocated buffers of ``capacity`` positions, appended in place.

        Only for graphs whose attention appends to a shared past/present buffer (the fused
        graph's GroupQueryAttention); the generic export concatenates and cannot.
        """
        if capacity <= 0:
            raise ValueError(f"shared KV buffers need a positive capacity, got {capacity}")
        self.kv_cache, self.capacity = "shared", int(capacity)
        # The buffer is this runner's context window: generation checks prompts against it
        # up front and ends rows there, instead of failing mid-way (see _run_shared).
        context = self.signature.meta.get("context_length")
        if not context or int(context) > self.capacity:
            self.signature = dataclasses.replace(
                self.signature, meta={**self.signature.meta, "context_length": self.capacity})

    def _np_dtype(self, spec_dtype: str) -> Any:
        return self._np_float if spec_dtype == FLOAT else np.dtype(spec_dtype)

    def new_state(self, batch_size: int) -> Any:
        if self.kv_cache == "shared":
            return self._new_shared(batch_size)
        state = []
        for name in self.signature.state_inputs:
            spec = self.signature.spec(name)
            shape = [batch_size if d == "batch" else 0 if d == self.signature.state_axis else d
                     for d in spec.shape]
            if any(isinstance(d, str) for d in shape):
                raise ValueError(f"cannot size state tensor {name!r}: unknown dim in {spec.shape}")
            state.append(np.zeros(shape, dtype=self._np_dtype(spec.dtype)))
        return state

    def _new_shared(self, batch_size: int) -> SharedKV:
        with self._spare_lock:  # two threads must never take the same buffers
            spare, self._spare = self._spare, None
        if spare is not None and spare.batch == batch_size:
            buffers = spare  # no zeroing needed: a step only reads positions it has written
        else:
            arrays, values = [], []
            for name in self.signature.state_inputs:
                spec = self.signature.spec(name)
                shape = [batch_size if d == "batch" else self.capacity if d == self.signature.state_axis else d
                         for d in spec.shape]
                # np.zeros maps fresh zero pages: untouched capacity costs address space, not RAM.
                array = np.zeros(shape, dtype=self._np_dtype(spec.dtype))
                arrays.append(array)
                values.append(ort.OrtValue.ortvalue_from_numpy(array))  # same memory, no copy
            buffers = KVBuffers(arrays, values)
        state = SharedKV(buffers, 0)
        weakref.finalize(state.lease, _recycle, weakref.ref(self), buffers)
        return state

    def state_length(self, state: Any) -> int:
        if isinstance(state, SharedKV):
            return state.length
        if not state:
            return 0
        spec = self.signature.spec(self.signature.state_inputs[0])
        return int(state[0].shape[spec.shape.index(self.signature.state_axis)])

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            try:
                value = value.numpy()  # a CPU tensor without grad: no copy, one call
            except (RuntimeError, TypeError):
                value = value.detach().cpu().numpy()
        return np.ascontiguousarray(value, dtype=self._dtypes[name])

    def run(self, inputs: Mapping[str, Any], state: Any = None) -> StepOutput:
        if self.session is None:
            raise GenerationError("this onnx runner was closed; prepare the model again")
        if state is None and self.signature.state:
            batch = np.shape(next(iter(inputs.values())))[0]
            state = self.new_state(batch)
        for name in self._unread:
            self._input(inputs, name)
        if self.chunks_token_by_token and state is not None and self.state_length(state):
            shape = np.shape(self._input(inputs, "input_ids"))
            if len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
                return self._run_token_by_token(inputs, state)
        if isinstance(state, SharedKV):
            return self._run_shared(inputs, state)
        if self.kv_cache == "shared" and state:
            raise GenerationError("this runner keeps its KV cache in shared buffers (backend.kv_cache=shared): "
                                  "pass the state from its new_state() or previous run(), not a list of arrays")
        feed: dict[str, np.ndarray] = {}
        for name in self._feed_names:
            if name in self._state_index:
                feed[name] = self._to_numpy(name, state[self._state_index[name]])
                continue
            feed[name] = self._to_numpy(name, self._input(inputs, name))
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

    def _run_token_by_token(self, inputs: Mapping[str, Any], state: Any) -> StepOutput:
        """One step of several new tokens as that many one-token steps: the same cache and
        last-position logits, since each token only attends to what precedes it."""
        ids, positions, mask = (self._to_numpy(n, self._input(inputs, n))
                                for n in ("input_ids", "position_ids", "attention_mask"))
        past = mask.shape[1] - ids.shape[1]
        out = StepOutput({}, state)
        for j in range(ids.shape[1]):
            step = {"input_ids": ids[:, j : j + 1], "position_ids": positions[:, j : j + 1],
                    "attention_mask": mask[:, : past + j + 1]}
            out = self.run(step, out.state)
        return out

    def _input(self, inputs: Mapping[str, Any], name: str) -> Any:
        try:
            return inputs[name]
        except KeyError:
            raise KeyError(f"missing input {name!r}; this step needs {self.signature.feed_inputs}") from None

    def _run_shared(self, inputs: Mapping[str, Any], state: SharedKV) -> StepOutput:
        """One step with the KV cache appended in place to ``state``'s buffers (IOBinding)."""
        feed = {name: self._to_numpy(name, self._input(inputs, name))
                for name in self._feed_names if name not in self._state_index}
        ids, mask = feed.get("input_ids"), feed.get("attention_mask")
        if ids is None or mask is None or ids.ndim != 2 or mask.ndim != 2:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            raise GenerationError(f"ONNX Runtime step inputs {shapes}: input_ids and attention_mask must be "
                                  f"2-D [batch, positions] (the graph expects {self.signature.feed_inputs})")
        batch, new, total = ids.shape[0], ids.shape[1], mask.shape[1]
        if batch != state.batch or mask.shape[0] != batch:
            raise GenerationError(f"the step has {batch} rows (attention_mask {mask.shape[0]}) but its KV state "
                                  f"was made for {state.batch}: call new_state({batch}) for a new batch")
        if total != state.length + new:
            raise GenerationError(
                f"attention_mask covers {total} positions, but the KV cache holds {state.length} and the "
                f"step adds {new}: the mask must cover every cached position plus the new ones")
        if total > state.capacity:
            raise GenerationError(
                f"this step needs {total} KV-cache positions but the shared KV buffer holds "
                f"{state.capacity} (backend.max_cache_len, capped at the model's context length "
                f"{self.signature.meta.get('context_length', '?')}). Raise backend.max_cache_len, use a "
                f"shorter prompt or fewer new tokens, or backend.kv_cache=concat.")
        buffers = state.buffers
        if not buffers.bindings:
            self._bind(buffers)
        turn = buffers.turn
        buffers.turn = 1 - turn
        binding, arrays = buffers.bindings[turn], buffers.outputs[turn]
        for name in arrays:
            if _references(arrays, name) > buffers.unheld:
                # A caller still holds the logits this binding produced two steps ago (a
                # tensor from torch.from_numpy keeps its array referenced): fresh memory.
                fresh = arrays[name] = np.empty_like(arrays[name])
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(fresh))
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            shapes = {k: list(v.shape) for k, v in feed.items()}
            raise GenerationError(f"ONNX Runtime rejected the step inputs {shapes} (KV cache length "
                                  f"{state.length}, shared buffer of {state.capacity}). Details: {e}") from e
        # Hand out the arrays ONNX Runtime wrote (a copy would be one more pass over logits
        # half written by another core, ~50 us); see KVBuffers for when they are reused.
        outputs = {}
        for name, array in arrays.items():
            t = torch.from_numpy(array)
            outputs[name] = t.float() if array.dtype == np.float16 else t
        return StepOutput(outputs, SharedKV(state.buffers, total, state.lease))

    def _bind(self, buffers: KVBuffers) -> None:
        """Make ``buffers``' two bindings: its KV buffers as past and present, and fresh
        arrays for the other outputs (which must have fixed shapes but for the batch)."""
        shapes = {}
        for name in self.signature.output_names:
            if name in self._state_out:
                continue
            spec = self.signature.spec(name)
            shape = [buffers.batch if d == "batch" else d for d in spec.shape]
            if not all(isinstance(d, int) for d in shape):
                # Only the fused graph shares buffers, and its outputs are [batch, vocab].
                raise GenerationError(f"kv_cache=shared needs fixed-shape outputs besides the batch; "
                                      f"{name!r} is {list(spec.shape)}: use backend.kv_cache=concat")
            shapes[name] = (shape, self._np_dtype(spec.dtype))
        for _ in range(2):
            binding = self.session.io_binding()
            arrays = {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
            for name in arrays:
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arrays[name]))
            for name, value in zip(self.signature.state_inputs, buffers.values, strict=True):
                binding.bind_ortvalue_input(name, value)
            for out, index in self._state_out.items():
                binding.bind_ortvalue_output(out, buffers.values[index])
            buffers.bindings.append(binding)
            buffers.outputs.append(arrays)
        # The count of an array nobody else holds, measured the way _run_shared measures
        # (no local name may refer to one here, or the count would be one too high).
        buffers.unheld = min((_references(arrays, name) for name in arrays), default=0)

    def close(self) -> None:
        self.session = None
        self._spare = None


def _references(arrays: dict[str, np.ndarray], name: str) -> int:
    return sys.getrefcount(arrays[name])


def _recycle(runner_ref: weakref.ref, buffers: KVBuffers) -> None:
    """A sequence's last SharedKV is gone: keep its buffers for the runner's next new_state."""
    runner = runner_ref()
    if runner is not None and runner.session is not None:
        runner._spare = buffers
