"""Two runners of one model through the same script, compared: how a backend's build is
verified against the eager module (``backends/onnx/verify.py``) and how the model kit
checks a model on two backends. Public, so a third-party backend verifies the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch

    from .backend import Runner
    from .model import Model

__all__ = ["centred_cosine", "compare_runners", "example_feeds", "example_inputs", "script"]


def centred_cosine(have: torch.Tensor, want: torch.Tensor) -> float:
    """Smallest per-row cosine similarity of mean-centred values (rows = first dim)."""
    import torch

    a = have.reshape(have.shape[0], -1).double()
    b = want.reshape(want.shape[0], -1).double()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).min())


def example_inputs(model: Model, *, batch: int, seq: int, past: int) -> tuple[torch.Tensor, ...]:
    """``model.example_inputs`` of those sizes, all inputs in signature order. A model whose
    example takes no sizes gives its one fixed example, which only a step without
    ``new_axis`` may do (:class:`ModelLoadError` otherwise)."""
    try:
        return tuple(model.example_inputs(batch=batch, seq=seq, past=past))
    except TypeError:
        if model.signature.new_axis is not None:
            raise ModelLoadError(
                f"model {model.name!r}: example_inputs() takes no batch/seq/past sizes, but its step has "
                f"new_axis={model.signature.new_axis!r}: accept example_inputs(batch=, seq=, past=) (see "
                f"README, 'Writing a model plugin').") from None
        return tuple(model.example_inputs())


def example_feeds(model: Model, rows: int, new: int, starts: list[int]) -> dict[str, torch.Tensor]:
    """Feed inputs from ``model.example_inputs`` for ``rows`` rows of ``new`` positions
    appended after ``starts[i]`` positions (the signature's ``positions`` input follows them)."""
    import torch

    sig = model.signature
    values = example_inputs(model, batch=rows, seq=new, past=0)
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


def compare_runners(runner: Runner, reference: Runner, model: Model) -> dict[str, float]:
    """Run :func:`script` on both; the worst differences, for every output."""
    import torch

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
                    f"the runner under test returned {name} of model {model.name!r} with shape {tuple(h.shape)} "
                    f"at the {what}, the reference {tuple(w.shape)}. Use backend=cpu and report this model.")
            if not w.is_floating_point() or not w.numel():
                continue
            h, w = h.float(), w.float()
            if not torch.isfinite(h).all():
                raise ConfigError(f"the runner under test produced NaN/inf in {name} of {model.name!r} at the {what}.")
            diff = float((h - w).abs().max())
            worst["max_abs_diff"] = max(worst["max_abs_diff"], diff)
            worst["max_scaled_diff"] = max(worst["max_scaled_diff"], diff / max(1.0, float(w.abs().max())))
            worst["min_cosine"] = min(worst["min_cosine"], centred_cosine(h, w))
    return worst
