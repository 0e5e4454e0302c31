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

Every test runs a tiny random Llama (:func:`tiny_decoder_model`) on the backend and
compares it with the eager fp32 PyTorch reference: prefill logits, KV-cache decoding over
8 steps, prefill split in two chunks, a left-padded batch against its rows run alone
(also when the batch gets several new tokens on top of its cache),
``new_state``/``state_length``, reduced precision, unsupported options, ``close``.

Skips are part of the contract, not a way to hide failures: a test that needs a
capability the backend does not declare (``"batch"``, ``"dtype:bf16"``...) is skipped
with a reason naming it, and every runner test is skipped with the probe's reason when
the backend is unavailable on this machine (a CUDA backend on a CPU-only CI runner).

Tolerances are class attributes: ``atol`` (default 1e-4) for the backend's default
configuration; ``reduced_precision_atol`` per dtype for the ``dtype:<name>`` tests. A
quantised backend sets a looser ``atol``; ``min_top1_agreement`` bounds how often its
greedy token may differ from the reference's over the decode steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from plugstack.backend import Availability, Backend, DeviceInfo, Runner
from plugstack.errors import UnsupportedOptionError
from plugstack.model import Model

from .tiny_models import tiny_decoder_model

__all__ = ["BackendConformance", "DecoderDriver"]

#: Prompts used throughout: token ids of the tiny model's vocabulary (128).
PROMPT = [5, 17, 42, 99, 3, 64, 23, 80, 11, 7]
SHORT_PROMPT = [31, 8, 120, 56]


