"""A GGUF file as plain data, for the tests that break one: read a good file into key/value
entries and tensors, change any field (types, values, counts, offsets, alignment), and
write bytes back, valid or not. Independent of the loader under test; uses gguf.GGUFReader
to read only."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
UINT32, INT32, FLOAT32, BOOL, UINT64 = 4, 5, 6, 7, 10


@dataclass
class Tensor:
    name: str
    dims: list[int]  # ggml order: innermost first
    type_id: int
    data: bytes
    offset: int | None = None  # None: laid out after the previous tensor


@dataclass
class Gguf:
    kvs: dict[str, tuple[int, Any]]  # key -> (type id, value); arrays: (ARRAY, (sub type, items))
    tensors: list[Tensor]
    version: int = 3
    #: Overrides of the header's counts (None: the real ones).
    n_kv: int | None = None
    n_tensors: int | None = None
    extra_kvs: list[tuple[str, int, Any]] = field(default_factory=list)  # written after kvs (duplicates allowed)

    def set(self, key: str, type_id: int, value: Any) -> Gguf:
        self.kvs[key] = (type_id, value)
        return self

    def drop(self, key: str) -> Gguf:
        del self.kvs[key]
        return self

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)

    @property
    def alignment(self) -> int:
        _, v = self.kvs.get("general.alignment", (UINT32, 32))
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 and not v & (v - 1) else 32


def read(path: Path) -> Gguf:
    import gguf

    r = gguf.GGUFReader(str(path))
    kvs: dict[str, tuple[int, Any]] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        kind = int(f.types[0])
        value = f.contents()
        kvs[name] = (ARRAY, (int(f.types[1]), list(value))) if kind == ARRAY else (kind, value)
    tensors = [Tensor(t.name, [int(d) for d in t.shape], int(t.tensor_type), t.data.tobytes()) for t in r.tensors]
    return Gguf(kvs, tensors)


def _value(kind: int, value: Any) -> bytes:
    if isinstance(value, bytes) and kind != STRING:
        return value  # a raw payload: any bytes, for a type or count that lies
    if kind == STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw
    if kind == ARRAY:
        sub, items = value
        return struct.pack("<IQ", sub, len(items)) + b"".join(_value(sub, x) for x in items)
    return struct.pack(SCALARS[kind], value)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def encode(g: Gguf) -> bytes:
    align = g.alignment
    kvs = [(k, t, v) for k, (t, v) in g.kvs.items()] + g.extra_kvs
    out = [b"GGUF", struct.pack("<IQQ", g.version, len(g.tensors) if g.n_tensors is None else g.n_tensors,
                                len(kvs) if g.n_kv is None else g.n_kv)]  # fmt: skip
    out += [_value(STRING, k) + struct.pack("<I", t) + _value(t, v) for k, t, v in kvs]
    offset, data = 0, []
    for t in g.tensors:
        at = offset if t.offset is None else t.offset
        out.append(_value(STRING, t.name) + struct.pack(f"<I{len(t.dims)}QIQ", len(t.dims), *t.dims, t.type_id, at))
        data.append(t.data + b"\0" * (_pad(len(t.data), align) - len(t.data)))
        offset += len(data[-1])
    head = b"".join(out)
    return head + b"\0" * (_pad(len(head), align) - len(head)) + b"".join(data)


def write(g: Gguf, path: Path) -> Path:
    path.write_bytes(encode(g))
    return path
