"""The step signature: what a model computes, declared so any backend can run it.

A model's step module is a ``torch.nn.Module`` whose ``forward`` takes the signature's
inputs positionally (in declaration order) and returns its outputs as a tuple (in
declaration order). Dimensions are fixed ints or symbolic names; a backend that compiles
the graph (ONNX export) makes the symbolic ones dynamic. The name ``"batch"`` is reserved
for the rows of a step: one row per sequence (a runner's *slot*, see ``plugstack.state``).

``state`` pairs an input with the output that replaces it on the next step. Backends own
how state is stored; callers address it by slot. Three kinds are first-class:

* **growing** state (``state_axis`` set, a decoder's KV cache): along ``state_axis`` each
  state output is its input followed by the step's new positions (``past`` -> ``present``);
* **fixed-size** state (``state_axis=None``, a recurrent model's hidden vector);
* **no** state (a diffusion denoiser): every step stands alone.

Roles a runner or the generation loop fills in themselves are declared by name: ``mask``
(which of the cached + new positions of a row hold real tokens; the runner builds it from
each slot's length) and ``positions`` (each new token's index in its sequence; the loop
feeds the slot's length plus 0, 1, ...). ``new_axis`` names the dimension of the feed
inputs that counts a step's new positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = ["BATCH", "StepSignature", "TensorSpec"]

#: dtype name used for tensors that follow the model's compute dtype (fp32, bf16, fp16).
FLOAT = "float"
#: The reserved dimension name of a step's rows.
BATCH = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a step: dtype name and shape (ints or symbolic dim names)."""

    name: str
    #: ``"int64"``, ``"float32"`` ... or ``"float"`` for the model's compute dtype.
    dtype: str
    shape: tuple[int | str, ...]

    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name, for every non-fixed dimension."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def axis(self, dim: str) -> int | None:
        """Index of the dimension named ``dim`` in this tensor, or ``None``."""
        return self.shape.index(dim) if dim in self.shape else None


