"""First-build check: a built graph must compute what the eager module computes.

Both run the same script through their runners: two sequences admitted into two slots
(for growing state, of different lengths, so the slots' layout is exercised), then one
step of both. fp32 graphs must agree within ``tolerance`` relative to each output's
magnitude: ``max|onnx - eager| <= tolerance * max(1, max|eager|)`` (different kernels sum
in a different order). Quantised graphs cannot meet that: their outputs must reach a
minimum cosine similarity (after centring) with the eager ones, ``COSINE_BOUNDS`` below; a
broken graph scores about 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
import torch

from plugstack.backend import Runner
from plugstack.errors import ConfigError
from plugstack.model import Model

log = structlog.get_logger("plugstack.onnx")

#: Min centred cosine similarity of the outputs for graphs that are not fp32.
COSINE_BOUNDS = {"int8": 0.98, "int4": 0.5, "fp16": 0.999}


def centred_cosine(have: torch.Tensor, want: torch.Tensor) -> float:
    """Smallest per-row cosine similarity of mean-centred values (rows = first dim)."""
    a = have.reshape(have.shape[0], -1).double()
    b = want.reshape(want.shape[0], -1).double()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).min())


def example_feeds(model: Model, rows: int, new: int, starts: list[int]) -> dict[str, torch.Tensor]:
    """Feed inputs from ``model.example_inputs`` for ``rows`` rows of ``new`` positions
    appended after ``starts[i]`` positions (the signature's ``positions`` input follows them)."""
    sig = model.signature
    try:
        values = model.example_inputs(batch=rows, seq=new, past=0)
    except TypeError:  # a model whose example takes no sizes: one fixed example
        values = model.example_inputs()
    feeds = {n: v for n, v in zip(sig.input_names, values, strict=True) if n in sig.feed_inputs}
    if sig.positions:
        feeds[sig.positions] = torch.tensor([list(range(s, s + new)) for s in starts])
    return feeds


def script(model: Model) -> Iterator[tuple[str, dict[str, torch.Tensor], list[int] | None]]:
    """``(what, feeds, slots)`` steps that both runners take on a 2-slot state."""
    if model.signature.new_axis is None:
        yield "one step", example_feeds(model, 2, 1, [0, 0]), None
        return
    yield "admission of a 4-position sequence into slot 0", example_feeds(model, 1, 4, [0]), [0]
    yield "admission of a 2-position sequence into slot 1", example_feeds(model, 1, 2, [0]), [1]
    yield "one step of both slots", example_feeds(model, 2, 1, [4, 2]), [0, 1]


def compare(runner: Runner, reference: Runner, model: Model) -> dict[str, float]:
    """Run :func:`script` on both; the worst differences, for every output."""
    worst = {"max_abs_diff": 0.0, "max_scaled_diff": 0.0, "min_cosine": 1.0}
    ours, theirs = runner.new_state(2), reference.new_state(2)
    for what, feeds, slots in script(model):
        if slots is None:  # stateless items: a fresh state of as many rows as the example has
            got, want = runner.run(feeds).outputs, reference.run(feeds).outputs
        else:
            got, want = runner.run(feeds, ours, slots).outputs, reference.run(feeds, theirs, slots).outputs
        for name, w in want.items():
            h = got[name]
            if tuple(h.shape) != tuple(w.shape):
                raise ConfigError(
                    f"the ONNX graph of {model.name!r} returned {name} with shape {tuple(h.shape)} at the "
                    f"{what}, the eager module {tuple(w.shape)}. The graph is wrong; use backend=cpu and "
                    f"report this model.")
            if not w.is_floating_point() or not w.numel():
                continue
            h, w = h.float(), w.float()
            if not torch.isfinite(h).all():
                raise ConfigError(f"the ONNX graph of {model.name!r} produced NaN/inf in {name} at the {what}.")
            diff = float((h - w).abs().max())
            worst["max_abs_diff"] = max(worst["max_abs_diff"], diff)
            worst["max_scaled_diff"] = max(worst["max_scaled_diff"], diff / max(1.0, float(w.abs().max())))
            worst["min_cosine"] = min(worst["min_cosine"], centred_cosine(h, w))
    return worst


def verify_against_eager(runner: Runner, model: Model, *, variant: str, tolerance: float) -> dict[str, Any]:
    """Compare ``runner`` with ``model.module`` run eagerly; raise :class:`ConfigError` on a
    mismatch. ``variant`` is ``fp32``, ``fp16``, ``int8`` or ``int4``. Returns the errors."""
    from plugstack.backends.eager import EagerRunner

    with torch.inference_mode():
        result = {"variant": variant, **compare(runner, EagerRunner(model.module, model.signature), model)}
    if variant == "fp32":
        bound, measure, value = tolerance, "max |difference| / max(1, max |value|)", result["max_scaled_diff"]
        ok = value <= bound
    else:
        bound, measure, value = COSINE_BOUNDS[variant], "cosine similarity of the outputs (must reach)", \
            result["min_cosine"]
        ok = value >= bound
    log.info("onnx.verify", model=model.name, ok=ok, bound=bound, **result)
    if not ok:
        fix = ("raise backend.tolerance if such rounding is expected for your model"
               if variant == "fp32" else "use backend.quantize=int8 or null (int4 may be too lossy for this model)")
        raise ConfigError(
            f"the {variant} ONNX graph of {model.name!r} disagrees with the eager model: {measure} "
            f"{value:.3g} against the bound {bound:g}. Nothing was cached. To proceed: {fix}; "
            f"backend.verify=false skips this check; backend=cpu runs the model eagerly.")
    return result
