"""A decoder runner whose KV cache is preallocated once and written in place.

The eager runner grows the cache by concatenation: every step allocates new tensors of a
new shape. Here each state holds, per ``past.*`` input, one buffer of ``max_len``
positions. Every step passes the *whole* buffer as ``past`` with an attention mask that
hides the slots not written yet, then copies the new positions of each ``present.*``
output into the buffer at the next free slots (``index_copy_``). Because the model
applies rotary embeddings from ``position_ids`` (never from slot numbers) and the mask
hides unused slots, the logits equal the eager runner's; and because every decode step
has the same shapes and buffer addresses, it can be captured once as a CUDA graph and
replayed.

Cost: attention reads ``max_len`` slots each step whatever the sequence length, so cap
``max_len`` near the longest sequence you need.

The runner is device-agnostic so it is tested on the CPU. With ``graphs=True`` on a CUDA
device the one-token decode step is captured per batch size; on other devices a stand-in
re-runs the same static-buffer step, which exercises everything but the capture itself.

Left padding works as in the eager runner: the caller's ``attention_mask`` (one entry per
past + new position) marks padded slots, and ``position_ids`` are per row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
import torch

from plugstack.backend import Runner, StepOutput
from plugstack.backends.eager import DTYPES
from plugstack.errors import GenerationError
from plugstack.signature import FLOAT, StepSignature

log = structlog.get_logger("plugstack.backends.cuda")

#: Symbolic dims of the decoder step this runner understands (see plugstack.plugins.llama).
SEQ, TOTAL = "seq", "total"


class StaticCache:
    """One sequence batch's KV buffers and how many positions are filled.

    ``run`` updates it in place and returns it: pass the returned object to the next
    step and do not reuse an older handle (its buffers have moved on).
    """

    def __init__(self, buffers: list[torch.Tensor], batch_size: int) -> None:
        self.buffers = buffers
        self.batch_size = batch_size
        self.length = 0


class _StepGraph:
    """The one-token decode step for one batch size, with static input/output tensors.

    On CUDA the step is captured as a ``torch.cuda.CUDAGraph`` and ``replay`` launches it
    after copying new inputs into the static ones. Elsewhere ``replay`` calls the step on
    the same static tensors (a stand-in that tests the static-buffer logic on the CPU).
    """

    def __init__(self, step: Callable[[], list[torch.Tensor]], device: torch.device) -> None:
        self._step = step
        self.graph = None
        self.outputs: list[torch.Tensor] = []
        if device.type == "cuda":
            self._capture(device)

    def _capture(self, device: torch.device) -> None:
        # Warm up on a side stream (allocator pools, cuBLAS workspaces, lazy inits) as the
        # CUDA graphs docs ask; the warm-up writes the same values the real step writes.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self._step()
        self.graph = graph

    def replay(self) -> list[torch.Tensor]:
        if self.graph is None:
            self.outputs = self._step()
        else:
            self.graph.replay()
        return self.outputs


class StaticCacheRunner(Runner):
    """Runs a decoder step (``input_ids, position_ids, attention_mask, *past``) with a
    static KV cache of ``max_len`` positions on ``device``.

    ``graphs=True`` captures the one-token decode step per batch size and keeps one live
    state per batch size: ``new_state(b)`` hands out that batch size's buffers again (reset),
    and running an older state of the same batch size raises GenerationError.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        signature: StepSignature,
        *,
        max_len: int,
        device: str = "cpu",
        dtype: str = "fp32",
        graphs: bool = False,
    ) -> None:
        if not signature.state or signature.state_axis is None:
            raise ValueError("StaticCacheRunner needs a step signature with state (a KV cache)")
        self.signature = signature
        self.dtype = dtype
        self.device = torch.device(device)
        self.torch_dtype = DTYPES[dtype]
        self.max_len = int(max_len)
        self.graphs = graphs
        self.module = module.to(device=self.device, dtype=self.torch_dtype).eval()

        feeds = signature.feed_inputs
        masks = [n for n in feeds if TOTAL in signature.spec(n).shape]
        seqs = [n for n in feeds if SEQ in signature.spec(n).shape]
        if len(masks) != 1 or not seqs:
            raise ValueError(
                f"StaticCacheRunner needs one attention-mask input over {TOTAL!r} positions and "
                f"token inputs over {SEQ!r}; got inputs {feeds}"
            )
        self._mask_name, self._seq_name = masks[0], seqs[0]
        self._state_index = {name: i for i, name in enumerate(signature.state_inputs)}
        self._state_out = {o: self._state_index[i] for i, o in signature.state}
        # Axis along which each state tensor holds positions (the same index in past/present).
        self._axis = [signature.spec(n).shape.index(signature.state_axis) for n in signature.state_inputs]
        self._live: dict[int, StaticCache] = {}  # graphs: the one live state per batch size
        self._graphs: dict[int, _StepGraph] = {}
        self._static: dict[int, dict[str, torch.Tensor]] = {}

    # -- state ------------------------------------------------------------------------

    @torch.inference_mode()
    def new_state(self, batch_size: int) -> StaticCache:
        live = self._live.get(batch_size) if self.graphs else None
        if live is not None:
            # The captured graph reads these very buffers: reuse them, emptied.
            for buf in live.buffers:
                buf.zero_()
            cache = StaticCache(live.buffers, batch_size)
        else:
            cache = StaticCache([self._allocate(name, batch_size) for name in self.signature.state_inputs], batch_size)
        if self.graphs:
            self._live[batch_size] = cache
        return cache

    def _allocate(self, name: str, batch_size: int) -> torch.Tensor:
        spec = self.signature.spec(name)
        shape = [
            batch_size if d == "batch" else self.max_len if d == self.signature.state_axis else d for d in spec.shape
        ]
        if any(isinstance(d, str) for d in shape):
            raise ValueError(f"cannot size state tensor {name!r}: unknown dim in {spec.shape}")
        dtype = self.torch_dtype if spec.dtype == FLOAT else getattr(torch, spec.dtype)
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def state_length(self, state: StaticCache) -> int:
        return state.length

    # -- one step ---------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, torch.Tensor], state: Any = None) -> StepOutput:
        missing = [n for n in self.signature.feed_inputs if n not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; this step needs {self.signature.feed_inputs}")
        batch, new = inputs[self._seq_name].shape[:2]
        if state is None:
            state = self.new_state(batch)
        self._check(state, batch, new, inputs[self._mask_name])
        past = state.length
        mask = self._static_mask(inputs[self._mask_name], past, new)
        feeds = {n: inputs[n] for n in self.signature.feed_inputs if n != self._mask_name}

        if self.graphs and new == 1:
            outs = self._replay(state, feeds, mask, past)
        else:
            write_pos = torch.arange(past, past + new, device=self.device)
            args = {n: t.to(self.device) for n, t in feeds.items()}
            args[self._mask_name] = mask.to(self.device)
            outs = self._step(args, state.buffers, write_pos)
        state.length = past + new
        names = [n for n in self.signature.output_names if n not in self._state_out]
        # Always copy: graph outputs are overwritten by the next replay.
        outputs = {
            n: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype, copy=True)
            for n, v in zip(names, outs, strict=True)
        }
        return StepOutput(outputs, state)

    def _check(self, state: StaticCache, batch: int, new: int, mask: torch.Tensor) -> None:
        if not isinstance(state, StaticCache):
            raise GenerationError(
                f"state must come from this runner's new_state() or run(), got {type(state).__name__}"
            )
        if self.graphs and self._live.get(state.batch_size) is not state:
            raise GenerationError(
                f"this state (batch {state.batch_size}) was replaced by a later new_state({state.batch_size}): "
                "with cuda_graphs one state per batch size is live at a time"
            )
        if batch != state.batch_size:
            raise GenerationError(f"inputs have batch {batch} but the state was made for batch {state.batch_size}")
        if state.length + new > self.max_len:
            raise GenerationError(
                f"{state.length} cached + {new} new positions exceed the static KV cache of {self.max_len} "
                "positions; raise backend.max_cache_len (up to the model's context length) or shorten the request"
            )
        if tuple(mask.shape) != (batch, state.length + new):
            raise GenerationError(
                f"{self._mask_name} has shape {tuple(mask.shape)}, expected ({batch}, {state.length + new}): "
                "one entry per cached + new position"
            )

    def _static_mask(self, mask: torch.Tensor, past: int, new: int) -> torch.Tensor:
        """The caller's mask laid out over the static ``past`` (max_len slots) + new positions."""
        full = torch.zeros(mask.shape[0], self.max_len + new, dtype=mask.dtype, device=mask.device)
        full[:, :past] = mask[:, :past]
        full[:, self.max_len :] = mask[:, past:]
        return full

    def _step(
        self, args: dict[str, torch.Tensor], buffers: list[torch.Tensor], write_pos: torch.Tensor
    ) -> list[torch.Tensor]:
        """Run the module on the full buffers, write the new positions back; non-state outputs."""
        ordered = [
            buffers[self._state_index[n]] if n in self._state_index else args[n] for n in self.signature.input_names
        ]
        results = self.module(*ordered)
        outs = []
        for name, value in zip(self.signature.output_names, results, strict=True):
            idx = self._state_out.get(name)
            if idx is None:
                outs.append(value)
                continue
            axis = self._axis[idx]
            # present = cat(past buffer, new): the new positions follow the max_len slots.
            fresh = value.narrow(axis, self.max_len, value.shape[axis] - self.max_len)
            buffers[idx].index_copy_(axis, write_pos, fresh)
        return outs

    def _replay(
        self, state: StaticCache, feeds: dict[str, torch.Tensor], mask: torch.Tensor, past: int
    ) -> list[torch.Tensor]:
        batch = state.batch_size
        static = self._static.get(batch)
        if static is None:
            static = {n: torch.zeros_like(t, device=self.device) for n, t in feeds.items()}
            static[self._mask_name] = torch.zeros_like(mask, device=self.device)
            static["__write_pos"] = torch.zeros(1, dtype=torch.int64, device=self.device)
            self._static[batch] = static
        for n, t in feeds.items():
            static[n].copy_(t)
        static[self._mask_name].copy_(mask)
        static["__write_pos"].fill_(past)
        graph = self._graphs.get(batch)
        if graph is None:
            step = lambda: self._step(static, state.buffers, static["__write_pos"])  # noqa: E731
            graph = _StepGraph(step, self.device)
            self._graphs[batch] = graph
            log.info(
                "backend.static_cache.decode_graph",
                batch=batch,
                max_len=self.max_len,
                device=str(self.device),
                cuda_graph=graph.graph is not None,
            )
        return graph.replay()

    def close(self) -> None:
        self._graphs.clear()
        self._static.clear()
        self._live.clear()
        self.module = None  # type: ignore[assignment]
