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

from .checks import broken, check_hparams, context, flag, inside, integer, norm_eps, number, read_json, shown, text

__all__ = ["HF_KEYS", "SUPPORTED_MODEL_TYPES", "load_hf_state_dict", "read_hf_config", "tensor_shapes", "weight_files"]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def read_hf_config(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(raw config.json, LlamaConfig keyword arguments)``; refuses what the module cannot compute."""
    path = directory / "config.json"
    if not path.exists():
        raise ModelLoadError(
            f"{directory} has no config.json; expected a Hugging Face model directory "
            f"(config.json + *.safetensors) or a .gguf file as model.path."
        )
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {shown(model_type)} is not supported by the llama model plugin. "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    _refuse_variants(path, cfg, model_type)
    h = _hparams(path, cfg, model_type)
    check_hparams(h, HF_KEYS, path)
    return cfg, h


#: Hyper-parameter -> the config.json key it comes from (for messages).
HF_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
           "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
           "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "rope_theta": "rope_theta",
           "rms_norm_eps": "rms_norm_eps", "context_length": "max_position_embeddings"}  # fmt: skip


def _get(path: Path, cfg: dict[str, Any], key: str, check, default: Any = ModelLoadError) -> Any:
    """``cfg[key]`` passed through ``check``; ``default`` when absent or null."""
    if cfg.get(key) is None:
        if default is ModelLoadError:
            raise broken(f"required key {key} is missing", path)
        return default
    return check(cfg[key], key, path)


def _refuse_variants(path: Path, cfg: dict[str, Any], model_type: str) -> None:
    def refuse(what: str) -> None:
        raise ModelLoadError(f"{path}: {what} is not supported by the llama model plugin yet.")

    if _get(path, cfg, "hidden_act", text, "silu") != "silu":
        refuse(f"hidden_act={cfg['hidden_act']!r} (only 'silu')")
    if _get(path, cfg, "mlp_bias", flag, False):
        refuse("mlp_bias=true")
    if model_type == "llama" and _get(path, cfg, "attention_bias", flag, False):
        refuse("attention_bias=true for llama (it also biases o_proj)")
    if model_type == "qwen2" and _get(path, cfg, "use_sliding_window", flag, False):
        refuse("use_sliding_window=true")
    rope = _rope(path, cfg)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        refuse(f"RoPE scaling {kind!r}")


def _rope(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 moved rope_theta into rope_parameters; 4.x has rope_theta/rope_scaling.
    key = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = cfg.get(key) or {}
    if not isinstance(rope, dict):
        raise broken(f"{key} is {shown(rope)}, expected an object or null", path)
    return rope


def _hparams(path: Path, cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    rope = _rope(path, cfg)
    theta_in = rope if "rope_theta" in rope else cfg
    hidden, heads = _get(path, cfg, "hidden_size", integer), _get(path, cfg, "num_attention_heads", integer)
    return {
        "vocab_size": _get(path, cfg, "vocab_size", integer),
        "hidden_size": hidden,
        "intermediate_size": _get(path, cfg, "intermediate_size", integer),
        "num_layers": _get(path, cfg, "num_hidden_layers", integer),
        "num_heads": heads,
        "num_kv_heads": _get(path, cfg, "num_key_value_heads", integer, heads),
        "head_dim": _get(path, cfg, "head_dim", integer, hidden // heads),
        "rope_theta": _get(path, theta_in, "rope_theta", number, 10000.0),
        "rms_norm_eps": _get(path, cfg, "rms_norm_eps", norm_eps, 1e-6),
        "context_length": _get(path, cfg, "max_position_embeddings", context, 2048),
        "tie_embeddings": _get(path, cfg, "tie_word_embeddings", flag, False),
        "qkv_bias": model_type == "qwen2",
    }


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory, sharded or not, in a stable order."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_weight_map(directory).values()))
        missing = [str(f.relative_to(directory)) for f in files if not f.exists()]
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


def _weight_map(directory: Path) -> dict[str, Path]:
    """The index's tensor name -> shard file, every shard inside ``directory``."""
    index = directory / "model.safetensors.index.json"
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise broken(f"weight_map is {shown(weight_map)}, expected an object of tensor name -> file", index)
    return {name: inside(directory, file, f"weight_map[{name!r}]", index) for name, file in weight_map.items()}


def tensor_shapes(directory: Path, files: list[Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Every tensor's shape (``model.`` prefix removed) and a count of the stored dtypes, from
    the safetensors headers alone: what the file claims is checked before anything is read."""
    shapes: dict[str, tuple[int, ...]] = {}
    home: dict[str, Path] = {}
    dtypes: dict[str, int] = {}
    for f in files:
        for key, (dtype, shape) in _header(f).items():
            if key in home:
                raise broken(f"tensor {key!r} is stored twice, in {home[key].name} and {f.name}", directory)
            home[key], shapes[key.removeprefix("model.")] = f, shape
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
    if (directory / "model.safetensors.index.json").exists():
        for key, f in _weight_map(directory).items():
            if home.get(key) != f:
                raise broken(f"weight_map puts tensor {key!r} in {f.name}, which does not hold it",
                             directory / "model.safetensors.index.json")  # fmt: skip
    return shapes, dtypes


_MAX_HEADER = 100 << 20  # the safetensors format's own limit


def _header(f: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A safetensors file's header: tensor name -> (dtype, shape), each entry checked."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = fh.read(n) if 0 < n <= min(size - 8, _MAX_HEADER) else None
    except OSError as e:
        raise broken(f"{f.name} cannot be read ({e.strerror or e})", f) from None
    if raw is None:
        raise broken(f"the header length field says {n} bytes, but the file has {size} (truncated?)", f)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise broken(f"the header is not valid JSON ({type(e).__name__}: {e})", f) from None
    if not isinstance(header, dict):
        raise broken(f"the header is {shown(header)}, expected a JSON object", f)
    out = {}
    for key, info in header.items():
        if key != "__metadata__":
            out[key] = _entry(f, key, info, size - 8 - n)
    return out


def _entry(f: Path, key: str, info: Any, data_bytes: int) -> tuple[str, tuple[int, ...]]:
    what = f"the header entry of tensor {key!r}"
    if not isinstance(info, dict):
        raise broken(f"{what} is {shown(info)}, expected an object", f)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    text(dtype, f"{what}: dtype", f)
    if not isinstance(shape, list) or len(shape) > 8:
        raise broken(f"{what}: shape is {shown(shape)}, expected a list of sizes", f)
    for d in shape:
        integer(d, f"{what}: shape", f, low=0)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):  # fmt: skip
        raise broken(f"{what}: data_offsets is {shown(offsets)}, expected [begin, end] within the file", f)
    return dtype, tuple(shape)


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
            raise broken(f"not a readable safetensors file ({e})", f) from None
    return out, dtypes
