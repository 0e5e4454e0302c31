"""Reading a GGUF file: hyper-parameters, tokenizer metadata and fp32 weights.

The file is memory-mapped; every tensor type ``gguf.quants`` can dequantise (F32, F16,
BF16, Q8_0, Q4_0, Q4_1, K-quants, ...) becomes an fp32 array under the ``Llama`` module's
parameter names. The header is parsed here with ``struct`` rather than by
``gguf.GGUFReader``, which builds several numpy views per vocabulary entry and so spends
seconds on a large vocabulary's strings where this parser needs a fraction. The gguf package
still provides the type tables and the dequantisation kernels.

llama.cpp's converter permutes the rows of the q and k projections of the ``llama``
architecture so that its RoPE can rotate *adjacent* pairs of dimensions; our module (like
Hugging Face's) rotates the two *halves* of each head. :func:`unpermute_qk` undoes that,
as transformers' GGUF loader does. ``qwen2`` files are not permuted (NeoX-style RoPE).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plugstack.errors import ModelLoadError

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFContents", "read_gguf", "unpermute_qk"]

#: GGUF ``general.architecture`` values we can load, and whether their q/k rows are permuted.
SUPPORTED_ARCHITECTURES = {"llama": True, "qwen2": False}

_GGUF_MAGIC = b"GGUF"

# llama.cpp tensor name (without ".weight"/".bias") -> our parameter name.
_GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


@dataclass
class GGUFContents:
    """What a GGUF file holds, in our vocabulary."""

    path: Path
    architecture: str
    #: Keyword arguments for :class:`~plugstack.plugins.llama.model.LlamaConfig`.
    hparams: dict[str, Any]
    #: Every metadata key except the big tokenizer arrays (JSON-friendly scalars/strings).
    metadata: dict[str, Any]
    #: ``tokenizer.ggml.*`` arrays and values, and ``tokenizer.chat_template``.
    tokenizer: dict[str, Any]
    #: GGUF tensor name -> (our name, ggml type name, numpy shape) for every tensor.
    tensors: dict[str, tuple[str, str, tuple[int, ...]]] = field(default_factory=dict)
    #: GGUF tensor name -> (ggml type, raw bytes as a uint8 view of the memory map).
    _raw: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict, repr=False)

    def load_state_dict(self) -> dict[str, np.ndarray]:
        """Dequantise every tensor to fp32 numpy arrays under our parameter names."""
        import gguf

        permuted = SUPPORTED_ARCHITECTURES[self.architecture]
        n_heads, n_kv = self.hparams["num_heads"], self.hparams["num_kv_heads"]
        out: dict[str, np.ndarray] = {}
        for name, (qtype, raw) in self._raw.items():
            ours, type_name, shape = self.tensors[name]
            try:
                fast = _FAST_DEQUANT.get(type_name)
                arr = fast(raw, shape) if fast else gguf.quants.dequantize(raw, qtype)
            except NotImplementedError:
                raise ModelLoadError(
                    f"{self.path}: tensor {name!r} is stored as {type_name}, which this version of "
                    f"the gguf package cannot dequantise. Re-quantise the model to a common type "
                    f"(F16, Q8_0, Q4_K_M, ...) or upgrade the gguf package."
                ) from None
            except (ValueError, IndexError) as e:  # a block that does not fit its type
                raise ModelLoadError(
                    f"{self.path}: tensor {name!r} ({type_name}) could not be decoded ({e}); "
                    f"the file is corrupt. Download it again."
                ) from None
            arr = np.asarray(arr, dtype=np.float32).reshape(shape)
            if permuted and name.endswith(("attn_q.weight", "attn_q.bias")):
                arr = unpermute_qk(arr, n_heads)
            elif permuted and name.endswith(("attn_k.weight", "attn_k.bias")):
                arr = unpermute_qk(arr, n_kv)
            # F32/F16 come back as views of the read-only memory map: own the memory.
            out[ours] = arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr, order="C")
        return out


# Whole-tensor numpy versions of the three legacy block types SmolLM2-style files use.
# gguf.quants works row group by row group, several times slower; these give bit-identical
# results (same float32 operations; tested against gguf.quants).
def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _q8_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = raw.reshape(-1, 34)  # f16 scale, 32 x int8
    return (_f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)).reshape(shape)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    # Low nibbles are elements 0..15 of a block, high nibbles 16..31.
    return np.concatenate((qs & 0x0F, qs >> 4), axis=1).astype(np.float32)


def _q4_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = raw.reshape(-1, 18)  # f16 scale, 16 bytes of nibbles (offset by 8)
    return (_f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)).reshape(shape)


def _q4_1(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = raw.reshape(-1, 20)  # f16 scale, f16 min, 16 bytes of nibbles
    return (_f16(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16(blocks, 2)).reshape(shape)


_FAST_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1}


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows ``(d/2, 2)`` back to ``(2, d/2)``.

    llama.cpp stores each head's rows interleaved (``x0, x_{d/2}, x1, x_{d/2+1}, ...``);
    rotate_half wants the two halves contiguous.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | Path) -> GGUFContents:
    """Open ``path``, validate it and describe its model; weights stay memory-mapped."""
    path = Path(path)
    _check_header(path)
    try:
        metadata, tok, infos, data_start, mm = _parse(path)
    except ModelLoadError:
        raise
    except (struct.error, ValueError, IndexError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise ModelLoadError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e}). The file is probably "
            f"truncated or corrupt; download it again."
        ) from None
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported by the llama model plugin. "
            f"Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    hparams = _hparams(path, arch, metadata, tok, {name for name, *_ in infos})
    contents = GGUFContents(path, arch, hparams, metadata, tok)
    size = len(mm)
    for name, dims, qtype, offset in infos:
        shape, nbytes, raw_shape = _tensor_layout(path, name, dims, qtype)
        start = data_start + offset
        if start + nbytes > size:
            raise ModelLoadError(
                f"{path}: tensor {name!r} ends at byte {start + nbytes} but the file has only {size} "
                f"bytes: the file is truncated. Download it again."
            )
        raw = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=start).reshape(raw_shape)
        contents.tensors[name] = (_our_name(path, name), qtype.name, shape)
        contents._raw[name] = (qtype, raw)
    return contents


def _tensor_layout(path: Path, name: str, dims: list[int], qtype) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """(numpy shape, byte count, uint8 shape) of a tensor; ggml lists dims innermost first."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = tuple(int(d) for d in reversed(dims))
    if not shape or shape[-1] % block:
        raise ModelLoadError(
            f"{path}: tensor {name!r} has shape {list(shape)}, not a whole number of {qtype.name} blocks."
        )
    row_bytes = shape[-1] // block * type_size
    return shape, int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes, (*shape[:-1], row_bytes)


