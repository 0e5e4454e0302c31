"""What the backend kit's tests share: which models a test applies to, the inputs of one
step, and how outputs are compared with the reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from plugstack.compare import example_feeds
from plugstack.signature import BATCH

from .driver import SlotDriver

if TYPE_CHECKING:
    from plugstack.backend import Runner
    from plugstack.model import Model
    from plugstack.signature import StepSignature

__all__ = ["ITEM_ROWS", "PROMPT", "SHORT_PROMPT", "applies_to", "assert_close", "assert_outputs_close",
           "item_feeds", "item_test", "one_step", "relative_error", "row_of", "sequence_test"]

#: Prompts used throughout: token ids below 128 (in every token model's vocabulary).
PROMPT = [5, 17, 42, 99, 3, 64, 23, 80, 11, 7]
SHORT_PROMPT = [31, 8, 120, 56]
#: Rows of the example a stateless step is checked on (a batch, and each row alone).
ITEM_ROWS = 3

F = TypeVar("F", bound=Callable[..., Any])


def _is_sequence(sig: StepSignature) -> bool:
    return sig.new_axis is not None


def _is_item(sig: StepSignature) -> bool:
    return sig.new_axis is None


def sequence_test(test: F) -> F:
    """A test that feeds token sequences (prompts, decode steps, slots): it is generated
    only for models whose step appends new positions (``new_axis``), a decoder's."""
    test.kit_applies = _is_sequence  # type: ignore[attr-defined]
    return test


def item_test(test: F) -> F:
    """A test of a step that is one whole item (no ``new_axis``: a denoiser's)."""
    test.kit_applies = _is_item  # type: ignore[attr-defined]
    return test


def applies_to(test: Callable[..., Any], sig: StepSignature) -> bool:
    """Does ``test`` apply to a model of this signature? (Unmarked tests apply to every model.)"""
    fits = getattr(test, "kit_applies", None)
    return fits is None or fits(sig)


def item_feeds(model: Model, rows: int = ITEM_ROWS, seed: int = 0) -> dict[str, Any]:
    """The model's example inputs of ``rows`` rows drawn under ``seed`` (equal values for
    equal seeds: both runners of a comparison get the same); the global RNG is left as it was."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return example_feeds(model, rows, 1, [0] * rows)


def one_step(runner: Runner, model: Model) -> dict[str, Any]:
    """The outputs of the kit's first step: the prompt's last logits (a sequence model), or
    those of the seeded example (a stateless one)."""
    if runner.signature.new_axis is None:
        return dict(runner.run(item_feeds(model)).outputs)
    return {"logits": SlotDriver(runner).feed([PROMPT])}


def assert_close(got: Any, want: Any, atol: float, what: str) -> None:
    """Max absolute difference within ``atol`` (logits: a bounded scale, and greedy tokens to agree)."""
    import torch

    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite logits"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= atol, f"{what}: max |logit difference| {diff:.3g} exceeds atol {atol:g}"


def relative_error(got: Any, want: Any) -> float:
    """``||got - want|| / ||want||`` over the whole tensor (0 where both are 0)."""
    got, want = got.double(), want.double()
    scale = float(want.norm())
    return float((got - want).norm()) / scale if scale else float((got - want).norm())


def assert_outputs_close(got: Mapping[str, Any], want: Mapping[str, Any], bound: float, what: str) -> None:
    """Every float output of a stateless step within ``bound`` of :func:`relative_error` (such
    outputs have the model's own scale: a guided denoiser's noise reaches about 3); others equal."""
    import torch

    assert sorted(got) == sorted(want), f"{what}: outputs {sorted(got)}, expected {sorted(want)}"
    for name, w in want.items():
        g = got[name]
        assert g.device.type == "cpu", f"{what}: Runner.run must return outputs on the CPU ({name})"
        assert tuple(g.shape) == tuple(w.shape), f"{what}: {name} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if not w.is_floating_point():
            assert torch.equal(g, w), f"{what}: {name} differs"
            continue
        assert g.is_floating_point(), f"{what}: {name} is {g.dtype}, the reference's {w.dtype}"
        assert torch.isfinite(g).all(), f"{what}: non-finite values in {name}"
        err = relative_error(g, w)
        assert err <= bound, f"{what}: {name}'s relative error ||got - want|| / ||want|| {err:.3g} exceeds {bound:g}"


def row_of(sig: StepSignature, tensors: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Row ``row`` of each of a step's tensors along its ``batch`` dimension (kept, of size 1)."""
    out = {}
    for name, value in tensors.items():
        axis = sig.spec(name).axis(BATCH)
        out[name] = value if axis is None else value.narrow(axis, row, 1)
    return out
