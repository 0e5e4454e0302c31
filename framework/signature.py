"""The step signature: what a model computes, declared so any backend can run it.

A model's step module is a ``torch.nn.Module`` whose ``forward`` takes the signature's
inputs positionally (in declaration order) and returns its outputs as a tuple (in
declaration order). Dimensions are either fixed ints or symbolic names; a backend that
compiles the graph (ONNX export) makes the symbolic ones dynamic.

``state`` pairs an input with the output that replaces it on the next step (a decoder's
KV cache: ``past.3.key`` -> ``present.3.key``). Backends own how state is stored; the
caller only hands back the opaque state object a runner returned. Nothing here assumes a
decoder: a diffusion denoiser declares inputs and outputs and no state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StepSignature", "TensorSpec"]

#: dtype name used for tensors that follow the model's compute dtype (fp32, bf16, fp16).
FLOAT = "float"


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


@dataclass(frozen=True)
class StepSignature:
    """Inputs, outputs and carried state of one step of a model's compute graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: (input name, output name) pairs whose output feeds the input on the next step.
    state: tuple[tuple[str, str], ...] = ()
    #: Symbolic dim along which state grows each step (``"past"`` for a KV cache).
    state_axis: str | None = None
    #: Free-form facts a backend may use (``{"kind": "decoder", "kv_heads": 3, ...}``).
    meta: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs + self.outputs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"step signature has duplicate tensor names: {sorted(dupes)}")
        for i, o in self.state:
            if i not in self.input_names or o not in self.output_names:
                raise ValueError(f"state pair ({i!r}, {o!r}) names an unknown input or output")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def state_inputs(self) -> list[str]:
        return [i for i, _ in self.state]

    @property
    def state_outputs(self) -> list[str]:
        return [o for _, o in self.state]

    @property
    def feed_inputs(self) -> list[str]:
        """Inputs the caller supplies each step (everything that is not state)."""
        carried = set(self.state_inputs)
        return [n for n in self.input_names if n not in carried]

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
        """Human-readable one tensor per line, e.g. for ``--cfg`` style debugging."""
        lines = []
        for kind, specs in (("in ", self.inputs), ("out", self.outputs)):
            for t in specs:
                dims = ", ".join(str(d) for d in t.shape)
                lines.append(f"{kind} {t.name}: {t.dtype}[{dims}]")
        return "\n".join(lines)