@dataclass(frozen=True)
class StepSignature:
    """Inputs, outputs and carried state of one step of a model's compute graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: (input name, output name) pairs whose output feeds the input on the next step.
    state: tuple[tuple[str, str], ...] = ()
    #: Dim along which state grows by the new positions each step (``"past"`` for a KV
    #: cache); ``None`` for fixed-size state.
    state_axis: str | None = None
    #: Dim of the feed inputs that counts a step's new positions (``"seq"``); ``None`` when
    #: a step is one whole item (a denoiser).
    new_axis: str | None = None
    #: Input the runner fills: ``[batch, cached + new]``, 1 where a position holds a real
    #: token of the row. Needed to step rows of different lengths together.
    mask: str | None = None
    #: Input the generation loop fills with each new token's position in its sequence.
    positions: str | None = None
    #: Free-form facts a backend or app may use (``{"context_length": 8192, ...}``).
    meta: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs + self.outputs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"step signature has duplicate tensor names: {sorted(dupes)}")
        for i, o in self.state:
            if i not in self.input_names or o not in self.output_names:
                raise ValueError(f"state pair ({i!r}, {o!r}) names an unknown input or output")
        for role in ("mask", "positions"):
            name = getattr(self, role)
            if name is not None and (name not in self.input_names or name in self.state_inputs):
                raise ValueError(f"{role}={name!r} must name a non-state input; inputs are {self.input_names}")
        if self.state_axis is not None and not self.state:
            raise ValueError(f"state_axis={self.state_axis!r} is set but the signature declares no state")
        if self.new_axis is not None and self._new_input is None:
            raise ValueError(f"new_axis={self.new_axis!r} is not a dimension of any feed input")
        if self.feed_inputs and not self._batch_inputs:
            raise ValueError(f"no feed input has the {BATCH!r} dimension: name the rows of "
                             f"{self.feed_inputs} {BATCH!r}")

    # The derived views are cached (read every step); frozen dataclasses allow it, since
    # cached_property writes the instance dict directly. Callers must not mutate the lists.
    @cached_property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @cached_property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @cached_property
    def state_inputs(self) -> list[str]:
        return [i for i, _ in self.state]

    @cached_property
    def state_outputs(self) -> list[str]:
        return [o for _, o in self.state]

    @cached_property
    def feed_inputs(self) -> list[str]:
        """Inputs the caller supplies each step (neither state nor the runner-filled mask)."""
        skip = {*self.state_inputs, self.mask}
        return [n for n in self.input_names if n not in skip]

    @cached_property
    def state_kind(self) -> str:
        """``"growing"``, ``"fixed"`` or ``"none"`` (see the module docstring)."""
        if not self.state:
            return "none"
        return "growing" if self.state_axis is not None else "fixed"

    @cached_property
    def _new_input(self) -> tuple[str, int] | None:
        """(feed input, axis) that carries ``new_axis``."""
        for name in self.feed_inputs:
            axis = self.spec(name).axis(self.new_axis) if self.new_axis else None
            if axis is not None:
                return name, axis
        return None

    def batch_first(self) -> bool:
        """Is ``batch`` the first dimension of every feed, state and output tensor that has it?
        (Runners that slice preallocated buffers by slot need it.)"""
        return all(t.axis(BATCH) in (None, 0) for t in self.inputs + self.outputs)

    def new_positions(self, inputs: Mapping[str, Any]) -> int:
        """How many positions a step with these inputs adds to each row (1 without ``new_axis``)."""
        where = self._new_input
        if where is None:
            return 1
        name, axis = where
        try:
            return int(inputs[name].shape[axis])
        except KeyError:
            raise KeyError(f"missing input {name!r}; this step needs {self.feed_inputs}") from None

    @cached_property
    def _batch_inputs(self) -> list[tuple[str, int]]:
        """(feed input, axis) pairs that carry the ``batch`` dimension."""
        found = [(n, self.spec(n).axis(BATCH)) for n in self.feed_inputs]
        return [(n, a) for n, a in found if a is not None]

    def rows(self, inputs: Mapping[str, Any]) -> int:
        """How many rows (sequences) these inputs hold."""
        for name, axis in self._batch_inputs:
            if name in inputs:
                return int(inputs[name].shape[axis])
        raise KeyError(f"no input with a {BATCH!r} dimension among {sorted(inputs)}; "
                       f"this step needs {self.feed_inputs}")

    def state_shape(self, name: str, rows: int, positions: int) -> list[int]:
        """The shape of state input ``name`` for ``rows`` rows holding ``positions`` positions
        along ``state_axis`` (ignored for fixed-size state)."""
        shape = [rows if d == BATCH else positions if d == self.state_axis else d for d in self.spec(name).shape]
        if any(isinstance(d, str) for d in shape):
            from .errors import ModelLoadError

            raise ModelLoadError(f"the step signature's state tensor {name!r} leaves a dimension other than "
                                 f"{BATCH!r} and state_axis unsized: {list(self.spec(name).shape)}. Give it a size.")
        return shape

    def spec(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """For ``torch.onnx.export``: tensor name -> {axis: symbolic name}."""
        axes = {t.name: t.dynamic_axes() for t in self.inputs + self.outputs}
        return {k: v for k, v in axes.items() if v}

    def describe(self) -> str:
        """Human-readable one tensor per line, then the roles (cache keys, debugging)."""
        lines = []
        for kind, specs in (("in ", self.inputs), ("out", self.outputs)):
            for t in specs:
                dims = ", ".join(str(d) for d in t.shape)
                lines.append(f"{kind} {t.name}: {t.dtype}[{dims}]")
        roles = {"state_axis": self.state_axis, "new_axis": self.new_axis, "mask": self.mask,
                 "positions": self.positions}
        lines += [f"{k}: {v}" for k, v in roles.items() if v is not None]
        return "\n".join(lines)
