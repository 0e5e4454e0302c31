"""Tiny, randomly initialised models for tests: real architectures that run in milliseconds.

Three shapes, so a kit run on all proves a backend runs *any* model, not one family:

* :func:`tiny_decoder_model`: the Llama plugin's decoder (attention, a growing KV cache
  with a mask and positions, and the plugin's own ONNX graph builder);
* :func:`tiny_recurrent_model`: a byte-level recurrent language model (a fixed-size state
  vector, no mask, no positions, no builder: every backend runs it on its generic path);
* :func:`tiny_denoiser_model`: a conditional conv denoiser, a diffusion model's step (no
  state at all, float image inputs, classifier-free guidance inside the step; generic path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from plugstack.model import Model

__all__ = ["KIT_MODELS", "ByteTokenizer", "tiny_decoder_model", "tiny_denoiser_model",
           "tiny_llama_config", "tiny_recurrent_model"]


def tiny_llama_config(*, vocab_size: int = 128, context_length: int = 64) -> Any:
    """Hyper-parameters of a 2-layer Llama with grouped-query attention (4 query heads over
    2 KV heads, hidden 64) that runs in milliseconds."""
    from plugstack.plugins.llama.model import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        context_length=context_length,
    )


def tiny_decoder_model(seed: int = 0, *, context_length: int = 64, all_logits: bool = False) -> Model:
    """A 2-layer Llama (GQA: 4 query heads over 2 KV heads, vocab 128) with random weights.

    Deterministic for a ``seed``: two calls give two independent modules with equal
    weights, so a test can hand one to the backend under test and keep one as reference.
    """
    from plugstack.plugins.llama.model import Llama, as_model, init_weights

    cfg = tiny_llama_config(context_length=context_length)
    module = init_weights(Llama(cfg, all_logits=all_logits), seed=seed).eval()
    return as_model(module, name=f"tiny-llama-seed{seed}", source=f"random init (seed {seed})", info=cfg.to_dict(),
                    weights_digest=_digest(module, extra=f"ctx={context_length} all_logits={all_logits}"))


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, plus ``<eos>`` (256) and ``<pad>`` (257)."""

    eos_token_ids = (256,)
    pad_token_id = 257
    vocab_size = 258

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")


def tiny_recurrent_model(seed: int = 0) -> Model:
    """A byte-level language model whose state is one vector per sequence (see
    :class:`~plugstack.testing.recurrent.TinyRecurrentLM`), with random weights."""
    from .recurrent import TinyRecurrentLM

    module = TinyRecurrentLM(vocab_size=ByteTokenizer.vocab_size, seed=seed).eval()
    return Model(
        name=f"tiny-recurrent-seed{seed}", kind="decoder", module=module, signature=module.signature(),
        example_inputs=module.example_inputs, tokenizer=ByteTokenizer(), weights_digest=_digest(module, "recurrent"),
        source=f"random init (seed {seed})", info={"hidden": module.hidden},
    )


def tiny_denoiser_model(seed: int = 0) -> Model:
    """A conditional denoiser of 8x8 one-channel images captioned by 4 word ids (see
    :class:`~plugstack.testing.denoiser.TinyDenoiser`), with random weights."""
    from .denoiser import TinyDenoiser

    module = TinyDenoiser(seed=seed).eval()
    return Model(
        name=f"tiny-denoiser-seed{seed}", kind="denoiser", module=module, signature=module.signature(),
        example_inputs=module.example_inputs, tokenizer=None, weights_digest=_digest(module, "denoiser"),
        source=f"random init (seed {seed})", info={"size": module.size, "caption_length": module.caption_length},
    )


#: The models the backend kit runs, by the name its ``kit_model`` parameter takes.
KIT_MODELS: dict[str, Callable[..., Model]] = {
    "tiny-llama": tiny_decoder_model,
    "tiny-recurrent": tiny_recurrent_model,
    "tiny-denoiser": tiny_denoiser_model,
}


def _digest(module: Any, extra: str) -> str:
    """sha256 of the weights plus what else changes the graph (backends key caches on it)."""
    from plugstack.files import module_digest

    return module_digest(module, extra)
