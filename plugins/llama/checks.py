"""Checks of what a model file says, made before anything sized by it is built.

A model file is data from whoever made it. Every value the loaders read is checked for its
type and range, the hyper-parameters against each other and against the tensors the file
really holds, and every path it names must stay inside the model directory. A failed
check is one :class:`~plugstack.errors.ModelLoadError` made by :func:`broken`, so each
reads ``model file is broken: <what>, in <where>. <what to do>``. No torch here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from plugstack.errors import ModelLoadError

__all__ = [
    "MAX_CONTEXT",
    "broken",
    "check_hparams",
    "check_tensors",
    "context",
    "expected_shapes",
    "flag",
    "inside",
    "integer",
    "norm_eps",
    "number",
    "read_bytes",
    "read_json",
    "shown",
    "text",
]

#: The largest context window believed (Llama 4 Scout's is 10M): it sizes KV caches.
MAX_CONTEXT = 1 << 24
#: JSON side files (config, index, generation config) are kilobytes; refuse absurd ones unread.
_MAX_JSON_BYTES = 64 << 20
_FIX = "Download or convert the model again, or point model.path at another model."
_LAYER = re.compile(r"^layers\.(\d+)\.")


def broken(what: str, where: Any) -> ModelLoadError:
    """The one error of a bad model file: what is wrong, in which file, what to do."""
    return ModelLoadError(f"model file is broken: {what}, in {where}. {_FIX}")


def shown(value: Any) -> str:
    """A value as a message shows it: a short repr, containers by their size."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(value: Any, key: str, where: Any, *, low: int = 1, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]``."""
    if _is_int(value) and value >= low and (high is None or value <= high):
        return value
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    raise broken(f"{key} is {shown(value)}, expected {kind}{f' up to {high}' if high else ''}", where)


def number(value: Any, key: str, where: Any, *, positive: bool = True, below: float | None = None) -> float:
    """``value`` as a float if it is a finite number, above 0 (or at least 0 unless
    ``positive``) and below ``below``."""
    try:
        x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond float range
        x = math.inf
    if math.isfinite(x) and (x > 0 or (x == 0 and not positive)) and (below is None or x < below):
        return x
    span = ("above 0" if positive else "of at least 0") + (f" below {below:g}" if below else "")
    raise broken(f"{key} is {shown(value)}, expected a finite number {span}", where)


def context(value: Any, key: str, where: Any) -> int:
    """A context window: positive and believable (it sizes KV caches)."""
    return integer(value, key, where, high=MAX_CONTEXT)


def norm_eps(value: Any, key: str, where: Any) -> float:
    return number(value, key, where, positive=False, below=1.0)


def text(value: Any, key: str, where: Any) -> str:
    if isinstance(value, str):
        return value
    raise broken(f"{key} is {shown(value)}, expected a string", where)


def flag(value: Any, key: str, where: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise broken(f"{key} is {shown(value)}, expected true or false", where)


def inside(directory: Path, name: Any, key: str, where: Any) -> Path:
    """``directory / name`` for a file name read from a file, refused unless it stays inside
    the directory. Lexical on purpose: HF cache snapshots hold symlinks to blobs elsewhere."""
    p = PurePosixPath(name) if isinstance(name, str) else None
    if p is None or not name or "\0" in name or "\\" in name or p.is_absolute() or ".." in p.parts:
        raise broken(f"{key} names the file {shown(name)}, which is not a file inside the model directory", where)
    return directory / p


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (UTF-8), or a broken-file error saying why not."""
    raw = read_bytes(path, _MAX_JSON_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise broken(f"{path.name} is not UTF-8 text (byte {e.start})", path) from None
    except RecursionError:
        raise broken(f"{path.name} nests JSON too deeply", path) from None
    except ValueError as e:
        raise broken(f"{path.name} is not valid JSON ({e})", path) from None
    if not isinstance(data, dict):
        raise broken(f"{path.name} holds {shown(data)}, expected a JSON object", path)
    return data


def read_bytes(path: Path, most: int | None = None) -> bytes:
    """The bytes of a file the model directory names, or a broken-file error (a directory
    where a file belongs, unreadable, absurdly large)."""
    try:
        size = path.stat().st_size
        if most is not None and size > most:
            raise broken(f"{path.name} is {size} bytes, far more than such a file holds", path)
        return path.read_bytes()
    except OSError as e:
        raise broken(f"{path.name} cannot be read ({e.strerror or e})", path) from None


def check_hparams(h: Mapping[str, Any], keys: Mapping[str, str], where: Any) -> None:
    """What the module needs of hyper-parameters that each passed their own check."""
    heads, kv = h["num_heads"], h["num_kv_heads"]
    if heads % kv:
        raise broken(f"{keys['num_kv_heads']} is {kv}, which does not divide {keys['num_heads']} ({heads})", where)
    if h["head_dim"] % 2:  # rotary embeddings rotate pairs of dimensions
        raise broken(f"the head size ({keys['head_dim']}) is {h['head_dim']}, expected an even number", where)


def expected_shapes(h: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``Llama(LlamaConfig(**h))`` and its shape, without building it."""
    hidden, ff, vocab = h["hidden_size"], h["intermediate_size"], h["vocab_size"]
    q, kv = h["num_heads"] * h["head_dim"], h["num_kv_heads"] * h["head_dim"]
    block = {
        "input_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q, hidden),
        "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden),
        "self_attn.o_proj.weight": (hidden, q),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (ff, hidden),
        "mlp.up_proj.weight": (ff, hidden),
        "mlp.down_proj.weight": (hidden, ff),
    }
    if h["qkv_bias"]:
        block.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    out = {"embed_tokens.weight": (vocab, hidden), "norm.weight": (hidden,)}
    if not h["tie_embeddings"]:
        out["lm_head.weight"] = (vocab, hidden)
    for i in range(h["num_layers"]):
        out.update({f"layers.{i}.{k}": s for k, s in block.items()})
    return out


def check_tensors(
    h: Mapping[str, Any],
    found: Mapping[str, tuple[int, ...]],
    keys: Mapping[str, str],
    where: Any,
    spell: Callable[[str], str] = str,
) -> None:
    """The tensors ``found`` (our name -> shape) are exactly those the hyper-parameters ``h``
    describe. ``spell`` gives a tensor's name as the file writes it, for messages."""
    n = h["num_layers"]
    blocks = {int(m.group(1)) for name in found if (m := _LAYER.match(name))}
    top = max(blocks, default=-1) + 1
    if top != n:  # before expected_shapes, which would list every one of n blocks
        raise broken(f"{keys['num_layers']} is {n} but the file holds tensors of {top} blocks", where)
    expected = expected_shapes(h)
    missing = [k for k in expected if k not in found]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        names = ", ".join(repr(spell(k)) for k in missing[:5])
        raise broken(f"tensor(s) {names}{more} are missing for a {n}-block model", where)
    unexpected = sorted(set(found) - set(expected) - ({"lm_head.weight"} if h["tie_embeddings"] else set()))
    if unexpected:  # a variant (extra norms, biases) rather than damage: say so
        raise ModelLoadError(
            f"{where}: tensor(s) {', '.join(spell(k) for k in unexpected[:5])} have no place in the Llama "
            f"module; the checkpoint is a variant the llama plugin does not support."
        )
    for key, shape in expected.items():
        if tuple(found[key]) != shape:
            raise broken(
                f"tensor {spell(key)!r} has shape {list(found[key])}, expected {list(shape)} from the hyper-parameters",
                where,
            )
