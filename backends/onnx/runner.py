"""Runs a step graph with an ``onnxruntime.InferenceSession``, over slot-addressed state.

Two ways to keep a growing state between steps (``backend.kv_cache``):

``concat``
    The state is a :class:`plugstack.state.TensorSlots` (each slot's arrays apart, gathered
    into one batch per step). ONNX Runtime writes the whole cache into a fresh ``present``
    every step, so a step copies the cache. Every graph can run this way (and fixed-size
    state always does).
``shared`` (graphs whose builder declares ``inplace_state``)
    The state is a :class:`SharedKV`: one preallocated ``[slots, kv_heads, capacity + 1,
    head_dim]`` buffer per state tensor, bound through IOBinding as both ``past`` and
    ``present``. GroupQueryAttention sees the same pointer and appends each row's new
    positions in place after the row's prefix (its length comes from the mask); nothing is
    copied. A step over every slot binds the whole buffers; admitting one sequence binds
    that slot's rows of them (numpy views of the same memory), so the other slots keep
    their caches. A step that skips live slots still runs them, with a token parked at the
    position after their prefix (the ``+ 1``) that the next real step overwrites.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from plugstack.backend import Runner
from plugstack.builders import BuiltGraph
from plugstack.errors import GenerationError
from plugstack.signature import FLOAT, StepSignature
from plugstack.state import SlotState, TensorSlots

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
    # threads for each is slow), and by default between runs too, so the next step finds
    # the workers awake; spin_between_runs=false stops them as each run returns.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.force_spinning_stop", "0" if cfg.spin_between_runs else "1")
    return so


@dataclasses.dataclass
class Bindings:
    """Two IOBindings over one set of KV arrays (all slots, or one slot's rows), each with
    its own preallocated arrays for the other outputs. Steps alternate between the two, so
    the logits handed out by one step stay the caller's through the next; a binding whose
    arrays a caller still holds after that gets fresh ones (see ``OnnxRunner._bound_run``).
    """

    bindings: list[Any]
    outputs: list[dict[str, np.ndarray]]
    turn: int = 0
    unheld: int = 0


@dataclasses.dataclass
class KVBuffers:
    """Preallocated numpy buffers ``[slots, kv_heads, capacity + 1, head_dim]`` (state order)
    and their bindings: of all slots (``full``) and of single slots' rows (``views``)."""

    arrays: list[np.ndarray]
    full: Bindings | None = None
    views: dict[int, Bindings] = dataclasses.field(default_factory=dict)


class SharedKV(SlotState):
    """State of a ``kv_cache=shared`` runner: its buffers, and ``mask`` ``[slots, capacity +
    1]`` with ones over each slot's positions. Once the state is dropped, the runner reuses
    its buffers (and bindings) for the next ``new_state`` of as many slots."""

    def __init__(self, buffers: KVBuffers, capacity: int) -> None:
        super().__init__(int(buffers.arrays[0].shape[0]), capacity)
        self.buffers = buffers
        self.mask = np.zeros((self.size, capacity + 1), dtype=np.int64)

    @property
    def arrays(self) -> list[np.ndarray]:
        return self.buffers.arrays

    def release(self, slot: int) -> None:
        super().release(slot)
        self.mask[slot] = 0


class OnnxRunner(Runner):
    """One ``InferenceSession`` over one step graph."""

    #: The model runs on ONNX Runtime's threads; torch only does light work between steps.
    uses_torch_threads = False
    #: Step inputs may be numpy arrays (they become numpy for ONNX Runtime anyway).
    accepts_numpy = True

    def __init__(self, model_path: Path, signature: StepSignature, cfg: OnnxBackendConfig, *,
                 dtype: str = "fp32", graph: BuiltGraph | None = None) -> None:
        self.signature = signature
        self.dtype = dtype if cfg.quantize is None else cfg.quantize
        self.graph = graph or BuiltGraph()
        self.path = Path(model_path)
        #: The cache entry the graph came from (set by ``OnnxBackend.prepare``).
        self.cache_entry: Any = None
        self.session: ort.InferenceSession | None = ort.InferenceSession(
            str(model_path), sess_options=session_options(cfg), providers=list(cfg.providers))
        self.providers = self.session.get_providers()
        self._np_float = _NP_FLOAT[dtype]
        self._state_index = {name: i for i, name in enumerate(signature.state_inputs)}
        self._state_out = {o: self._state_index[i] for i, o in signature.state}
        self._graph_inputs = {i.name for i in self.session.get_inputs()}
        #: Inputs the graph reads, in signature order (a builder's graph may skip some).
        self._feed_names = [n for n in signature.input_names if n in self._graph_inputs]
        #: Of those, the caller's (neither state nor the mask).
        self._plain_feeds = [n for n in self._feed_names if n in signature.feed_inputs]
        self._dtypes = {t.name: self._np_dtype(t.dtype) for t in signature.inputs}
        #: ``concat`` or ``shared`` (see the module docstring); set by :meth:`share_kv_buffers`.
        self.kv_cache = "concat"
        #: Buffers of a dropped SharedKV, kept for the next new_state of as many slots.
        self._spare: KVBuffers | None = None
        self._spare_lock = threading.Lock()

    def share_kv_buffers(self, capacity: int) -> None:
        """Keep the state in preallocated buffers of ``capacity`` positions a slot, appended
        in place. Only for graphs built with ``inplace_state`` (see the module docstring)."""
        if capacity <= 0:
            raise ValueError(f"shared KV buffers need a positive capacity, got {capacity}")
        if not self.graph.inplace_state:
            raise ValueError("this graph does not append its state in place (BuiltGraph.inplace_state)")
        if not self.signature.batch_first():
            raise ValueError("shared buffers are sliced by slot: the signature's batch dimension must come first")
        self.kv_cache, self.slot_capacity = "shared", int(capacity)

    def _np_dtype(self, spec_dtype: str) -> Any:
        return self._np_float if spec_dtype == FLOAT else np.dtype(spec_dtype)

    # -- state ------------------------------------------------------------------------

    def new_state(self, slots: int) -> SlotState:
        if self.kv_cache == "shared":
            return self._new_shared(slots)
        initial = [torch.from_numpy(self._empty(n, rows=1, positions=0)) for n in self.signature.state_inputs]
        return TensorSlots(self.signature, slots, initial, layout=self.graph.state_layout)

    def _empty(self, name: str, *, rows: int, positions: int) -> np.ndarray:
        shape = self.signature.state_shape(name, rows, positions)
        # np.zeros maps fresh zero pages: untouched capacity costs address space, not RAM.
        return np.zeros(shape, dtype=self._np_dtype(self.signature.spec(name).dtype))

    def _new_shared(self, slots: int) -> SharedKV:
        with self._spare_lock:  # two threads must never take the same buffers
            spare, self._spare = self._spare, None
        if spare is not None and spare.arrays[0].shape[0] == slots:
            buffers = spare  # no zeroing needed: a step only reads positions it has written
        else:
            cap = self.slot_capacity + 1  # + the parking position (see the module docstring)
            buffers = KVBuffers([self._empty(n, rows=slots, positions=cap) for n in self.signature.state_inputs])
        state = SharedKV(buffers, self.slot_capacity)
        weakref.finalize(state, _recycle, weakref.ref(self), buffers)
        return state

    def steps_together(self, state: SlotState, rows: list[int], new: int) -> bool:
        if not super().steps_together(state, rows, new):
            return False
        if len(rows) < 2 or new < 2:
            return True
        if isinstance(state, SharedKV) and state.lanes(rows)[1]:
            return False  # several tokens cannot be parked: one slot at a time, through its views
        return self.graph.multi_row_chunks or not any(state.lengths[s] for s in rows)

    # -- one step ---------------------------------------------------------------------

    def step(self, inputs: Mapping[str, Any], state: SlotState, rows: list[int], new: int) -> dict[str, Any]:
        if self.session is None:
            raise GenerationError("this onnx runner was closed; prepare the model again")
        if isinstance(state, SharedKV):
            return self._step_shared(inputs, state, rows, new)
        if self.kv_cache == "shared" and self.signature.state:
            raise GenerationError("this runner keeps its KV cache in shared buffers (backend.kv_cache=shared): "
                                  "pass a state from its own new_state()")
        return self._step_concat(inputs, state, rows, new)

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            try:
                value = value.numpy()  # a CPU tensor without grad: no copy, one call
            except (RuntimeError, TypeError):
                value = value.detach().cpu().numpy()
        return np.ascontiguousarray(value, dtype=self._dtypes[name])

    def _step_concat(self, inputs: Mapping[str, Any], state: TensorSlots, rows: list[int], new: int) -> dict:
        past, mask = state.gather(rows, new)
        feed: dict[str, np.ndarray] = {}
        for name in self._feed_names:
            if name in self._state_index:
                feed[name] = self._to_numpy(name, past[self._state_index[name]])
            elif name == self.signature.mask:
                feed[name] = mask.numpy()
            else:
                feed[name] = self._to_numpy(name, inputs[name])
        try:
            results = self.session.run(self.signature.output_names, feed)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise GenerationError(self._rejected(feed, e)) from e
        outputs, present = {}, [None] * len(self._state_index)
        for name, value in zip(self.signature.output_names, results, strict=True):
            t = torch.from_numpy(value)
            if name in self._state_out:
                present[self._state_out[name]] = t
            else:
                outputs[name] = t.float() if t.is_floating_point() else t
        state.scatter(rows, present, new)
        return outputs

    def _rejected(self, feed: Mapping[str, np.ndarray], error: Exception) -> str:
        shapes = {k: list(v.shape) for k, v in feed.items() if k not in self._state_index}
        expected = {t.name: list(t.shape) for t in self.signature.inputs if t.name in shapes}
        return f"ONNX Runtime rejected the step inputs {shapes}; the graph expects {expected}. Details: {error}"

    def _step_shared(self, inputs: Mapping[str, Any], state: SharedKV, rows: list[int], new: int) -> dict:
        """One step with the KV cache appended in place to ``state``'s buffers (IOBinding)."""
        slot, remap = state.lanes(rows)
        lanes = rows if slot is not None else state.all_rows  # the rows the graph runs, in slot order
        parked = [b for b in lanes if b not in set(rows)] if remap else []
        mask, lengths = state.mask, state.lengths
        ends = {b: lengths[b] + (1 if b in parked else new) for b in lanes}
        for b, end in ends.items():  # ones over each lane's prefix plus what this step writes there
            mask[b, lengths[b] : end] = 1
        total = max(ends.values())
        size = state.size if remap else None
        feed = {name: self._lanes(self._to_numpy(name, inputs[name]), rows, size) for name in self._plain_feeds}
        if self.signature.mask in self._graph_inputs:
            rows_mask = mask[slot : slot + 1, :total] if slot is not None else mask[:, :total]
            feed[self.signature.mask] = rows_mask if rows_mask.flags.c_contiguous else np.ascontiguousarray(rows_mask)
        try:
            out = self._bound_run(self._bindings(state, slot), feed)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            for b, end in ends.items():
                mask[b, lengths[b] : end] = 0  # nothing of this step is part of any row
            raise GenerationError(self._rejected(feed, e)) from e
        for b in parked:
            mask[b, lengths[b]] = 0  # the parked token is not part of the row
        outputs = {}
        for name, array in out.items():
            t = torch.from_numpy(array[rows] if remap else array)
            outputs[name] = t.float() if array.dtype == np.float16 else t
        return outputs

    @staticmethod
    def _lanes(value: np.ndarray, rows: list[int], lanes: int | None) -> np.ndarray:
        """A feed for all ``lanes`` slots, in slot order, from the stepped rows' own (zeros
        where parked); ``None``: the rows already are the slots in order."""
        if lanes is None:
            return value
        full = np.zeros((lanes, *value.shape[1:]), dtype=value.dtype)
        full[rows] = value
        return full

    def _bindings(self, state: SharedKV, slot: int | None) -> Bindings:
        """The bindings of all of ``state``'s slots (``slot=None``) or of one slot's rows."""
        buffers = state.buffers
        if slot is None:
            if buffers.full is None:
                buffers.full = self._bind(buffers.arrays, state.size)
            return buffers.full
        if slot not in buffers.views:
            buffers.views[slot] = self._bind([a[slot : slot + 1] for a in buffers.arrays], 1)
        return buffers.views[slot]

    def _bind(self, arrays: list[np.ndarray], rows: int) -> Bindings:
        """Two bindings of ``arrays`` as both past and present, with fresh arrays for the other
        outputs (which must have fixed shapes but for the batch)."""
        shapes = {}
        for name in self.signature.output_names:
            if name in self._state_out:
                continue
            spec = self.signature.spec(name)
            shape = [rows if d == "batch" else d for d in spec.shape]
            if not all(isinstance(d, int) for d in shape):
                raise GenerationError(f"kv_cache=shared needs fixed-shape outputs besides the batch; "
                                      f"{name!r} is {list(spec.shape)}: use backend.kv_cache=concat")
            shapes[name] = (shape, self._np_dtype(spec.dtype))
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]  # same memory, no copy
        bound = Bindings([], [])
        for _ in range(2):
            binding = self.session.io_binding()
            outs = {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
            for name in outs:
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(outs[name]))
            for name, value in zip(self.signature.state_inputs, values, strict=True):
                binding.bind_ortvalue_input(name, value)
            for out, index in self._state_out.items():
                binding.bind_ortvalue_output(out, values[index])
            bound.bindings.append(binding)
            bound.outputs.append(outs)
        # The count of an array nobody else holds, measured the way _bound_run measures
        # (no local name may refer to one here, or the count would be one too high).
        bound.unheld = min((_references(outs, name) for name in outs), default=0)
        return bound

    def _bound_run(self, bound: Bindings, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        turn = bound.turn
        bound.turn = 1 - turn
        binding, arrays = bound.bindings[turn], bound.outputs[turn]
        for name in arrays:
            if _references(arrays, name) > bound.unheld:
                # A caller still holds the logits this binding produced two steps ago (a
                # tensor from torch.from_numpy keeps its array referenced): fresh memory.
                fresh = arrays[name] = np.empty_like(arrays[name])
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(fresh))
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        self.session.run_with_iobinding(binding)
        # Hand out the arrays ONNX Runtime wrote (a copy would be one more pass over logits
        # half written by another core).
        return arrays

    def preparation(self) -> dict[str, Any]:
        entry = self.cache_entry
        facts: dict[str, Any] = {"graph": "built" if entry is not None and entry.built else "cached",
                                 "weights": self.dtype, "kv_cache": self.kv_cache, "providers": list(self.providers)}
        if entry is not None and entry.built and "build_seconds" in entry.manifest:
            facts["build_s"] = entry.manifest["build_seconds"]  # of the entry that runs (int8/int4: the quantising)
        if entry is not None:
            facts["graph_bytes"] = sum(f["size"] for f in entry.manifest.get("files", {}).values())
        return facts

    def close(self) -> None:
        self.session = None
        self._spare = None


def _references(arrays: dict[str, np.ndarray], name: str) -> int:
    return sys.getrefcount(arrays[name])


def _recycle(runner_ref: weakref.ref, buffers: KVBuffers) -> None:
    """A SharedKV is gone: keep its buffers for the runner's next new_state."""
    runner = runner_ref()
    if runner is not None and runner.session is not None:
        runner._spare = buffers
