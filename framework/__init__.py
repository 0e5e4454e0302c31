"""plugstack: run generative AI across hardware, with every layer a plugin.

The public API for plugin authors is re-exported here; everything else is private by
convention. Importing this package does not import torch or onnxruntime.
"""

from .app import App, RunContext
from .backend import Availability, Backend, DeviceInfo, Runner, StepOutput
from .errors import (
    BackendUnavailableError,
    ConfigError,
    DuplicatePluginError,
    GenerationError,
    ModelLoadError,
    PluginError,
    PlugstackError,
    UnknownPluginError,
    UnsupportedOptionError,
)
from .generation import GenerationResult, generate, generate_ids, stream
from .hookspecs import Register, hookimpl
from .model import Model, Tokenizer
from .sampling import SamplingParams
from .signature import StepSignature, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "App",
    "Availability",
    "Backend",
    "BackendUnavailableError",
    "ConfigError",
    "DeviceInfo",
    "DuplicatePluginError",
    "GenerationError",
    "GenerationResult",
    "Model",
    "ModelLoadError",
    "PluginError",
    "PlugstackError",
    "Register",
    "RunContext",
    "Runner",
    "SamplingParams",
    "StepOutput",
    "StepSignature",
    "TensorSpec",
    "Tokenizer",
    "UnknownPluginError",
    "UnsupportedOptionError",
    "generate",
    "generate_ids",
    "hookimpl",
    "stream",
]
