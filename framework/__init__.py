"""plugstack: run generative AI across hardware, with every layer a plugin.

The public API for plugin authors is re-exported here; everything else is private by
convention. Importing this package does not import torch or onnxruntime: the one name
that needs torch, :class:`EagerRunner`, is loaded on first use (module ``__getattr__``).
"""

from typing import TYPE_CHECKING, Any

from .app import App, RunContext
from .backend import Availability, Backend, DeviceInfo, Runner, RunnerWrapper, StepOutput
from .builders import BuiltGraph, GraphRequest, InplaceKVBuilder, OnnxGraphBuilder
from .errors import (
    BackendUnavailableError,
    ConfigError,
    DuplicatePluginError,
    GenerationError,
    ModelLoadError,
    PluginError,
    PlugstackError,
    StorageError,
    UnknownPluginError,
    UnsupportedOptionError,
)
from .generation import GenerationResult, generate, generate_ids, stream
from .hookspecs import Register, hookimpl
from .images import ImageSampler
from .model import Model, Tokenizer
from .registry import create_backend
from .sampling import SamplingParams
from .signature import StepSignature, TensorSpec
from .state import SlotState, TensorSlots
from .training import Trainable

if TYPE_CHECKING:
    from .backends.eager import EagerRunner

__version__ = "0.1.0"

__all__ = [
    "App",
    "Availability",
    "Backend",
    "BackendUnavailableError",
    "BuiltGraph",
    "ConfigError",
    "DeviceInfo",
    "DuplicatePluginError",
    "EagerRunner",
    "GenerationError",
    "GenerationResult",
    "GraphRequest",
    "ImageSampler",
    "InplaceKVBuilder",
    "Model",
    "ModelLoadError",
    "OnnxGraphBuilder",
    "PluginError",
    "PlugstackError",
    "Register",
    "RunContext",
    "Runner",
    "RunnerWrapper",
    "SamplingParams",
    "SlotState",
    "StepOutput",
    "StepSignature",
    "StorageError",
    "TensorSlots",
    "TensorSpec",
    "Tokenizer",
    "Trainable",
    "UnknownPluginError",
    "UnsupportedOptionError",
    "create_backend",
    "generate",
    "generate_ids",
    "hookimpl",
    "stream",
]


def __getattr__(name: str) -> Any:
    if name == "EagerRunner":  # imports torch: only when asked for
        from .backends.eager import EagerRunner

        return EagerRunner
    raise AttributeError(f"module 'plugstack' has no attribute {name!r}")
