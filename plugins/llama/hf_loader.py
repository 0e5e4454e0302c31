"""Reading a Hugging Face model directory: ``config.json`` + ``*.safetensors``.

Single files (``model.safetensors``) and sharded ones (``model.safetensors.index.json``)
both work. Weights are read with safetensors (never pickle); names lose their ``model.``
prefix so they match the ``Llama`` module one to one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plugstack.errors import ModelLoadError

__all__ = ["SUPPORTED_MODEL_TYPES", "load_hf_state_dict", "read_hf_config", "weight_files"]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def read_hf_config(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(raw config.json, LlamaConfig keyword arguments)``; refuses what the module cannot compute."""
    path = directory / "config.json"
    if not path.exists():
        raise ModelLoadError(
            f"{directory} has no config.json; expected a Hugging Face model directory "
            f"(config.json + *.safetensors) or a .gguf file as model.path."
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e}).") from None
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not supported by the llama model plugin. "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )

    def need(key: str) -> Any:
        if key not in cfg:
            raise ModelLoadError(f"{path}: required key {key!r} is missing.")
        return cfg[key]

    def refuse(what: str) -> None:
        raise ModelLoadError(f"{path}: {what} is not supported by the llama model plugin yet.")

    if cfg.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act={cfg['hidden_act']!r} (only 'silu')")
    if cfg.get("mlp_bias"):
        refuse("mlp_bias=true")
    if model_type == "llama" and cfg.get("attention_bias"):
        refuse("attention_bias=true for llama (it also biases o_proj)")
    if model_type == "qwen2" and cfg.get("use_sliding_window"):
        refuse("use_sliding_window=true")
    # transformers 5 moved rope_theta into rope_parameters; 4.x has rope_theta/rope_scaling.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        refuse(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r}")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    return cfg, {
        "vocab_size": int(need("vocab_size")),
        "hidden_size": hidden,
        "intermediate_size": int(need("intermediate_size")),
        "num_layers": int(need("num_hidden_layers")),
        "num_heads": heads,
        "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": int(cfg.get("head_dim") or hidden // heads),
        "rope_theta": float(theta),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "context_length": int(cfg.get("max_position_embeddings", 2048)),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "qkv_bias": model_type == "qwen2",
    }


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory, sharded or not, in a stable order."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({e}).") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}. Download them too.")
        return files
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
        raise ModelLoadError(
            f"{directory} has only PyTorch pickle weights (*.bin/*.pt), which plugstack never loads "
            f"(unpickling runs code). Convert them to safetensors first."
        )
    raise ModelLoadError(f"{directory} has no model.safetensors or model.safetensors.index.json.")


def load_hf_state_dict(files: list[Path]) -> tuple[dict[str, Any], dict[str, int]]:
    """Every tensor as an fp32 torch tensor (``model.`` prefix removed), and a count of the
    stored dtypes (``{"BF16": 200, ...}``)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, Any] = {}
    dtypes: dict[str, int] = {}
    for f in files:
        try:
            # The torch framework reads bf16 too (numpy has no bfloat16).
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    name = key.removeprefix("model.")
                    dtype = st.get_slice(key).get_dtype()
                    dtypes[dtype] = dtypes.get(dtype, 0) + 1
                    out[name] = st.get_tensor(key).float()
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{f}: not a readable safetensors file ({e}). Download it again.") from None
    return out, dtypes
