"""Fuzzing a tiny GGUF's header: whatever hypothesis does to its metadata (types, values,
missing keys, arrays, nesting) or its structure (counts, version, tensor infos, alignment,
truncation, stray bytes), loading it either works or raises ``ModelLoadError`` naming the
file; never anything else. Deterministic (derandomize) and bounded for CI."""

from __future__ import annotations

import copy
import tempfile
from datetime import timedelta
from pathlib import Path

import gguf_bytes as gb
import pytest
from gguf_bytes import ARRAY, STRING
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugstack import ModelLoadError
from plugstack.plugins.llama.loader import load_path

#: Every metadata key the loader reads (llama architecture), present in the base file or not.
LOADER_KEYS = [
    "general.architecture", "general.alignment", "general.name",
    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.key_length",
    "llama.rope.dimension_count", "llama.rope.freq_base", "llama.rope.scaling.type", "llama.rope.scaling.factor",
    "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]  # fmt: skip
_INT_RANGES = {0: (0, 2**8 - 1), 1: (-(2**7), 2**7 - 1), 2: (0, 2**16 - 1), 3: (-(2**15), 2**15 - 1),
               4: (0, 2**32 - 1), 5: (-(2**31), 2**31 - 1), 10: (0, 2**64 - 1), 11: (-(2**63), 2**63 - 1)}  # fmt: skip
#: Values near the real ones are the interesting ones: they get past the type checks.
_NEAR = [0, 1, 2, 3, 4, 8, 16, 32, 63, 64, 127, 128, 256, 100000, 2**31 - 1, 2**32 - 1]


def _scalar(kind: int) -> st.SearchStrategy:
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        return st.one_of(st.sampled_from([n for n in _NEAR if lo <= n <= hi]), st.integers(lo, hi))
    if kind == 6:
        return st.floats(width=32)
    if kind == 12:
        return st.floats()
    if kind == 7:
        return st.booleans()
    # strings: text, and bytes that are not UTF-8
    return st.one_of(st.text(max_size=12), st.binary(max_size=12), st.sampled_from(["a b", "llama", "gpt2", ""]))


_KINDS = st.sampled_from([*_INT_RANGES, 6, 7, 12, STRING])


def _arrays(depth: int) -> st.SearchStrategy:
    flat = _KINDS.flatmap(lambda k: st.lists(_scalar(k), max_size=6).map(lambda items, k=k: (k, items)))
    if depth == 0:
        return flat
    return st.one_of(flat, st.lists(_arrays(depth - 1), min_size=1, max_size=2).map(lambda items: (ARRAY, items)))


#: (type id, value): any GGUF value, a nested array, or a type GGUF does not define.
VALUES = st.one_of(
    _KINDS.flatmap(lambda k: _scalar(k).map(lambda v, k=k: (k, v))),
    _arrays(6).map(lambda a: (ARRAY, a)),
    st.tuples(st.integers(13, 2**32 - 1), st.binary(max_size=16)),
)

METADATA_EDITS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(LOADER_KEYS), VALUES),
    st.tuples(st.just("drop"), st.sampled_from(LOADER_KEYS), st.none()),
)
_DIMS = st.lists(st.sampled_from([0, 1, 2, 32, 64, 128, 2**40]), max_size=6)
STRUCTURE_EDITS = st.one_of(
    st.tuples(st.just("dims"), st.integers(0, 19), _DIMS),
    st.tuples(st.just("type_id"), st.integers(0, 19), st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("offset"), st.integers(0, 19), st.one_of(st.integers(0, 2**20), st.integers(0, 2**64 - 1))),
    st.tuples(st.just("name"), st.integers(0, 19), st.sampled_from(["blk.9.attn_q.weight", "output.weight", "", "x"])),
    st.tuples(st.just("n_kv"), st.none(), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("n_tensors"), st.none(), st.integers(0, 40) | st.integers(0, 2**64 - 1)),
    st.tuples(st.just("version"), st.none(), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("alignment"), st.none(), _scalar(4).map(lambda v: (4, v)) | VALUES),
    st.tuples(st.just("cut"), st.none(), st.integers(0, 340_000)),
    st.tuples(st.just("byte"), st.integers(0, 3_200), st.integers(0, 255)),
)


def _apply(g: gb.Gguf, edits) -> bytes:
    cut, stray = None, []
    for op, where, value in edits:
        if op == "set":
            g.set(where, *value)
        elif op == "drop":
            g.kvs.pop(where, None)
        elif op in ("dims", "type_id", "offset", "name"):
            setattr(g.tensors[where], op, value)
        elif op in ("n_kv", "n_tensors", "version"):
            setattr(g, op, value)
        elif op == "alignment":
            g.set("general.alignment", *value)
        elif op == "cut":
            cut = value
        else:
            stray.append((where, value))
    data = bytearray(gb.encode(g))
    for pos, byte in stray:
        if pos < len(data):
            data[pos] = byte
    return bytes(data[:cut])


def _loads_or_says_broken(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzzed.gguf"
        path.write_bytes(data)
        try:
            load_path(path)
        except ModelLoadError as e:  # anything else fails the test
            assert str(path) in str(e), str(e)


@pytest.fixture(scope="module")
def base(tiny_gguf_file) -> gb.Gguf:
    return gb.read(tiny_gguf_file)


_SETTINGS = dict(derandomize=True, database=None, deadline=timedelta(seconds=5),
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


@settings(max_examples=250, **_SETTINGS)
@given(edits=st.lists(METADATA_EDITS, min_size=1, max_size=3))
def test_fuzzed_metadata_loads_or_is_a_clear_error(base, edits):
    _loads_or_says_broken(_apply(copy.deepcopy(base), edits))


@settings(max_examples=150, **_SETTINGS)
@given(edits=st.lists(STRUCTURE_EDITS, min_size=1, max_size=3))
def test_fuzzed_structure_loads_or_is_a_clear_error(base, edits):
    _loads_or_says_broken(_apply(copy.deepcopy(base), edits))
