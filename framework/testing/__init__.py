"""Test kits for plugin authors (``plugstack.testing``); needs pytest, imports torch lazily.

- :class:`BackendConformance`: the tests every backend must pass (see its module docs).
- :func:`tiny_decoder_model`: a tiny random Llama wrapped as a :class:`plugstack.Model`.
- :class:`DecoderDriver`: drives a Runner like a generation loop (left padding, decode).
"""

from .backend_kit import BackendConformance, DecoderDriver
from .tiny_models import tiny_decoder_model, tiny_llama_config

__all__ = ["BackendConformance", "DecoderDriver", "tiny_decoder_model", "tiny_llama_config"]
