"""Module weights and optimiser state as safetensors files: tensors only, never pickle.

The optimiser's ``state_dict()`` is split in two: its tensors, flattened to
``state.<param index>.<name>`` in ``optimizer.safetensors``, and everything else (param
groups, non-tensor state) as JSON for ``state.json``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from plugstack.errors import PluginError
from plugstack.files import FILE_MODE, temp_prefix

from .store import CheckpointError

__all__ = ["load_optimizer", "load_trainable", "optimizer_state", "save_tensors", "save_trainable"]


def _plain(tensors: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors sharing no storage (safetensors refuses shared ones: tied weights)."""
    out, seen = {}, set()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise PluginError(f"{what} holds {name!r} = {type(value).__name__}, not a tensor: a checkpoint "
                              f"keeps tensors only (safetensors).")
        t = value.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if key is not None and (key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # a view of another tensor, or of a larger buffer
        seen.add(key)
        out[name] = t
    return out


def save_tensors(tensors: dict[str, Any], path: Path, what: str, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (a temporary sibling, fsync'd, then renamed)."""
    tmp = path.with_name(f"{temp_prefix(path.name)}{uuid.uuid4().hex[:8]}")
    try:
        save_file(_plain(tensors, what), str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_trainable(trainable: Any, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``trainable.state_dict()`` with its ``weights_metadata()`` (and ``metadata``) to ``path``."""
    meta = {**trainable.weights_metadata(), **(metadata or {})}
    save_tensors(dict(trainable.state_dict()), path, "the Trainable's state_dict", meta or None)


def load_trainable(trainable: Any, path: Path, model: str) -> None:
    try:
        trainable.load_state_dict(load_file(str(path), device="cpu"))
    except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as exc:
        why = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise CheckpointError(f"{path} does not fit model {model!r}'s trainable module ({why}): the model changed "
                              f"since it was written. Use another app.directory, or app.resume=false to start "
                              f"over.") from None


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, rest)``: the optimiser's state tensors by flat name, and the JSON rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    rest = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, json.loads(json.dumps(rest))  # what is stored is what is compared and loaded


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, rest: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in load_file(str(path), device="cpu").items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = rest.get("param_groups", [])
    if rest.get("class") != type(optimizer).__name__ or [len(g["params"]) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path} holds the state of a {rest.get('class')} over other parameters than this "
                              f"{type(optimizer).__name__}: the model changed since it was written. Use another "
                              f"app.directory, or app.resume=false to start over.")
    for group in groups:  # JSON made the tuples lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
