"""The hyper-parameters a GGUF file's metadata gives, each checked for type and range.

Keys are read as llama.cpp names them (``<arch>.block_count``, ...); a missing required
key, a value of the wrong type or out of range is a broken-file error naming the key.
Consistency with the tensors is checked by :func:`checks.check_tensors` afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugstack.errors import ModelLoadError

from .checks import broken, check_hparams, context, integer, norm_eps, number, text

__all__ = ["gguf_hparams"]

_REQUIRED = object()


def _reader(path: Path, arch: str, md: dict[str, Any]) -> Callable[..., Any]:
    """``get(key, check, default)``: ``<arch>.<key>`` passed through ``check``."""

    def get(key: str, check: Callable[[Any, str, Path], Any], default: Any = _REQUIRED) -> Any:
        full = f"{arch}.{key}"
        if full in md:
            return check(md[full], full, path)
        if default is _REQUIRED:
            raise broken(f"metadata key {full} is missing", path)
        return default

    return get


def _uniform(path: Path, md: dict[str, Any], key: str, what: str) -> None:
    if isinstance(md.get(key), list):  # per-layer values (hybrid models): only uniform ones work
        raise ModelLoadError(f"{path}: per-layer {what} ({key} is a list) are not supported.")


def _rope(path: Path, get: Callable[..., Any], tensor_names: set[str]) -> float:
    scaling = get("rope.scaling.type", text, "none")
    factor = get("rope.scaling.factor", number, 1.0) if scaling == "linear" else 1.0
    if scaling not in ("none", "linear") or factor != 1.0:
        raise ModelLoadError(f"{path}: RoPE scaling {scaling!r} is not supported yet (plain RoPE only).")
    if "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(
            f"{path}: the file carries per-dimension RoPE frequencies (Llama 3.1-style scaling), "
            f"which the llama plugin does not implement yet."
        )
    return get("rope.freq_base", number, 10000.0)


def gguf_hparams(
    path: Path, arch: str, md: dict[str, Any], tok: dict[str, Any], tensor_names: set[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(LlamaConfig keyword arguments, hyper-parameter -> the key it came from)``."""
    get = _reader(path, arch, md)
    for key, what in (("attention.head_count", "query head counts"), ("attention.head_count_kv", "KV head counts"),
                      ("feed_forward_length", "feed-forward sizes")):  # fmt: skip
        _uniform(path, md, f"{arch}.{key}", what)
    rope_theta = _rope(path, get, tensor_names)
    heads = get("attention.head_count", integer)
    hidden = get("embedding_length", integer)
    head_key = next((f"{arch}.{k}" for k in ("attention.key_length", "rope.dimension_count") if f"{arch}.{k}" in md),
                    f"{arch}.embedding_length / {arch}.attention.head_count")  # fmt: skip
    head_dim = get("attention.key_length", integer, get("rope.dimension_count", integer, hidden // heads))
    tokens = tok.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) and tokens else get("vocab_size", integer)
    h = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length", integer),
        "num_layers": get("block_count", integer),
        "num_heads": heads,
        "num_kv_heads": get("attention.head_count_kv", integer, heads),
        "head_dim": head_dim,
        "rope_theta": rope_theta,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", norm_eps, 1e-5),
        "context_length": get("context_length", context, 2048),
        "tie_embeddings": "output.weight" not in tensor_names,
        "qkv_bias": "blk.0.attn_q.bias" in tensor_names,
    }
    keys = {k: f"{arch}.{k}" for k in h}
    keys.update(num_layers=f"{arch}.block_count", num_heads=f"{arch}.attention.head_count",
                num_kv_heads=f"{arch}.attention.head_count_kv", head_dim=head_key,
                vocab_size="tokenizer.ggml.tokens" if tokens else f"{arch}.vocab_size")  # fmt: skip
    check_hparams(h, keys, path)
    return h, keys
