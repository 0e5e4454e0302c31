"""First-build check: a built graph must compute what the eager module computes.

Both run the same script through their runners (``plugstack.compare``): two sequences
admitted into two slots (for growing state, of different lengths, so the slots' layout is
exercised), then one step of both. fp32 graphs must agree within ``tolerance`` relative to
each output's magnitude: ``max|onnx - eager| <= tolerance * max(1, max|eager|)``
(different kernels sum in a different order); so must native graphs at ``accuracy_level=0``,
whose weights are the file's, as the eager module's are. Other quantised graphs cannot
meet that: their outputs must reach a minimum cosine similarity (after centring) with the
eager ones, ``COSINE_BOUNDS`` below; a broken graph scores about 0.
"""

from __future__ import annotations

from typing import Any

import structlog
import torch

from plugstack.backend import Runner
from plugstack.compare import compare_runners
from plugstack.errors import ConfigError
from plugstack.model import Model

log = structlog.get_logger("plugstack.onnx")

#: Min centred cosine similarity of the outputs for graphs that are not fp32 (native: at
#: accuracy_level 4; the random tokens compared make outlier activations, which int8
#: activations round coarsely: 0.89-0.997 measured on SmolLM2).
COSINE_BOUNDS = {"int8": 0.98, "int4": 0.5, "fp16": 0.999, "native": 0.5}


def verify_against_eager(runner: Runner, model: Model, *, variant: str, tolerance: float,
                         accuracy_level: int = 4) -> dict[str, Any]:
    """Compare ``runner`` with ``model.module`` run eagerly; raise :class:`ConfigError` on a
    mismatch. ``variant`` is ``fp32``, ``fp16``, ``int8``, ``int4`` or ``native``. Returns the errors."""
    from plugstack.backends.eager import EagerRunner

    with torch.inference_mode():
        result = {"variant": variant, **compare_runners(runner, EagerRunner(model.module, model.signature), model)}
    exact = variant == "fp32" or (variant == "native" and accuracy_level == 0)
    if exact:
        bound, measure, value = tolerance, "max |difference| / max(1, max |value|)", result["max_scaled_diff"]
        ok = value <= bound
    else:
        bound, measure, value = COSINE_BOUNDS[variant], "cosine similarity of the outputs (must reach)", \
            result["min_cosine"]
        ok = value >= bound
    log.info("onnx.verify", model=model.name, ok=ok, bound=bound, **result)
    if not ok:
        fix = ("raise backend.tolerance if such rounding is expected for your model"
               if exact else "use backend.quantize=int8 or null (int4 may be too lossy for this model)")
        raise ConfigError(
            f"the {variant} ONNX graph of {model.name!r} disagrees with the eager model: {measure} "
            f"{value:.3g} against the bound {bound:g}. Nothing was cached. To proceed: {fix}; "
            f"backend.verify=false skips this check; backend=cpu runs the model eagerly.")
    return result
