"""Tiny, randomly initialised models for tests: real architectures that run in milliseconds."""

from __future__ import annotations

import hashlib
from typing import Any

from plugstack.model import Model

__all__ = ["tiny_decoder_model", "tiny_llama_config"]


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
    from plugstack.plugins.llama.model import Llama, init_weights

    cfg = tiny_llama_config(context_length=context_length)
    module = init_weights(Llama(cfg, all_logits=all_logits), seed=seed).eval()
    return Model(
        name=f"tiny-llama-seed{seed}",
        kind="decoder",
        module=module,
        signature=module.signature(),
        example_inputs=module.example_inputs,
        context_length=context_length,
        weights_digest=_digest(module, extra=f"ctx={context_length} all_logits={all_logits}"),
        source=f"random init (seed {seed})",
        info=cfg.to_dict(),
    )


def _digest(module: Any, extra: str) -> str:
    """sha256 of the weights plus what else changes the graph (backends key caches on it)."""
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()
