"""``model.adapter``: weights ``app=train`` wrote for a base model, merged into it on load.

An adapter file is safetensors with one metadata entry, ``plugstack.finetune`` (JSON), that
says what it holds (:func:`lora_metadata` writes it):

* ``kind: "lora"``: for each target module ``t`` of each layer ``i``, ``A`` ``[rank, in]``
  and ``B`` ``[out, rank]`` named ``layers.{i}.{self_attn|mlp}.{t}.lora_{A|B}.weight``
  (PEFT's names, less its adapter name); merged as ``W += scale · B @ A`` in fp32;
* ``kind: "full"``: every weight of the model (full fine-tuning), which replaces the base's.

Both name the digest of the base weights they were trained on; a file for another base,
or whose tensors do not fit this model's shapes, is refused before anything is built. The
merge happens before the model is handed out, so every backend runs plain weights: the
fused ONNX graph too, built from the merged fp32 weights (the GGUF's own quantised blocks
no longer describe them), under a cache key that includes the adapter's digest.
Everything here but :meth:`Adapter.apply` is light (no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugstack.errors import ModelLoadError

from .checks import expected_shapes
from .config import LORA_MODULES

__all__ = ["FORMAT", "KNOWN_ADAPTERS", "META_KEY", "Adapter", "adapter_metadata", "adapter_path", "lora_name",
           "read_adapter"]

#: The safetensors metadata key of an adapter's description.
META_KEY = "plugstack.finetune"
#: Bump when the layout of adapter files changes.
FORMAT = 1
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_FLOATS = ("F32", "F16", "BF16")


#: Adapters shipped inside a package, by the name ``model.adapter`` takes: (package, file).
KNOWN_ADAPTERS = {"support": ("plugstack.plugins.support", "weights/support-lora.safetensors")}


def adapter_path(value: str | Path) -> Path:
    """The file ``model.adapter`` (or ``init_adapter``) names: a known adapter's name, or a path."""
    if str(value) in KNOWN_ADAPTERS:
        from importlib.resources import files

        package, name = KNOWN_ADAPTERS[str(value)]
        return Path(str(files(package).joinpath(name)))
    return Path(value).expanduser()


def lora_name(layer: int, target: str, part: str) -> str:
    """The name of LoRA matrix ``part`` (``"A"`` or ``"B"``) of ``target`` in ``layer``."""
    parent = "self_attn" if target in _ATTENTION else "mlp"
    return f"layers.{layer}.{parent}.{target}.lora_{part}.weight"


def adapter_metadata(kind: str, *, base_digest: str, base_source: str, **fields: Any) -> dict[str, str]:
    """The safetensors metadata of an adapter file (``fields``: rank, alpha, scale, targets...)."""
    info = {"format": FORMAT, "kind": kind, "base_digest": base_digest, "base_source": base_source, **fields}
    return {META_KEY: json.dumps(info, sort_keys=True)}


