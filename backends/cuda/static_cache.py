"""A runner whose growing state lives in buffers preallocated once per state.

Each state holds, per state input, one buffer of ``slots`` rows and ``max_len + 1``
positions (``+ 1``: where a row that a step does not advance parks its token). Slot ``s``
holds its sequence's positions ``0 .. length - 1``. Two ways to step, chosen by what the
model offers (``plugstack.builders``):

* **in place** (``Model.builders["torch.inplace_kv"]``): the model's own step writes the new
  positions into the buffers at ``cache_position`` and attends over them, as gpt-fast's
  ``KVCache.update`` does: nothing is concatenated or copied per step;
* **generic** (any model with a mask): the whole buffer goes in as ``past`` with a mask
  over each row's positions, the module returns ``present = past + new`` as eager modules
  do, and the runner copies the new positions into the buffer. One copy of the window per
  step, the price of knowing nothing about the model.

A step of every slot uses the whole buffers; admitting one sequence uses that slot's rows
(views of the same memory), so the other slots keep their caches. With ``graphs=True`` on
a CUDA device the one-token step of every slot is captured once per state size as a CUDA
graph and replayed (one live state per size); elsewhere a stand-in re-runs the same
static-buffer step, which exercises everything but the capture itself, so this runner is
tested on the CPU. Cost: attention reads every buffer position each step, so cap
``max_len`` near the longest sequence needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
import torch

from plugstack.backend import Runner
from plugstack.backends.eager import DTYPES, feed_tensor
from plugstack.errors import GenerationError
from plugstack.signature import BATCH, FLOAT, StepSignature
from plugstack.state import SlotState

log = structlog.get_logger("plugstack.backends.cuda")


class StaticSlots(SlotState):
    """A state of preallocated buffers (``[..., max_len + 1, ...]`` along the state axis)."""

    def __init__(self, buffers: list[torch.Tensor], size: int, capacity: int) -> None:
        super().__init__(size, capacity)
        self.buffers = buffers


class _StepGraph:
    """One captured step (CUDA) or its stand-in (other devices) over static tensors.

    Built with the first step's inputs already in the static tensors: the warm-up runs
    (which the CUDA graphs docs ask for: allocator pools, cuBLAS workspaces, lazy inits)
    then write exactly what that step writes. The stand-in warms up too, so the CPU tests
    exercise the same sequence of writes."""

    def __init__(self, step: Callable[[], list[torch.Tensor]], device: torch.device) -> None:
        self._step, self.graph, self.outputs = step, None, []
        if device.type != "cuda":
            for _ in range(2):
                self._step()
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._step()

    def replay(self) -> list[torch.Tensor]:
        if self.graph is None:
            self.outputs = self._step()
        else:
            self.graph.replay()
        return self.outputs


class StaticCacheRunner(Runner):
    """Runs a step with growing state over :class:`StaticSlots` of ``max_len`` positions a
    slot on ``device``; ``inplace`` is the model's in-place step, if it offers one."""

    def __init__(self, module: torch.nn.Module, signature: StepSignature, *, max_len: int, device: str = "cpu",
                 dtype: str = "fp32", graphs: bool = False, inplace: torch.nn.Module | None = None) -> None:
        if signature.state_kind != "growing" or (inplace is None and signature.mask is None):
            raise ValueError("StaticCacheRunner needs a signature with growing state, and a mask unless the "
                             "model offers an in-place step (Model.builders['torch.inplace_kv'])")
        if not signature.batch_first():
            raise ValueError("StaticCacheRunner slices its buffers by slot: the batch dimension must come first")
        self.signature, self.dtype = signature, dtype
        self.device, self.torch_dtype = torch.device(device), DTYPES[dtype]
        self.slot_capacity, self.graphs = int(max_len), graphs
        self.module = (inplace if inplace is not None else module).to(device=self.device, dtype=self.torch_dtype)
        self.module.eval()
        self.inplace = inplace is not None
        self._feeds = signature.feed_inputs
        self._state_index = {name: i for i, name in enumerate(signature.state_inputs)}
        self._state_out = {o: self._state_index[i] for i, o in signature.state}
        specs = [signature.spec(n) for n in signature.state_inputs]
        self._axes = [(s.axis(BATCH), s.axis(signature.state_axis)) for s in specs]
        self._live: dict[int, StaticSlots] = {}  # graphs: the one live state per size
        self._graphs: dict[int, tuple[_StepGraph, dict[str, torch.Tensor]]] = {}

    # -- state ------------------------------------------------------------------------

    @torch.inference_mode()
    def new_state(self, slots: int) -> StaticSlots:
        live = self._live.get(slots) if self.graphs else None
        # A captured graph reads the very buffers of the live state: reuse them (stale
        # positions are never read: each row only sees its own prefix).
        buffers = live.buffers if live is not None else [self._allocate(n, slots) for n in self.signature.state_inputs]
        state = StaticSlots(buffers, slots, self.slot_capacity)
        if self.graphs:
            self._live[slots] = state
        return state

    def _allocate(self, name: str, slots: int) -> torch.Tensor:
        spec = self.signature.spec(name)
        shape = self.signature.state_shape(name, slots, self.slot_capacity + 1)  # + the parking position
        dtype = self.torch_dtype if spec.dtype == FLOAT else getattr(torch, spec.dtype)
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def steps_together(self, state: SlotState, rows: list[int], new: int) -> bool:
        # Several tokens cannot be parked: a step that remaps slots goes one slot at a time.
        return new == 1 or not state.lanes(rows)[1]

    # -- one step ---------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, inputs: Mapping[str, Any], state: StaticSlots, rows: list[int], new: int) -> dict[str, Any]:
        if self.graphs and self._live.get(state.size) is not state:
            raise GenerationError(f"this state ({state.size} slots) was replaced by a later new_state({state.size}): "
                                  f"with cuda_graphs one state per number of slots is live at a time")
        slot, remap = state.lanes(rows)
        lanes = rows if slot is not None else state.all_rows  # the rows the module runs, in slot order
        # Where each lane's new positions go; a lane the step skips parks one token after its prefix.
        starts = torch.tensor([state.lengths[b] for b in lanes], device=self.device)
        pos = starts[:, None] + torch.arange(new, device=self.device)[None, :]
        size = state.size if remap else None
        feeds = {n: self._lanes(feed_tensor(inputs[n], self.signature.spec(n).dtype, self.device, self.torch_dtype),
                                rows, size) for n in self._feeds}
        if slot is None:
            buffers = state.buffers
        else:
            buffers = [b.narrow(ax, slot, 1) for b, (ax, _) in zip(state.buffers, self._axes, strict=True)]
        if self.graphs and new == 1 and slot is None:
            outs = self._replay(state, feeds, pos)
        else:
            outs = self._run(feeds, buffers, pos)
        names = [n for n in self.signature.output_names if n not in self._state_out]
        outputs = {n: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                   for n, v in zip(names, outs, strict=True)}
        return {n: v[rows] for n, v in outputs.items()} if remap else outputs

    @staticmethod
    def _lanes(value: torch.Tensor, rows: list[int], lanes: int | None) -> torch.Tensor:
        """A feed for all ``lanes`` slots, in slot order, from the stepped rows' own (zeros
        where parked); ``None``: the rows already are the slots in order."""
        if lanes is None:
            return value
        full = value.new_zeros((lanes, *value.shape[1:]))
        full[rows] = value
        return full

    def _run(self, feeds: dict[str, torch.Tensor], buffers: list[torch.Tensor], pos: torch.Tensor) -> list[Any]:
        """The module on ``buffers``: its non-state outputs; the new positions are in the buffers."""
        if self.inplace:
            return list(self.module(*[feeds[n] for n in self._feeds], pos, *buffers))
        sig, new, cap = self.signature, pos.shape[1], self.slot_capacity + 1
        cols = torch.arange(cap + new, device=self.device)[None, :]
        mask = ((cols < pos[:, :1]) | (cols >= cap)).to(torch.int64)  # the row's prefix, then the new positions
        args = [buffers[self._state_index[n]] if n in self._state_index else mask if n == sig.mask else feeds[n]
                for n in sig.input_names]
        outs = []
        for name, value in zip(sig.output_names, self.module(*args), strict=True):
            index = self._state_out.get(name)
            if index is None:
                outs.append(value)
                continue
            batch_axis, axis = self._axes[index]
            # present = past followed by the new positions: copy those into each row's slot.
            fresh = value.narrow(axis, cap, new).movedim((batch_axis, axis), (0, 1))
            rows = torch.arange(pos.shape[0], device=self.device)[:, None]
            buffers[index].movedim((batch_axis, axis), (0, 1))[rows, pos] = fresh
        return outs

    def _replay(self, state: StaticSlots, feeds: dict[str, torch.Tensor], pos: torch.Tensor) -> list[Any]:
        found = self._graphs.get(state.size)
        if found is not None:
            graph, static = found
            for n, t in feeds.items():
                static[n].copy_(t)
            static["__pos"].copy_(pos)
            return graph.replay()
        # This step's own inputs become the static tensors, so the warm-up writes what it writes.
        static = {**{n: t.clone() for n, t in feeds.items()}, "__pos": pos.clone()}
        step_feeds = {n: static[n] for n in feeds}
        graph = _StepGraph(lambda: self._run(step_feeds, state.buffers, static["__pos"]), self.device)
        self._graphs[state.size] = (graph, static)
        log.info("backend.static_cache.decode_graph", slots=state.size, max_len=self.slot_capacity,
                 device=str(self.device), cuda_graph=graph.graph is not None)
        return graph.replay()

    def close(self) -> None:
        self._graphs.clear()
        self._live.clear()
        self.module = None  # type: ignore[assignment]
