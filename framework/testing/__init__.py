"""Test kits for plugin authors (``plugstack.testing``); needs pytest, imports torch lazily.

- :class:`BackendConformance`: the tests every backend must pass, on any model (see its module docs).
- :class:`ModelConformance`: the tests every model plugin must pass (see its module docs).
- :class:`SlotDriver`: drives a Runner's slots like the generation loop does.
- :func:`tiny_decoder_model`, :func:`tiny_recurrent_model`, :func:`tiny_denoiser_model`: tiny random
  models of three shapes (growing KV cache, fixed-size state, no state).
"""

from .backend_kit import BackendConformance
from .driver import SlotDriver
from .model_kit import ModelConformance
from .tiny_models import (
    KIT_MODELS,
    ByteTokenizer,
    tiny_decoder_model,
    tiny_denoiser_model,
    tiny_llama_config,
    tiny_recurrent_model,
)

__all__ = ["KIT_MODELS", "BackendConformance", "ByteTokenizer", "ModelConformance", "SlotDriver",
           "tiny_decoder_model", "tiny_denoiser_model", "tiny_llama_config", "tiny_recurrent_model"]
