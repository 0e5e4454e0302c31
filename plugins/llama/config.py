"""Options of the ``llama`` model plugin (the ``model`` config group). Light: no torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class LlamaModelConfig:
    """Where the weights of a Llama-family decoder come from.

    ``path`` (a ``.gguf`` file or a Hugging Face directory with ``config.json`` and
    ``*.safetensors``) wins over ``source``, a known-weights id fetched and cached on
    first use. ``model=smollm2`` (the default) is this plugin with ``source=smollm2``.
    """

    name: str = "llama"
    #: Known-weights id (``smollm2``: SmolLM2-135M-Instruct, Q4_1 GGUF); see
    #: :data:`plugstack.plugins.llama.weights.KNOWN_SOURCES`.
    source: Optional[str] = None
    #: A ``.gguf`` file or a Hugging Face model directory; wins over ``source``.
    path: Optional[str] = None
    #: Cap on the positions the model will be asked to handle (``None``: the file's own).
    context_length: Optional[int] = None
