"""The Llama-family model plugin: SmolLM2 by default, any llama/qwen2 GGUF or HF directory.

Kept light on purpose: importing this module (which plugin discovery does) must not import
torch, tokenizers or gguf; the loader is named as a string and imported on first use.
"""

from __future__ import annotations

from plugstack import hookimpl

from .config import LlamaModelConfig

__all__ = ["LlamaModelConfig", "plugstack_register_models"]


@hookimpl
def plugstack_register_models(register):
    register(
        "llama",
        "plugstack.plugins.llama.loader:load",
        config=LlamaModelConfig,
        description="Llama-family decoder (llama, qwen2) from GGUF or Hugging Face safetensors; "
        "default weights: SmolLM2-135M-Instruct",
    )
