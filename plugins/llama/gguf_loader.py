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

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plugstack.errors import ModelLoadError

from .checks import broken, check_tensors, shown

if TYPE_CHECKING:
    from plugstack.nbits import BlockMatrix

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
        permuted = SUPPORTED_ARCHITECTURES[self.architecture]
        n_heads, n_kv = self.hparams["num_heads"], self.hparams["num_kv_heads"]
        out: dict[str, np.ndarray] = {}
        for name, (_, raw) in self._raw.items():
            ours, _, shape = self.tensors[name]
            arr = self._decode(name, raw, shape)
            if permuted and name.endswith(("attn_q.weight", "attn_q.bias")):
                arr = unpermute_qk(arr, n_heads)
            elif permuted and name.endswith(("attn_k.weight", "attn_k.bias")):
                arr = unpermute_qk(arr, n_kv)
            # F32/F16 come back as views of the read-only memory map: own the memory.
            out[ours] = arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr, order="C")
        return out

    def check_decodable(self) -> None:
        """Decode the first row of one tensor of each type: a type this gguf package cannot
        dequantise is refused when the file is read, not when the weights are first needed."""
        seen = set()
        for name, (qtype, raw) in self._raw.items():
            if qtype not in seen:
                seen.add(qtype)
                shape = self.tensors[name][2]
                self._decode(name, raw.reshape(-1, raw.shape[-1])[:1], (1, shape[-1]))

    def _decode(self, name: str, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        from plugstack.nbits import BlockMatrix, dequantize

        type_name = self.tensors[name][1]
        try:
            arr = dequantize(BlockMatrix(type_name, raw.reshape(-1, raw.shape[-1]), shape[-1]))
        except NotImplementedError:
            raise ModelLoadError(
                f"{self.path}: tensor {name!r} is stored as {type_name}, which this version of "
                f"the gguf package cannot dequantise. Re-quantise the model to a common type "
                f"(F16, Q8_0, Q4_K_M, ...) or upgrade the gguf package."
            ) from None
        except (ValueError, IndexError) as e:  # a block that does not fit its type
            raise broken(f"tensor {name!r} ({type_name}) cannot be decoded ({e})", self.path) from None
        return arr.reshape(shape)

    def block_matrices(self) -> dict[str, BlockMatrix]:
        """Every 2-D weight as the file stores it (``plugstack.nbits``), under our names, the
        q/k rows put back in our order (a row is whole blocks): nothing is dequantised."""
        from plugstack.nbits import BlockMatrix

        permuted = SUPPORTED_ARCHITECTURES[self.architecture]
        heads = {"attn_q.weight": self.hparams["num_heads"], "attn_k.weight": self.hparams["num_kv_heads"]}
        out = {}
        for name, (_, raw) in self._raw.items():
            ours, type_name, shape = self.tensors[name]
            if len(shape) != 2:
                continue
            m = BlockMatrix(type_name, raw.reshape(shape[0], -1), shape[1])
            n_heads = next((n for suffix, n in heads.items() if name.endswith(suffix)), 0)
            out[ours] = m.take_rows(unpermute_qk(np.arange(shape[0]), n_heads)) if permuted and n_heads else m
        return out


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows ``(d/2, 2)`` back to ``(2, d/2)``.

    llama.cpp stores each head's rows interleaved (``x0, x_{d/2}, x1, x_{d/2+1}, ...``);
    rotate_half wants the two halves contiguous.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | Path) -> GGUFContents:
    """Open ``path``, validate it and describe its model; weights stay memory-mapped.

    Everything the file says is checked here, hyper-parameters against the tensors
    included, before any tensor is read or anything sized by the file is allocated."""
    from .gguf_meta import gguf_hparams

    path = Path(path)
    _check_header(path)
    try:
        metadata, tok, infos, data_start, mm = _parse(path)
    except _Corrupt as e:
        raise broken(str(e), path) from None
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise broken(f"general.architecture is {'missing' if arch is None else shown(arch)}, expected a string", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported by the llama model plugin. "
            f"Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    hparams, keys = gguf_hparams(path, arch, metadata, tok, {name for name, *_ in infos})
    small = {k: v for k, v in metadata.items() if not (isinstance(v, list) and len(v) > 64)}
    contents = GGUFContents(path, arch, hparams, small, tok)
    layouts = {}
    for name, dims, qtype, offset in infos:
        shape, nbytes, raw_shape = _tensor_layout(path, name, dims, qtype)
        contents.tensors[name] = (_our_name(path, name), qtype.name, shape)
        layouts[name] = (nbytes, raw_shape, qtype, offset)
    found = {ours: shape for ours, _, shape in contents.tensors.values()}
    check_tensors(hparams, found, keys, path, spell=_gguf_name)  # before reading any tensor
    align = metadata.get("general.alignment", 32)
    for name, (nbytes, raw_shape, qtype, offset) in layouts.items():
        start = data_start + offset
        if offset % align:
            raise broken(f"tensor {name!r} starts at offset {offset}, not a multiple of the alignment {align}", path)
        if start + nbytes > len(mm):
            raise broken(f"tensor {name!r} ends at byte {start + nbytes} but the file has only {len(mm)} "
                         f"bytes (truncated)", path)  # fmt: skip
        contents._raw[name] = (qtype, np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=start).reshape(raw_shape))
    contents.check_decodable()
    return contents