@dataclass(frozen=True)
class Adapter:
    """A checked adapter file: what it is, and the digest that joins the model's."""

    path: Path
    kind: str
    meta: dict[str, Any]
    digest: str

    def folded(self, base_digest: str) -> str:
        """The digest of the base weights with this adapter merged in (a cache key)."""
        return hashlib.sha256(f"{base_digest}+{self.kind}:{self.digest}".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        keep = ("kind", "rank", "alpha", "scale", "targets", "base_digest")
        return {"path": str(self.path), "sha256": self.digest, **{k: self.meta[k] for k in keep if k in self.meta}}

    def apply(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """``tensors`` (the base's fp32 state dict, by our names) with this adapter merged in."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as st:
                stored = {k: st.get_tensor(k).float() for k in st.keys()}
        except (SafetensorError, OSError) as e:
            raise _unusable(self.path, f"its tensors cannot be read ({e})") from None
        if self.kind == "full":
            return {**tensors, **stored}
        scale = float(self.meta["scale"])
        out = dict(tensors)
        for name in {n.rsplit(".lora_", 1)[0] for n in stored}:
            a, b = stored[f"{name}.lora_A.weight"], stored[f"{name}.lora_B.weight"]
            out[f"{name}.weight"] = tensors[f"{name}.weight"].float() + scale * (b @ a)  # not in place: may be mmap
        return out


    def low_rank(self) -> dict[str, tuple[Any, Any]]:
        """A LoRA adapter's terms as float32 numpy, by the weight they add to:
        ``{"layers.0.self_attn.q_proj.weight": (A [rank, in], scale·B [out, rank])}``."""
        import numpy as np
        from safetensors import SafetensorError, safe_open

        if self.kind != "lora":
            raise ValueError(f"a {self.kind} adapter has no low-rank terms")
        try:
            with safe_open(str(self.path), framework="numpy") as st:
                stored = {k: st.get_tensor(k).astype(np.float32) for k in st.keys()}
        except (SafetensorError, OSError) as e:
            raise _unusable(self.path, f"its tensors cannot be read ({e})") from None
        scale = np.float32(self.meta["scale"])
        return {f"{name}.weight": (stored[f"{name}.lora_A.weight"], scale * stored[f"{name}.lora_B.weight"])
                for name in {n.rsplit(".lora_", 1)[0] for n in stored}}


def _unusable(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"model.adapter={path} cannot be used: {why}. Point model.adapter at a .safetensors "
                          f"file that app=train wrote (its model.safetensors, or a checkpoint's).")


def _header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """The file's metadata and its tensors' dtypes and shapes, read without their data."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelLoadError(f"model.adapter={path} does not exist (or is not a file). Point it at the "
                             f"model.safetensors that app=train wrote, or name a shipped adapter "
                             f"({', '.join(KNOWN_ADAPTERS)}).")
    try:
        with safe_open(str(path), framework="numpy") as st:
            meta = st.metadata() or {}
            tensors = {k: (st.get_slice(k).get_dtype(), tuple(st.get_slice(k).get_shape())) for k in st.keys()}
    except (SafetensorError, OSError) as e:
        raise _unusable(path, f"it is not a readable safetensors file ({e})") from None
    return meta, tensors


def _description(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    raw = meta.get(META_KEY)
    if raw is None:
        raise _unusable(path, f"it has no {META_KEY!r} metadata, so it is not an adapter plugstack wrote "
                              f"(a model's own weights go in model.path)")
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("kind") not in ("lora", "full"):
        raise _unusable(path, f"its {META_KEY!r} metadata is not an adapter description")
    if info.get("format") != FORMAT:
        raise _unusable(path, f"it is in adapter format {info.get('format')!r}; this plugstack reads format {FORMAT}")
    if not isinstance(info.get("base_digest"), str):
        raise _unusable(path, "its description names no base model digest")
    if info["kind"] == "lora":
        targets, scale = info.get("targets"), info.get("scale")
        if not (isinstance(targets, list) and targets and set(targets) <= set(LORA_MODULES)):
            raise _unusable(path, f"its LoRA targets {targets!r} are not a list of {', '.join(LORA_MODULES)}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise _unusable(path, f"its LoRA scale {scale!r} is not a finite number")
    return info


def _expected(info: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) an adapter of ``info``'s kind must hold for this model."""
    base = expected_shapes(hparams)
    if info["kind"] == "full":
        return base
    rank = info.get("rank")
    out = {}
    for i in range(hparams["num_layers"]):
        for t in info["targets"]:
            rows, cols = base[lora_name(i, t, "A").rsplit(".lora_", 1)[0] + ".weight"]
            out[lora_name(i, t, "A")], out[lora_name(i, t, "B")] = (rank, cols), (rows, rank)
    return out


def _differences(info: Mapping[str, Any], found: Mapping[str, tuple[str, tuple[int, ...]]],
                 hparams: Mapping[str, Any], base_digest: str, base_source: str) -> list[str]:
    """What about the file does not fit this base model, in words (empty: it fits)."""
    diffs = []
    if info["base_digest"] != base_digest:
        diffs.append(f"it was trained on base weights {info['base_digest'][:16]}… "
                     f"({info.get('base_source') or 'unknown source'}), this model's are {base_digest[:16]}… "
                     f"({base_source})")
    expected = _expected(info, hparams)
    extra = set(found) - set(expected) - ({"lm_head.weight"} if info["kind"] == "full" else set())
    missing = [k for k in expected if k not in found]
    if missing or extra:
        names = ", ".join(sorted(missing)[:3] + sorted(extra)[:3])
        diffs.append(f"its tensors are not those of a {info['kind']} adapter of this {hparams['num_layers']}-layer "
                     f"model ({len(missing)} missing, {len(extra)} unexpected: {names})")
    shapes = [f"{k} is {list(found[k][1])}, this model needs {list(s)}" for k, s in expected.items()
              if k in found and found[k][1] != s]
    if shapes:
        diffs.append(f"{len(shapes)} tensor(s) have other shapes ({shapes[0]})")
    kinds = sorted({d for d, _ in found.values()} - set(_FLOATS))
    if kinds:
        diffs.append(f"it stores {', '.join(kinds)} tensors, not floats")
    return diffs


def read_adapter(path: str | Path, *, hparams: Mapping[str, Any], base_digest: str, base_source: str) -> Adapter:
    """The adapter at ``path``, checked against the base model (its hyper-parameters and
    weights digest) from the file's header alone; a :class:`ModelLoadError` naming what differs."""
    from .weights import sha256_of

    path = adapter_path(path)
    meta, found = _header(path)
    info = _description(path, meta)
    diffs = _differences(info, found, hparams, base_digest, base_source)
    if diffs:
        raise ModelLoadError(f"model.adapter={path} does not fit this model: {'; '.join(diffs)}. Use the adapter "
                             f"trained for this model.path/model.source, or train one for it with app=train.")
    return Adapter(path=path, kind=info["kind"], meta=info, digest=sha256_of(path))
