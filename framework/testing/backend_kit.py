"""Conformance tests every backend inherits: subclass, point at your backend, run pytest.

In the style of fsspec's abstract tests: the test bodies live here, a backend author's
test module subclasses :class:`BackendConformance` and overrides fixtures::

    # tests/test_mychip_conformance.py
    import pytest
    from plugstack.testing import BackendConformance
    from mychip_plugstack.backend import MyChipBackend, MyChipConfig

    class TestMyChip(BackendConformance):
        atol = 1e-3                                   # logits vs eager fp32 torch

        @pytest.fixture
        def backend(self):
            return MyChipBackend(MyChipConfig())

        @pytest.fixture
        def make_backend(self):                       # for dtype and bad-option tests
            return lambda **overrides: MyChipBackend(MyChipConfig(**overrides))

        @pytest.fixture
        def unsupported_options(self):
            return [{"dtype": "fp8"}]                 # each must raise UnsupportedOptionError

The kit takes the model under test: each test runs once per kit model it applies to, out
of ``kit_models`` (by default all of :data:`plugstack.testing.KIT_MODELS`): a tiny Llama
(growing KV cache, mask, positions, its own ONNX graph builder), a tiny recurrent model
(fixed-size state, none of those) and a tiny denoiser (a diffusion model's step: no state,
float image inputs), each compared with the same model run eagerly in fp32 on the CPU.
Set ``kit_models = ("tiny-llama",)`` to choose, or bring your own model as a factory,
``kit_models = (tiny_digits,)`` with ``def tiny_digits(seed=0) -> Model`` (equal weights
for equal seeds: one copy goes to the backend, one to the reference). Overriding the
``model`` and ``reference`` fixtures works too; a test that cannot apply to that model
then skips, saying so.

What is checked, for every model: one step against the reference (the prompt's logits; a
stateless model's outputs on a seeded example); reduced precision; unsupported options;
that ``prepare`` leaves the caller's model untouched; ``close``. For models whose step
appends positions (``new_axis``: decoders), the sequence tests of
:mod:`plugstack.testing.sequence_kit`: decoding over 8 steps, chunked prefills, rows of
different lengths, slots (admission mid-decode, release and reuse, steps of some slots,
any order), state lengths. For stateless models: a batch of rows equals each row alone,
and a step carries nothing to the next. A test that cannot apply to a model is not
generated for it (decided from the kit model's signature when collecting), not skipped.

Skips are part of the contract, not a way to hide failures: a test that needs a
capability the backend does not declare (``"batch"``, ``"dtype:bf16"``...) is skipped
with a reason naming it, and every runner test is skipped with the probe's reason when
the backend is unavailable on this machine (a CUDA backend on a CPU-only CI runner).

Tolerances are class attributes: ``atol`` (default 1e-4) bounds the max absolute logit
difference in the backend's default configuration; ``rtol`` the relative error
``||got - want|| / ||want||`` of a stateless step's outputs, which have the model's own
scale rather than logits' (default: ``atol``'s number); ``reduced_precision_atol`` per
dtype, for both, in the ``dtype:<name>`` tests. A quantised backend sets a looser ``atol``
and ``rtol``; ``min_top1_agreement`` bounds how often its greedy token may differ from the
reference's over the decode steps. Slot and batch tests compare the backend with itself
(rows in company against the same rows alone), within ``slot_atol`` (default: ``atol``
for logits, ``rtol`` for a stateless step) and with identical greedy tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, ClassVar

import pytest

from plugstack.backend import Availability, Backend, DeviceInfo, Runner
from plugstack.errors import UnsupportedOptionError
from plugstack.model import Model
from plugstack.signature import StepSignature

from .checks import ITEM_ROWS, applies_to, assert_close, assert_outputs_close, item_feeds, item_test, one_step, row_of
from .driver import SlotDriver
from .sequence_kit import SequenceTests
from .tiny_models import KIT_MODELS

__all__ = ["BackendConformance", "SlotDriver"]


class BackendConformance(SequenceTests):
    """Inherit from this in a ``Test*`` class and override the ``backend`` fixture."""

    #: Max absolute logit difference from the eager fp32 reference (default configuration).
    atol: ClassVar[float] = 1e-4
    #: Max relative error of a stateless step's outputs from the reference (``None``: ``atol``).
    rtol: ClassVar[float | None] = None
    #: Same bounds for ``make_backend(dtype=...)`` runs, per reduced-precision dtype.
    reduced_precision_atol: ClassVar[dict[str, float]] = {"bf16": 3e-2, "fp16": 1e-2}
    #: Fraction of decode steps whose greedy token must equal the reference's.
    min_top1_agreement: ClassVar[float] = 1.0
    #: One-token steps after the prefill in the KV-cache test.
    decode_steps: ClassVar[int] = 8
    #: Max difference of rows run among others from the same rows alone (``None``: ``atol``,
    #: or ``rtol`` for a stateless step; reduced precision rounds differently in other batch shapes).
    slot_atol: ClassVar[float | None] = None
    #: The models the tests run on, each test on those it applies to: names of
    #: :data:`KIT_MODELS`, or your own factories ``make(seed=0) -> Model`` (named functions;
    #: each call a fresh module, the same weights for the same seed).
    kit_models: ClassVar[tuple[str | Callable[..., Model], ...]] = tuple(sorted(KIT_MODELS))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that narrows ``kit_models`` loses the tests none of them applies to
        (pytest collects no test set to ``None``), rather than skipping them."""
        super().__init_subclass__(**kwargs)
        if "kit_models" not in vars(cls):
            return
        factories = _factories(cls)  # checks the names early, at import
        for name in [n for n in dir(cls) if n.startswith("test_")]:
            # The test itself, also where a base class with other kit_models has dropped it.
            test = next((vars(k)[name] for k in cls.__mro__ if vars(k).get(name) is not None), None)
            if hasattr(test, "kit_applies"):
                fits = any(applies_to(test, signature_of(make)) for make in factories.values())
                setattr(cls, name, test if fits else None)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize ``kit_model`` with those of ``kit_models`` this test applies to."""
        if "kit_model" not in metafunc.fixturenames:
            return  # a test without a model, or a subclass that brings its own
        if hasattr(type(self), "kit_model"):
            raise TypeError(f"{type(self).__name__} overrides the `kit_model` fixture, which the kit no longer "
                            f"reads: set the class attribute kit_models = (...) to choose from {sorted(KIT_MODELS)}")
        factories = _factories(type(self))
        metafunc.parametrize("kit_model", [n for n, make in factories.items()
                                           if applies_to(metafunc.function, signature_of(make))])

    # -- fixtures a backend author overrides ------------------------------------------

    @pytest.fixture
    def backend(self) -> Backend:
        """The backend under test, in the configuration to check. Override this."""
        pytest.fail("override the `backend` fixture in your BackendConformance subclass")

    @pytest.fixture
    def capabilities(self, backend: Backend) -> set[str]:
        """What the backend claims; tests needing a capability not listed are skipped."""
        return set(backend.capabilities)

    @pytest.fixture
    def make_backend(self) -> Callable[..., Backend] | None:
        """``make_backend(**config_overrides) -> Backend``, or ``None`` if not configurable."""
        return None

    @pytest.fixture
    def unsupported_options(self) -> list[dict[str, Any]]:
        """Config overrides that must raise UnsupportedOptionError (at construction or prepare)."""
        return []

    # -- fixtures the kit provides -----------------------------------------------------

    @pytest.fixture
    def model(self, kit_model: str) -> Model:
        return _factories(type(self))[kit_model](seed=0)

    @pytest.fixture
    def reference(self, kit_model: str) -> Runner:
        """Eager fp32 PyTorch on the CPU, on its own copy of the same weights."""
        from plugstack.backends.eager import EagerRunner

        ref = _factories(type(self))[kit_model](seed=0)
        return EagerRunner(ref.module, ref.signature, device="cpu", dtype="fp32")

    @pytest.fixture
    def available(self, backend: Backend) -> Availability:
        availability = backend.probe()
        if not availability.available:
            pytest.skip(f"backend unavailable on this machine: {availability.reason}")
        return availability

    @pytest.fixture
    def runner(self, backend: Backend, model: Model, available: Availability) -> Iterator[Runner]:
        runner = backend.prepare(model)
        yield runner
        runner.close()

    @pytest.fixture(autouse=True)
    def _applies_to_your_model(self, request: pytest.FixtureRequest) -> None:
        """With a model of your own (no ``kit_model``), a test that cannot apply to it skips."""
        if getattr(request.function, "kit_applies", None) is None or "kit_model" in request.fixturenames:
            return
        sig = request.getfixturevalue("model").signature
        if not applies_to(request.function, sig):
            pytest.skip(f"does not apply to a model whose step has new_axis={sig.new_axis!r}")

    @property
    def _slot_rtol(self) -> float:
        return next(b for b in (self.slot_atol, self.rtol, self.atol) if b is not None)

    @staticmethod
    def _assert_step_close(sig: StepSignature, got: dict, want: dict, atol: float, rtol: float, what: str) -> None:
        """:func:`one_step` outputs close: a sequence model's logits within ``atol``, a
        stateless model's outputs within ``rtol`` of relative error."""
        if sig.new_axis is None:
            assert_outputs_close(got, want, rtol, what)
            return
        logits = got["logits"]
        assert logits.device.type == "cpu", "Runner.run must return outputs on the CPU"
        assert logits.dtype.is_floating_point
        assert_close(logits, want["logits"], atol, f"{what} logits")

    # -- probe and capabilities --------------------------------------------------------

    def test_probe_reports_availability(self, backend: Backend) -> None:
        availability = backend.probe()
        assert isinstance(availability, Availability)
        if availability.available:
            assert isinstance(availability.device, DeviceInfo), "an available backend names its device"
            assert availability.device.name, "DeviceInfo.name is empty"
        else:
            assert availability.reason.strip(), "an unavailable backend must say why"

    def test_capabilities_are_declared(self, capabilities: set[str]) -> None:
        assert all(isinstance(c, str) for c in capabilities)
        assert "inference" in capabilities or "training" in capabilities, capabilities

    # -- every model -------------------------------------------------------------------

    def test_one_step_matches_reference(self, runner: Runner, reference: Runner, model: Model) -> None:
        got, want = one_step(runner, model), one_step(reference, model)
        rtol = self.atol if self.rtol is None else self.rtol
        self._assert_step_close(runner.signature, got, want, self.atol, rtol, "the first step's")

    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    def test_reduced_precision_close_to_fp32_or_refused(
        self, dtype: str, capabilities: set[str], make_backend: Any, backend: Backend, model: Model,
        reference: Runner,
    ) -> None:
        """A claimed dtype (``dtype:<name>`` capability) runs close to fp32; one the backend
        does not claim is refused with UnsupportedOptionError instead of running wrongly."""
        if make_backend is None:
            pytest.skip("needs the `make_backend` fixture to configure dtype")
        if f"dtype:{dtype}" not in capabilities:
            with pytest.raises(UnsupportedOptionError):
                make_backend(dtype=dtype).prepare(copy.deepcopy(model))
            return
        availability = backend.probe()
        if not availability.available:
            pytest.skip(f"backend unavailable on this machine: {availability.reason}")
        runner = make_backend(dtype=dtype).prepare(model)
        try:
            assert runner.dtype == dtype, f"runner reports dtype {runner.dtype!r}, asked for {dtype!r}"
            got, want = one_step(runner, model), one_step(reference, model)
            bound = self.reduced_precision_atol[dtype]
            self._assert_step_close(runner.signature, got, want, bound, bound, f"the {dtype} first step's")
            if runner.signature.new_axis is not None:
                assert got["logits"].argmax(-1).item() == want["logits"].argmax(-1).item(), (
                    f"{dtype} changes the greedy token")
        finally:
            runner.close()

    def test_unsupported_options_raise(self, make_backend: Any, unsupported_options: list, model: Model) -> None:
        if not unsupported_options:
            pytest.skip("no `unsupported_options` declared")
        if make_backend is None:
            pytest.fail("`unsupported_options` needs the `make_backend` fixture")
        for overrides in unsupported_options:
            with pytest.raises(UnsupportedOptionError) as info:
                make_backend(**overrides).prepare(copy.deepcopy(model))
            assert str(info.value).strip(), f"empty message for {overrides}"

    def test_prepare_leaves_the_model_untouched(self, backend: Backend, model: Model, available: Availability) -> None:
        import torch

        before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        runner = backend.prepare(model)
        one_step(runner, model)
        runner.close()
        after = model.module.state_dict()
        assert after.keys() == before.keys()
        for name, value in before.items():
            assert after[name].dtype == value.dtype and after[name].device == value.device, name
            assert torch.equal(after[name], value), f"prepare/run changed the caller's weight {name}"

    def test_close_is_idempotent(self, backend: Backend, model: Model, available: Availability) -> None:
        runner = backend.prepare(model)
        runner.close()
        runner.close()

    # -- stateless models --------------------------------------------------------------

    @item_test
    def test_rows_of_a_batch_match_rows_alone(self, runner: Runner, model: Model, capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        sig, feeds = runner.signature, item_feeds(model)
        together = runner.run(feeds).outputs
        for row in range(ITEM_ROWS):
            alone = runner.run(row_of(sig, feeds, row)).outputs
            assert_outputs_close(row_of(sig, together, row), alone, self._slot_rtol,
                                 f"row {row} of a batch of {ITEM_ROWS} against it alone")

    @item_test
    def test_a_step_carries_nothing_to_the_next(self, runner: Runner, model: Model) -> None:
        """A stateless step depends on its inputs only: after another step in the same
        state's slots it equals itself on a fresh state; ``state_length`` counts steps."""
        state = runner.new_state(ITEM_ROWS)
        runner.run(item_feeds(model, seed=1), state)
        later = runner.run(item_feeds(model), state).outputs
        assert_outputs_close(later, runner.run(item_feeds(model)).outputs, self._slot_rtol,
                             "a step after another, against it on a fresh state")
        assert [runner.state_length(state, s) for s in range(ITEM_ROWS)] == [2] * ITEM_ROWS, (
            "state_length of a step without new_axis counts the steps taken")


def _factories(cls: type) -> dict[str, Callable[..., Model]]:
    """``cls.kit_models`` by test id: a kit model's name, or a factory's ``__name__``."""
    out: dict[str, Callable[..., Model]] = {}
    for entry in cls.kit_models:
        if isinstance(entry, str) and entry not in KIT_MODELS:
            raise ValueError(f"{cls.__name__}.kit_models names {entry!r}; the kit models are {sorted(KIT_MODELS)}, "
                             f"or give a factory make(seed=0) -> Model")
        name = entry if isinstance(entry, str) else getattr(entry, "__name__", "")
        if not name or name in out or name == "<lambda>":
            raise ValueError(f"{cls.__name__}.kit_models: give each factory a distinct name (a def), not {entry!r}")
        out[name] = KIT_MODELS[entry] if isinstance(entry, str) else entry
    return out


@cache
def signature_of(make: Callable[..., Model]) -> StepSignature:
    """The step signature of the models ``make`` builds (built once: read while collecting)."""
    return make(seed=0).signature
