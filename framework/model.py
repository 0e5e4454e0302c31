"""What a model plugin hands to a backend: a step module, its signature and a tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ModelLoadError
from .signature import StepSignature

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch

__all__ = ["Model", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, plus the special tokens and chat template a model defines."""

    #: Token ids that end a sequence (e.g. ``<|im_end|>``).
    eos_token_ids: tuple[int, ...]
    #: Id a model uses for padding (for applications; plugstack's loop never pads).
    pad_token_id: int

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (adds BOS only where the model's metadata asks for it)."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; may end in U+FFFD where a multi-byte character is cut."""
        ...

    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render ``messages`` with the model's (sandboxed) chat template."""
        ...


@dataclass
class Model:
    """A loaded model: what to compute (``module`` + ``signature``) and how to talk to it.

    ``module.forward(*inputs)`` follows ``signature``; backends may run it eagerly, export
    it or compile it. ``example_inputs`` builds valid inputs for tracing/export (with every
    symbolic dimension >= 2 so exporters do not specialise them).

    ``module`` may be given as ``None`` with ``make_module``: it is then built on first use
    (``model.module``), so a backend that never needs it (a cached graph with the weights
    in it) never pays for it; :attr:`module_built` says whether it has been.
    """

    name: str
    #: ``"decoder"``, ``"denoiser"``, ... for applications and listings (backends never
    #: branch on it: they read the signature).
    kind: str
    module: torch.nn.Module | None
    signature: StepSignature
    example_inputs: Callable[..., tuple[torch.Tensor, ...]]
    tokenizer: Tokenizer | None = None
    #: Maximum positions a sequence may reach; ``None``: no limit. One value with the
    #: signature's ``meta["context_length"]`` (either may be given; they must agree).
    context_length: int | None = None
    #: Stable digest of the weights (hex); part of compiled-artifact cache keys.
    weights_digest: str = ""
    #: Where the weights came from (file or directory), for logs and errors.
    source: str = ""
    #: Hyper-parameters and anything else worth logging (JSON-serialisable).
    info: dict[str, Any] = field(default_factory=dict)
    #: Model-owned implementations of the step for particular backends, by the key each
    #: backend documents (``"onnx"``, ``"torch.inplace_kv"``): see ``plugstack.builders``.
    builders: dict[str, Any] = field(default_factory=dict)
    #: What the model offers applications, by the key each app documents: ``"train"`` (a
    #: callable returning a :class:`plugstack.Trainable`, for ``app=train``), ``"image"``
    #: (a :class:`plugstack.ImageSampler`, for ``app=image``). Backends never read it.
    offers: dict[str, Any] = field(default_factory=dict)
    #: Builds ``module`` when it was given as ``None`` (called once, on first use).
    make_module: Callable[[], torch.nn.Module] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.module is None:
            if self.make_module is None:
                raise ModelLoadError(f"model {self.name!r} has no module and no make_module to build one.")
            del self.module  # built by __getattr__ on first use
        declared = self.signature.meta.get("context_length")
        if self.context_length is None:
            self.context_length = int(declared) if declared else None
        elif declared is None:
            self.signature.meta["context_length"] = self.context_length  # what runners and the loop read
        elif int(declared) != self.context_length:
            raise ModelLoadError(f"model {self.name!r} says context_length={self.context_length} but its "
                                 f"signature's meta says {declared}: give one value.")

    def __getattr__(self, name: str) -> Any:  # only reached for what the instance lacks
        make = self.__dict__.get("make_module")
        if name != "module" or make is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.module = make()
        return self.module

    @property
    def module_built(self) -> bool:
        """Is ``module`` in memory (given, or built since)?"""
        return "module" in self.__dict__
