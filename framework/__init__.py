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
from .hookspecs import Register, hookimpl
from .model import Model, Tokenizer
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
    "Model",
    "ModelLoadError",
    "PluginError",
    "PlugstackError",
    "Register",
    "RunContext",
    "Runner",
    "StepOutput",
    "StepSignature",
    "TensorSpec",
    "Tokenizer",
    "UnknownPluginError",
    "UnsupportedOptionError",
    "hookimpl",
]
