"""Slot-addressed state: what a Runner keeps between steps, for up to ``size`` sequences.

A state has ``size`` slots. A slot is free or holds one sequence. A caller *admits* a
sequence into a free slot (its prompt is prefilled while the other slots keep theirs),
*steps* any set of live slots together (each row of a step's inputs goes to one slot),
and *releases* a slot so that a later sequence can reuse it. Slot ``s`` of a growing
state holds exactly that sequence's positions ``0 .. length(s) - 1``: no padding, so a
sequence's results never depend on which other sequences share the state.

:class:`SlotState` is the bookkeeping every runner's state shares (lengths, which slots
are live, the room left); a runner subclasses it to hold its storage. :class:`TensorSlots`
is the storage of runners that keep each slot's tensors apart (the eager runner, ONNX
Runtime without shared buffers): public, so a third-party backend can reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import GenerationError
from .signature import BATCH, StepSignature

if TYPE_CHECKING:
    import torch

__all__ = ["SlotState", "TensorSlots"]


class SlotState:
    """Which of ``size`` slots hold a sequence, and how many positions each holds.

    ``capacity`` bounds the positions of one slot (``None``: unbounded, e.g. a
    concatenating KV cache). Runners update it through :meth:`advance` and :meth:`release`.
    """

    def __init__(self, size: int, capacity: int | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise GenerationError(f"a state needs at least one slot, got {size!r}")
        self.size = size
        self.capacity = capacity
        self.lengths = [0] * size
        self.live = [False] * size
        self.all_rows = list(range(size))

    def rows(self, slots: Sequence[int] | None, count: int) -> list[int]:
        """The slots a step of ``count`` rows goes to (``None``: every slot, in order)."""
        if slots is None:
            if count != self.size:
                raise GenerationError(
                    f"the step has {count} rows but the state has {self.size} slots: pass slots=[...] "
                    f"naming the slot of each row, or make the state with new_state({count})")
            return self.all_rows
        rows = list(slots)
        if len(rows) != count:
            raise GenerationError(f"slots={rows} names {len(rows)} slots but the step has {count} rows")
        if len(set(rows)) != len(rows) or any(not 0 <= s < self.size for s in rows):
            raise GenerationError(f"slots={rows} must be distinct slot numbers in 0..{self.size - 1}")
        return rows

    def check_room(self, rows: Sequence[int], new: int) -> None:
        """Raise :class:`GenerationError` if a row would outgrow its slot."""
        if self.capacity is None:
            return
        for s in rows:
            if self.lengths[s] + new > self.capacity:
                raise GenerationError(
                    f"slot {s} holds {self.lengths[s]} positions; {new} more exceed its capacity of "
                    f"{self.capacity}. Shorten the request, or raise the backend's cache length "
                    f"(e.g. backend.max_cache_len), up to the model's context length.")

    def advance(self, rows: Sequence[int], new: int) -> None:
        for s in rows:
            self.lengths[s] += new
            self.live[s] = True

    def release(self, slot: int) -> None:
        """Free ``slot``: its positions are forgotten and a later admission starts from 0."""
        if not 0 <= slot < self.size:
            raise GenerationError(f"slot {slot} does not exist; this state has slots 0..{self.size - 1}")
        self.lengths[slot] = 0
        self.live[slot] = False

    def length(self, slot: int) -> int:
        """Positions ``slot`` holds."""
        if not 0 <= slot < self.size:
            raise GenerationError(f"slot {slot} does not exist; this state has slots 0..{self.size - 1}")
        return self.lengths[slot]

    def lanes(self, rows: list[int]) -> tuple[int | None, bool]:
        """How a step of ``rows`` runs on buffers preallocated for every slot: ``(slot, remap)``.
        One row of a larger state runs on that slot's rows of the buffers (``slot``); any
        other step runs every slot in slot order, and ``remap`` says the rows are not exactly
        that (some slots skipped, which then park a token past their prefix, or another order)."""
        if len(rows) == 1 and self.size > 1:
            return rows[0], False
        return None, rows != self.all_rows

    def free_slot(self) -> int | None:
        """The first free slot, or ``None`` when every slot is live."""
        return next((s for s, live in enumerate(self.live) if not live), None)


class TensorSlots(SlotState):
    """Each slot's state tensors kept apart (batch 1, exactly its own positions).

    A step over several rows :meth:`gather` s them into one batch — growing state padded to
    the longest row, with the mask that hides the padding — and :meth:`scatter` s the step's
    state outputs back, keeping each row's real positions only. ``layout`` says where a
    graph puts a step's new positions along the state axis: ``"concat"`` after the whole
    (padded) past, as an eager module's ``torch.cat`` does; ``"ragged"`` right after each
    row's own prefix (ONNX Runtime's GroupQueryAttention).
    """

    def __init__(self, signature: StepSignature, size: int, initial: Sequence[torch.Tensor],
                 layout: str = "concat", capacity: int | None = None) -> None:
        super().__init__(size, capacity)
        if layout not in ("concat", "ragged"):
            raise ValueError(f"layout must be 'concat' or 'ragged', not {layout!r}")
        self.signature, self.layout = signature, layout
        self._initial = list(initial)  # one row's empty (growing) or initial (fixed) tensors
        specs = [signature.spec(n) for n in signature.state_inputs]
        self._batch_axis = [s.axis(BATCH) or 0 for s in specs]
        self._state_axis = [s.axis(signature.state_axis) if signature.state_axis else None for s in specs]
        self.tensors: list[list[torch.Tensor]] = [list(self._initial) for _ in range(size)]

    def release(self, slot: int) -> None:
        super().release(slot)
        self.tensors[slot] = list(self._initial)

    def gather(self, rows: Sequence[int], new: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The state inputs of a step over ``rows`` and, when the signature has a ``mask``,
        the mask (int64, 1 = a real position): ``[rows, longest + new]`` for growing state,
        ``[rows, new]`` (all real) otherwise."""
        import torch

        if len(rows) == 1:
            return list(self.tensors[rows[0]]), self._mask(rows, self.lengths[rows[0]], new)
        longest = max(self.lengths[s] for s in rows)
        past = []
        for i, (b_ax, s_ax) in enumerate(zip(self._batch_axis, self._state_axis, strict=True)):
            parts = [self._padded(self.tensors[s][i], s_ax, longest - self.lengths[s]) for s in rows]
            past.append(torch.cat(parts, dim=b_ax))
        return past, self._mask(rows, longest, new)

    @staticmethod
    def _padded(t: torch.Tensor, axis: int | None, pad: int) -> torch.Tensor:
        import torch

        if axis is None or pad == 0:
            return t
        shape = list(t.shape)
        shape[axis] = pad
        return torch.cat([t, t.new_zeros(shape)], dim=axis)

    def _mask(self, rows: Sequence[int], longest: int, new: int) -> torch.Tensor | None:
        import torch

        if self.signature.mask is None:
            return None
        if not self.signature.state_axis:  # nothing cached: every new position is real
            return torch.ones(len(rows), new, dtype=torch.int64)
        if len(rows) == 1:
            return torch.ones(1, longest + new, dtype=torch.int64)
        lengths = torch.tensor([self.lengths[s] for s in rows])[:, None]
        cols = torch.arange(longest + new)[None, :]
        if self.layout == "ragged":
            keep = cols < lengths + new
        else:  # concat: the row's own prefix, then the new positions after the padded past
            keep = (cols < lengths) | (cols >= longest)
        return keep.to(torch.int64)

    def scatter(self, rows: Sequence[int], present: Sequence[torch.Tensor], new: int) -> None:
        """Keep each row's part of the step's state outputs (views, no copy where possible)."""
        if len(rows) == 1:
            self.tensors[rows[0]] = list(present)
            return
        longest = max(self.lengths[s] for s in rows)
        for i, (b_ax, s_ax) in enumerate(zip(self._batch_axis, self._state_axis, strict=True)):
            for j, s in enumerate(rows):
                row = present[i].narrow(b_ax, j, 1)
                if s_ax is not None:
                    row = self._real_positions(row, s_ax, self.lengths[s], longest, new)
                self.tensors[s][i] = row

    def _real_positions(self, row: Any, axis: int, length: int, longest: int, new: int) -> Any:
        import torch

        if self.layout == "ragged" or length == longest:
            return row.narrow(axis, 0, length + new)
        return torch.cat([row.narrow(axis, 0, length), row.narrow(axis, longest, new)], dim=axis)