class DecoderDriver:
    """Drives a Runner the way a generation loop does: left-padded prompts, then one token
    per row and step, tracking ``attention_mask`` and per-row ``position_ids``."""

    def __init__(self, runner: Runner, batch_size: int) -> None:
        import torch

        self.runner = runner
        self.state = runner.new_state(batch_size)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.int64)
        self.next_pos = torch.zeros(batch_size, dtype=torch.int64)

    @classmethod
    def left_padded(cls, prompts: list[list[int]], pad_id: int = 0) -> tuple[Any, Any]:
        """``(input_ids, real)`` with shorter prompts padded on the left; ``real`` is 1 on tokens."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
        real = torch.zeros(len(prompts), width, dtype=torch.int64)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            real[row, width - len(p) :] = 1
        return ids, real

    def feed(self, ids: Any, real: Any = None) -> Any:
        """Run ``ids`` (``[batch, new]``) as the next positions; returns the logits ``[batch, vocab]``."""
        import torch

        ids = torch.as_tensor(ids, dtype=torch.int64)
        if ids.dim() == 1:
            ids = ids[:, None]
        real = torch.ones_like(ids) if real is None else real
        positions = self.next_pos[:, None] + (real.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, real], dim=1)
        out = self.runner.run({"input_ids": ids, "position_ids": positions, "attention_mask": self.mask}, self.state)
        self.state = out.state
        self.next_pos = self.next_pos + real.sum(1)
        return out.outputs["logits"]

    @property
    def length(self) -> int:
        return self.runner.state_length(self.state)


def _assert_close(got: Any, want: Any, atol: float, what: str) -> None:
    import torch

    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert torch.isfinite(got).all(), f"{what}: non-finite logits"
    assert diff <= atol, f"{what}: max |logit difference| {diff:.3g} exceeds atol {atol:g}"


class BackendConformance:
    """Inherit from this in a ``Test*`` class and override the ``backend`` fixture."""

    #: Max absolute logit difference from the eager fp32 reference (default configuration).
    atol: ClassVar[float] = 1e-4
    #: Same bound for ``make_backend(dtype=...)`` runs, per reduced-precision dtype.
    reduced_precision_atol: ClassVar[dict[str, float]] = {"bf16": 3e-2, "fp16": 1e-2}
    #: Fraction of decode steps whose greedy token must equal the reference's.
    min_top1_agreement: ClassVar[float] = 1.0
    #: One-token steps after the prefill in the KV-cache test.
    decode_steps: ClassVar[int] = 8

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
    def model(self) -> Model:
        return tiny_decoder_model(seed=0)

    @pytest.fixture
    def reference(self) -> Runner:
        """Eager fp32 PyTorch on the CPU, on its own copy of the same weights."""
        from plugstack.backends.eager import EagerRunner

        ref = tiny_decoder_model(seed=0)
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

    @staticmethod
    def _need(capabilities: set[str], capability: str) -> None:
        if capability not in capabilities:
            pytest.skip(f"backend does not declare the capability {capability!r}")

    # -- the tests ---------------------------------------------------------------------

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

    def test_prefill_matches_reference(self, runner: Runner, reference: Runner) -> None:
        got = DecoderDriver(runner, 1).feed([PROMPT])
        want = DecoderDriver(reference, 1).feed([PROMPT])
        assert got.device.type == "cpu", "Runner.run must return outputs on the CPU"
        assert got.dtype.is_floating_point
        _assert_close(got, want, self.atol, "prefill logits")

    def test_decode_with_cache_matches_reference(self, runner: Runner, reference: Runner) -> None:
        ours, ref = DecoderDriver(runner, 1), DecoderDriver(reference, 1)
        got, want = ours.feed([PROMPT]), ref.feed([PROMPT])
        agree = 0
        for step in range(self.decode_steps):
            _assert_close(got, want, self.atol, f"logits at decode step {step}")
            agree += int(got.argmax(-1).item() == want.argmax(-1).item())
            # Both follow the reference's greedy path, so one slip does not derail the rest.
            token = want.argmax(-1)
            got, want = ours.feed(token), ref.feed(token)
        assert ours.length == len(PROMPT) + self.decode_steps, "state_length after prefill + decode steps"
        assert agree >= self.min_top1_agreement * self.decode_steps, (
            f"greedy token equal to the reference at {agree}/{self.decode_steps} steps"
        )

    def test_prefill_in_two_chunks_equals_one(self, runner: Runner, backend: Backend, model: Model) -> None:
        whole = DecoderDriver(runner, 1)
        want = whole.feed([PROMPT])
        chunked = DecoderDriver(backend.prepare(copy.deepcopy(model)), 1)
        try:
            chunked.feed([PROMPT[:6]])
            got = chunked.feed([PROMPT[6:]])
            assert chunked.length == len(PROMPT)
            _assert_close(got, want, self.atol, "logits after a prefill in two chunks")
            token = want.argmax(-1)
            _assert_close(chunked.feed(token), whole.feed(token), self.atol, "decode after a chunked prefill")
        finally:
            chunked.runner.close()

    def test_left_padded_batch_matches_rows_alone(self, runner: Runner, capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        prompts = [PROMPT[:7], SHORT_PROMPT]
        follow = [[9, 77, 2], [101, 4, 66]]  # the tokens each row decodes next
        batch = DecoderDriver(runner, 2)
        batch_logits = [batch.feed(*DecoderDriver.left_padded(prompts))]
        for step in range(len(follow[0])):
            batch_logits.append(batch.feed([[row[step]] for row in follow]))
        for row, prompt in enumerate(prompts):
            alone = DecoderDriver(runner, 1)
            alone_logits = [alone.feed([prompt])] + [alone.feed([[t]]) for t in follow[row]]
            for step, (b, a) in enumerate(zip(batch_logits, alone_logits, strict=True)):
                _assert_close(b[row : row + 1], a, self.atol, f"row {row} (left-padded in a batch of 2), step {step}")

    def test_batch_chunk_on_a_cache_matches_rows_alone(self, runner: Runner, capabilities: set[str]) -> None:
        """Several new tokens per row on top of a cache, batch > 1 (chunked prefill while a
        batch runs): the logits, and the next step from the cache, equal each row alone."""
        self._need(capabilities, "batch")
        prompts = [PROMPT[:7], SHORT_PROMPT]
        chunks = [[9, 77, 2], [101, 4, 66]]
        batch = DecoderDriver(runner, 2)
        batch.feed(*DecoderDriver.left_padded(prompts))
        batch_logits = [batch.feed(chunks), batch.feed([[5], [6]])]
        assert batch.length == 7 + 3 + 1, "state_length after prefill, a 3-token chunk and a step"
        for row, prompt in enumerate(prompts):
            alone = DecoderDriver(runner, 1)
            alone.feed([prompt])
            alone_logits = [alone.feed([chunks[row]]), alone.feed([[5 + row]])]
            for step, (b, a) in enumerate(zip(batch_logits, alone_logits, strict=True)):
                what = f"row {row} of a batch of 2, {'the 3-token chunk' if step == 0 else 'the step after it'}"
                _assert_close(b[row : row + 1], a, self.atol, what)

    def test_new_state_and_state_length(self, runner: Runner) -> None:
        driver = DecoderDriver(runner, 2)
        assert driver.length == 0, "new_state must be empty"
        logits = driver.feed([PROMPT[:5], PROMPT[5:]])
        assert tuple(logits.shape) == (2, 128), "logits are [batch, vocab] for the last position"
        assert driver.length == 5
        driver.feed([[1], [2]])
        assert driver.length == 6
        assert runner.state_length(runner.new_state(3)) == 0

    @pytest.mark.parametrize("dtype", ["bf16", "fp16"])
    def test_reduced_precision_close_to_fp32_or_refused(
        self,
        dtype: str,
        capabilities: set[str],
        make_backend: Any,
        backend: Backend,
        model: Model,
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
            got = DecoderDriver(runner, 1).feed([PROMPT])
            assert got.dtype.is_floating_point
            want = DecoderDriver(reference, 1).feed([PROMPT])
            _assert_close(got, want, self.reduced_precision_atol[dtype], f"{dtype} prefill logits")
            assert got.argmax(-1).item() == want.argmax(-1).item(), f"{dtype} changes the greedy token"
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
        DecoderDriver(runner, 1).feed([PROMPT])
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