# GGUF value type id -> struct format (scalars) / numpy dtype (arrays of scalars).
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_DTYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}


def _parse(path: Path):
    """``(metadata, tokenizer fields, [(name, dims, type, offset)], data start, mmap)``."""
    import mmap

    import gguf

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    end = len(mm)
    pos = 4

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, mm, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > end:
            raise ValueError(f"a string of {n} bytes runs past the end of the file at byte {pos}")
        s = mm[pos : pos + n].decode("utf-8", errors="replace")
        pos += n
        return s

    def value(kind: int):
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        sub, count = take("<I"), take("<Q")
        if count > end - pos:
            raise ValueError(f"an array of {count} items runs past the end of the file")
        if sub in _DTYPES:
            arr = np.frombuffer(mm, dtype=_DTYPES[sub], count=count, offset=pos)
            pos += arr.nbytes
            return arr.tolist()
        return [value(sub) for _ in range(count)]

    version = take("<I")
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: GGUF version {version} is not supported (only 2 and 3).")
    n_tensors, n_kv = take("<Q"), take("<Q")
    metadata: dict[str, Any] = {}
    tok: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        v = value(take("<I"))
        if key.startswith("tokenizer."):
            tok[key] = v
        if not (isinstance(v, list) and len(v) > 64):
            metadata[key] = v
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        type_id, offset = take("<I"), take("<Q")
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError:
            raise ModelLoadError(
                f"{path}: tensor {name!r} has tensor type id {type_id}, unknown to this version of the "
                f"gguf package. Upgrade gguf or re-quantise the model to a common type."
            ) from None
        infos.append((name, dims, qtype, offset))
    align = int(metadata.get("general.alignment", 32))
    data_start = (pos + align - 1) // align * align
    return metadata, tok, infos, data_start, mm


def _check_header(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"Model file {path} does not exist. Check model.path.")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; expected a .gguf file or a Hugging Face model directory.")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != _GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file: it starts with {head[:4]!r}, expected {_GGUF_MAGIC!r}. "
            f"Pass a .gguf file or a Hugging Face model directory as model.path."
        )


def _hparams(path: Path, arch: str, md: dict, tok: dict, tensor_names: set[str]) -> dict[str, Any]:
    def get(key: str, default: Any = ModelLoadError) -> Any:
        full = f"{arch}.{key}"
        if full in md:
            return md[full]
        if default is ModelLoadError:
            raise ModelLoadError(
                f"{path}: metadata key {full!r} is missing; the file does not describe a complete "
                f"{arch} model. Convert it again with llama.cpp's convert_hf_to_gguf.py."
            )
        return default

    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (scaling == "linear" and get("rope.scaling.factor", 1.0) != 1.0):
        raise ModelLoadError(f"{path}: RoPE scaling {scaling!r} is not supported yet (plain RoPE only).")
    if "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(
            f"{path}: the file carries per-dimension RoPE frequencies (Llama 3.1-style scaling), "
            f"which the llama plugin does not implement yet."
        )
    n_heads = int(get("attention.head_count"))
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):  # per-layer counts (hybrid models): only uniform ones work
        raise ModelLoadError(f"{path}: per-layer KV head counts are not supported.")
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", get("rope.dimension_count", hidden // n_heads)))
    tokens = tok.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else int(get("vocab_size"))
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_layers": int(get("block_count")),
        "num_heads": n_heads,
        "num_kv_heads": int(n_kv),
        "head_dim": head_dim,
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "context_length": int(get("context_length", 2048)),
        "tie_embeddings": "output.weight" not in tensor_names,
        "qkv_bias": "blk.0.attn_q.bias" in tensor_names,
    }


def _our_name(path: Path, name: str) -> str:
    base, _, suffix = name.rpartition(".")
    if base in _GLOBAL_NAMES and suffix == "weight":
        return f"{_GLOBAL_NAMES[base]}.weight"
    m = _BLOCK_RE.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    raise ModelLoadError(
        f"{path}: tensor {name!r} has no place in the Llama module (unexpected for this "
        f"architecture). The file may be a variant the llama plugin does not support."
    )
