"""First-build check: the exported graph must compute what the eager module computes.

Runs a prefill step (batch 2, 4 new tokens, empty state) and a decode step that continues
from each side's own state, through ONNX Runtime and through ``model.module``, and
compares every output. fp32 graphs must agree within ``tolerance`` (default 1e-4) relative
to each output's magnitude: ``max|onnx - eager| <= tolerance * max(1, max|eager|)``.
Different kernels sum in a different order; on SmolLM2 (logits up to ~40) with random
sample tokens that is up to ~6e-4 absolute, on a real chat prompt ~7e-5. Quantised graphs
cannot meet that: their logits must reach a minimum cosine similarity (after centring)
with the eager ones, ``COSINE_BOUNDS`` below (SmolLM2 measures 0.996-0.998 for int8 and
0.75-0.91 for int4; a broken graph scores about 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import structlog
import torch

from plugstack.errors import ConfigError
from plugstack.model import Model

from .runner import OnnxRunner

log = structlog.get_logger("plugstack.onnx")

#: Min centred cosine similarity of the logits for graphs that are not fp32.
COSINE_BOUNDS = {"int8": 0.98, "int4": 0.5, "fp16": 0.999}


def centred_cosine(have: torch.Tensor, want: torch.Tensor) -> float:
    """Smallest per-row cosine similarity of mean-centred values (rows = first dim)."""
    a = have.reshape(have.shape[0], -1).double()
    b = want.reshape(want.shape[0], -1).double()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).min())


def _samples(model: Model) -> list[tuple[torch.Tensor, ...]]:
    if model.signature.state:
        try:
            return [tuple(model.example_inputs(batch=2, seq=4, past=0)),
                    tuple(model.example_inputs(batch=2, seq=1, past=4))]
        except TypeError:
            pass
    return [tuple(model.example_inputs())]


def verify_against_eager(runner: OnnxRunner, model: Model, *, variant: str, tolerance: float) -> dict[str, Any]:
    """Compare ``runner`` with ``model.module``; raise :class:`ConfigError` on a mismatch.

    ``variant`` is ``fp32``, ``fp16``, ``int8`` or ``int4``. Returns the measured errors.
    """
    sig = model.signature
    names = sig.input_names
    state_pos = {name: names.index(name) for name in sig.state_inputs}
    onnx_state: Any = None
    eager_state: list[torch.Tensor] | None = None
    worst_abs, worst_scaled, worst_cos = 0.0, 0.0, 1.0
    carried = set(sig.state_outputs)
    module = model.module
    for step, sample in enumerate(_samples(model)):
        args = list(sample)
        if step and sig.state:  # continue from the previous step's state on both sides
            for i, name in enumerate(sig.state_inputs):
                args[state_pos[name]] = eager_state[i]
        else:
            onnx_state = [sample[state_pos[n]].numpy() for n in sig.state_inputs] if sig.state else None
        with torch.inference_mode():
            ref = module(*args)
        ref = dict(zip(sig.output_names, ref if isinstance(ref, (tuple, list)) else (ref,), strict=True))
        feed = {n: t for n, t in zip(names, args, strict=True) if n not in state_pos}
        got = runner.run(feed, onnx_state)
        onnx_state = got.state
        eager_state = [ref[o] for o in sig.state_outputs]
        outs = dict(got.outputs)
        for o, value in zip(sig.state_outputs, got.state or (), strict=False):
            outs[o] = torch.from_numpy(np.asarray(value))
        for name, want in ref.items():
            have = outs[name]
            if tuple(have.shape) != tuple(want.shape):
                raise ConfigError(
                    f"the ONNX graph of {model.name!r} returned {name} with shape {tuple(have.shape)} at step "
                    f"{step}, the eager module {tuple(want.shape)}. The export is wrong; use backend=cpu and "
                    f"report this model."
                )
            if not want.is_floating_point():
                continue
            have, want = have.float(), want.float()
            if not torch.isfinite(have).all():
                raise ConfigError(f"the ONNX graph of {model.name!r} produced NaN/inf in {name} at step {step}.")
            if want.numel():
                diff = float((have - want).abs().max())
                worst_abs = max(worst_abs, diff)
                worst_scaled = max(worst_scaled, diff / max(1.0, float(want.abs().max())))
            if name not in carried and want.numel():
                worst_cos = min(worst_cos, centred_cosine(have, want))
    result = {"variant": variant, "max_abs_diff": worst_abs, "max_scaled_diff": worst_scaled,
              "min_cosine": worst_cos}
    if variant == "fp32":
        ok, bound, measure = worst_scaled <= tolerance, tolerance, "max |difference| / max(1, max |value|)"
        value = worst_scaled
    else:
        bound = COSINE_BOUNDS[variant]
        ok, measure, value = worst_cos >= bound, "cosine similarity of the logits (must reach)", worst_cos
    log.info("onnx.verify", model=model.name, ok=ok, bound=bound, **result)
    if not ok:
        fix = ("raise backend.tolerance if such rounding is expected for your model"
               if variant == "fp32" else "use backend.quantize=int8 or null (int4 may be too lossy for this model)")
        raise ConfigError(
            f"the {variant} ONNX graph of {model.name!r} disagrees with the eager model: {measure} "
            f"{value:.3g} against the bound {bound:g}. Nothing was cached. To proceed: {fix}; "
            f"backend.verify=false skips this check; backend=cpu runs the model eagerly."
        )
    return result
