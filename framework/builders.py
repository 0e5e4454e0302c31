"""Model-owned implementations of a model's step for particular backends.

Every backend runs any model through its generic path (the eager module, a ``torch.onnx``
export). A model plugin that knows a faster way to run *its own* step on some backend (a
graph written with a runtime's fused operators, a KV cache its module writes in place)
offers it in :attr:`plugstack.Model.builders` under a key the backend documents. The
backend asks for its key, uses the builder unless the builder declines the request, and
otherwise falls back to its generic path, logging which path it took and why. A
third-party model plugin uses this door exactly as the built-in Llama plugin does, and a
backend never needs to know which model it runs.

Keys the built-in backends ask for:

``"onnx"``
    An :class:`OnnxGraphBuilder` (the ``onnx`` backend, ``backend.graph=auto|fused``).
``"torch.inplace_kv"``
    An :class:`InplaceKVBuilder` (the ``cuda`` backend's static KV cache).

Example, a model plugin's loader::

    return plugstack.Model(name="mine", module=module, signature=module.signature(), ...,
                           builders={"onnx": MyOnnxBuilder(), "torch.inplace_kv": my_inplace_step})
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from .model import Model

__all__ = ["STATE_LAYOUTS", "BuiltGraph", "GraphRequest", "InplaceKVBuilder", "OnnxGraphBuilder"]

#: Where a step puts its new positions along a growing state's axis: ``"concat"`` after the
#: whole past it was given (what an eager module's ``torch.cat`` does), ``"ragged"`` right
#: after each row's own prefix, whose length the graph reads from the mask's ones.
STATE_LAYOUTS = ("concat", "ragged")


@dataclass(frozen=True)
class GraphRequest:
    """What the backend asks a graph builder for."""

    #: Compute dtype of the graph (``"fp32"``, ``"fp16"``).
    dtype: str = "fp32"
    #: ONNX opset the backend runs (a builder may use a lower one).
    opset: int = 23
    #: ``None``: float weights. ``"native"``: the weights as the model's file stores them,
    #: block-quantised (``MatMulNBits``, see ``plugstack.nbits``); a builder whose model did
    #: not come block-quantised declines it.
    quantize: str | None = None
    #: ONNX Runtime's ``MatMulNBits`` ``accuracy_level`` for native weights: 0 computes in
    #: fp32 (the file's exact arithmetic), 4 quantises activations to int8 per block (faster).
    accuracy_level: int = 0


@dataclass(frozen=True)
class BuiltGraph:
    """How a runner must drive a graph a builder wrote (kept in the backend's cache)."""

    #: See :data:`STATE_LAYOUTS`.
    state_layout: str = "concat"
    #: The graph appends to its state in place when each past and its present are bound to
    #: one preallocated buffer (needs ``state_layout="ragged"``). The runner allocates one
    #: position more than a slot holds and parks the token of a row that a step does not
    #: advance there, so the graph must accept positions up to the context length.
    inplace_state: bool = False
    #: One step may add several positions to several rows that already hold state
    #: (False: the runner steps such requests row by row).
    multi_row_chunks: bool = True

    def __post_init__(self) -> None:
        if self.state_layout not in STATE_LAYOUTS:
            raise ValueError(f"state_layout must be one of {STATE_LAYOUTS}, not {self.state_layout!r}")
        if self.inplace_state and self.state_layout != "ragged":
            raise ValueError("inplace_state needs state_layout='ragged' (new positions after each row's prefix)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class OnnxGraphBuilder(Protocol):
    """Writes a model's step as an ONNX graph whose inputs and outputs follow its signature
    (inputs the graph does not read may be left out; the runner still requires them)."""

    #: Bump whenever the graph it writes changes: part of the backend's cache key.
    version: int

    def declines(self, model: Model, request: GraphRequest) -> str:
        """Why this builder cannot build ``request`` for ``model``; ``""`` when it can."""
        ...

    def build(self, model: Model, path: Path, request: GraphRequest) -> BuiltGraph:
        """Write the graph to ``path`` (one self-contained ``.onnx`` file)."""
        ...


class InplaceKVBuilder(Protocol):
    """``builder(model) -> module``: the step with its growing state in preallocated buffers.

    ``module.forward(*feeds, cache_position, *buffers)`` takes the signature's feed inputs
    in order, then ``cache_position`` (``[batch, seq]`` int64: the buffer position of each
    new token), then one buffer per state input (the state axis sized to the buffer's
    capacity). It writes the new positions into the buffers itself, attends to each row's
    positions up to its own, and returns the non-state outputs in signature order.
    """

    def __call__(self, model: Model) -> torch.nn.Module: ...