def _tensor_layout(path: Path, name: str, dims: list[int], qtype) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """(numpy shape, byte count, uint8 shape) of a tensor; ggml lists dims innermost first."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = tuple(reversed(dims))
    if not shape or shape[-1] % block:
        raise broken(f"tensor {name!r} has shape {list(shape)}, not a whole number of {qtype.name} blocks", path)
    row_bytes = shape[-1] // block * type_size
    return shape, math.prod(shape[:-1]) * row_bytes, (*shape[:-1], row_bytes)


# GGUF value type id -> struct format (scalars) / numpy dtype (arrays of scalars).
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
           12: "<f8"}  # fmt: skip
#: No file nests arrays at all; a bound keeps a crafted one from exhausting the stack.
_MAX_DEPTH = 4
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Corrupt(Exception):
    """The header cannot be parsed; the message says where and why."""


class _Cursor:
    """Reads GGUF header values from a memory map, checking each against the file's end."""

    def __init__(self, mm) -> None:
        self.mm, self.pos, self.end = mm, 4, len(mm)

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > self.end:
            raise _Corrupt(f"the file ends at byte {self.end}, inside its header (truncated)")
        (v,) = struct.unpack_from(fmt, self.mm, self.pos)
        self.pos += size
        return v

    def string(self, what: str) -> str:
        n = self.take("<Q")
        if n > self.end - self.pos:
            raise _Corrupt(f"{what} of {n} bytes at byte {self.pos} runs past the end of the file (truncated)")
        s = self.mm[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, kind: int, key: str, depth: int = 0):
        if kind == _STRING:
            return self.string(f"the value of {key!r}")
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind != _ARRAY:
            raise _Corrupt(f"metadata key {key!r} has value type {kind}, which GGUF does not define")
        if depth >= _MAX_DEPTH:
            raise _Corrupt(f"metadata key {key!r} nests arrays more than {_MAX_DEPTH} deep")
        sub, count = self.take("<I"), self.take("<Q")
        smallest = np.dtype(_DTYPES[sub]).itemsize if sub in _DTYPES else {_STRING: 8, _ARRAY: 12}.get(sub, 1)
        if count * smallest > self.end - self.pos:
            raise _Corrupt(f"metadata key {key!r} claims an array of {count} items, more than the file holds "
                           f"(truncated or corrupt)")  # fmt: skip
        if sub in _DTYPES:
            arr = np.frombuffer(self.mm, dtype=_DTYPES[sub], count=count, offset=self.pos)
            self.pos += arr.nbytes
            return arr.astype(bool).tolist() if sub == 7 else arr.tolist()
        if sub == _STRING:
            return self.strings(count, f"the value of {key!r}")
        return [self.value(sub, key, depth + 1) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings in a row: :meth:`string`'s checks in one tight loop (a vocabulary
        holds ~50k of them; the per-call overhead was most of a header's parse time)."""
        mm, pos, end, length = self.mm, self.pos, self.end, struct.Struct("<Q").unpack_from
        out = []
        try:
            for _ in range(count):
                if pos + 8 > end:
                    raise _Corrupt(f"the file ends at byte {end}, inside its header (truncated)")
                (n,) = length(mm, pos)
                pos += 8
                if n > end - pos:
                    raise _Corrupt(f"{what} of {n} bytes at byte {pos} runs past the end of the file (truncated)")
                out.append(mm[pos : pos + n].decode("utf-8", errors="replace"))
                pos += n
        finally:
            self.pos = pos
        return out


def _parse(path: Path):
    """``(metadata, tokenizer fields, [(name, dims, type, offset)], data start, mmap)``."""
    import mmap

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(mm)
    version = cur.take("<I")
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: GGUF version {version} is not supported (only 2 and 3).")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    if n_kv * 13 + n_tensors * 32 > cur.end - cur.pos:  # the smallest entries a file can hold
        raise _Corrupt(f"the header claims {n_kv} metadata keys and {n_tensors} tensors, more than the "
                       f"{cur.end} bytes of the file hold (truncated or corrupt)")  # fmt: skip
    metadata: dict[str, Any] = {}
    tok: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        if key in metadata:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        metadata[key] = cur.value(cur.take("<I"), key)
        if key.startswith("tokenizer."):
            tok[key] = metadata[key]
    infos = [_tensor_info(path, cur) for _ in range(n_tensors)]
    if len({name for name, *_ in infos}) != len(infos):
        raise _Corrupt("a tensor name appears twice")
    align = metadata.get("general.alignment", 32)
    if not (isinstance(align, int) and not isinstance(align, bool) and align > 0 and not align & (align - 1)):
        raise _Corrupt(f"general.alignment is {shown(align)}, expected a power of two")
    return metadata, tok, infos, (cur.pos + align - 1) // align * align, mm


def _tensor_info(path: Path, cur: _Cursor) -> tuple[str, list[int], Any, int]:
    import gguf

    name = cur.string("a tensor name")
    n_dims = cur.take("<I")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions, expected 1 to {_MAX_DIMS}")
    dims = [cur.take("<Q") for _ in range(n_dims)]
    if not all(0 < d < 1 << 62 for d in dims):
        raise _Corrupt(f"tensor {name!r} has dimensions {dims}, expected positive sizes")
    type_id, offset = cur.take("<I"), cur.take("<Q")
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelLoadError(
            f"{path}: tensor {name!r} has tensor type id {type_id}, unknown to this version of the "
            f"gguf package. Upgrade gguf or re-quantise the model to a common type."
        ) from None
    return name, dims, qtype, offset


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


def _gguf_name(ours: str) -> str:
    """The inverse of :func:`_our_name`, for messages."""
    base, _, suffix = ours.rpartition(".")
    back = {v: k for k, v in _GLOBAL_NAMES.items()}
    if base in back:
        return f"{back[base]}.{suffix}"
    _, i, rest = base.split(".", 2)
    return f"blk.{i}.{ {v: k for k, v in _BLOCK_NAMES.items()}[rest] }.{suffix}"
