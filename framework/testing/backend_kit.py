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

The kit takes the model under test: every test runs once per name of the ``kit_model``
fixture, by default both of :data:`plugstack.testing.KIT_MODELS` — a tiny Llama (growing
KV cache, mask, positions, its own ONNX graph builder) and a tiny recurrent model
(fixed-size state, none of those) — each compared with the same model run eagerly in fp32
on the CPU. Override ``kit_model`` (``@pytest.fixture(params=[...])``) to choose, or
``model`` and ``reference`` to bring your own model.

What is checked: prefill logits; decoding over 8 steps; a prefill split in two chunks;
rows of different lengths stepped together against each row alone (also with several new
tokens on each row's cache); slots: a sequence admitted mid-decode and the ones already
running each produce exactly what they produce alone, a released slot is reused without
seeing its old positions, a step of some slots leaves the others untouched; state lengths;
reduced precision; unsupported options; ``close``.

Skips are part of the contract, not a way to hide failures: a test that needs a
capability the backend does not declare (``"batch"``, ``"dtype:bf16"``...) is skipped
with a reason naming it, and every runner test is skipped with the probe's reason when
the backend is unavailable on this machine (a CUDA backend on a CPU-only CI runner).

Tolerances are class attributes: ``atol`` (default 1e-4) for the backend's default
configuration; ``reduced_precision_atol`` per dtype for the ``dtype:<name>`` tests. A
quantised backend sets a looser ``atol``; ``min_top1_agreement`` bounds how often its
greedy token may differ from the reference's over the decode steps. Slot tests compare
the backend with itself (a sequence in company against the same sequence alone), within
``slot_atol`` (default: ``atol``) and with identical greedy tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from plugstack.backend import Availability, Backend, DeviceInfo, Runner
from plugstack.errors import GenerationError, UnsupportedOptionError
from plugstack.model import Model

from .driver import SlotDriver
from .tiny_models import KIT_MODELS

__all__ = ["BackendConformance", "SlotDriver"]

#: Prompts used throughout: token ids below 128 (in every kit model's vocabulary).
PROMPT = [5, 17, 42, 99, 3, 64, 23, 80, 11, 7]
SHORT_PROMPT = [31, 8, 120, 56]


def _assert_close(got: Any, want: Any, atol: float, what: str) -> None:
    import torch

    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite logits"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= atol, f"{what}: max |logit difference| {diff:.3g} exceeds atol {atol:g}"


def _alone(runner: Runner, prompt: list[int], steps: int) -> tuple[list[Any], list[int]]:
    """Logits of ``prompt`` and of ``steps`` greedy steps after it, run alone; the tokens."""
    driver = SlotDriver(runner, 1)
    logits = [driver.feed([prompt])]
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[-1].argmax(-1)))
        logits.append(driver.feed([[tokens[-1]]]))
    return logits, tokens


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
    #: Max logit difference of a sequence run among others from the same sequence alone
    #: (``None``: ``atol``; reduced precision rounds differently in other batch shapes).
    slot_atol: ClassVar[float | None] = None

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

    @pytest.fixture(params=sorted(KIT_MODELS))
    def kit_model(self, request: pytest.FixtureRequest) -> str:
        """Which of :data:`KIT_MODELS` the tests run (all of them by default)."""
        return request.param

    # -- fixtures the kit provides -----------------------------------------------------

    @pytest.fixture
    def model(self, kit_model: str) -> Model:
        return KIT_MODELS[kit_model](seed=0)

    @pytest.fixture
    def reference(self, kit_model: str) -> Runner:
        """Eager fp32 PyTorch on the CPU, on its own copy of the same weights."""
        from plugstack.backends.eager import EagerRunner

        ref = KIT_MODELS[kit_model](seed=0)
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

    @property
    def _slot_atol(self) -> float:
        return self.atol if self.slot_atol is None else self.slot_atol

    @staticmethod
    def _need(capabilities: set[str], capability: str) -> None:
        if capability not in capabilities:
            pytest.skip(f"backend does not declare the capability {capability!r}")

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

    # -- one sequence ------------------------------------------------------------------

    def test_prefill_matches_reference(self, runner: Runner, reference: Runner) -> None:
        got = SlotDriver(runner).feed([PROMPT])
        want = SlotDriver(reference).feed([PROMPT])
        assert got.device.type == "cpu", "Runner.run must return outputs on the CPU"
        assert got.dtype.is_floating_point
        _assert_close(got, want, self.atol, "prefill logits")

    def test_decode_with_state_matches_reference(self, runner: Runner, reference: Runner) -> None:
        ours, ref = SlotDriver(runner), SlotDriver(reference)
        got, want = ours.feed([PROMPT]), ref.feed([PROMPT])
        agree = 0
        for step in range(self.decode_steps):
            _assert_close(got, want, self.atol, f"logits at decode step {step}")
            agree += int(got.argmax(-1).item() == want.argmax(-1).item())
            # Both follow the reference's greedy path, so one slip does not derail the rest.
            token = want.argmax(-1)
            got, want = ours.feed(token), ref.feed(token)
        assert ours.length() == len(PROMPT) + self.decode_steps, "state_length after prefill + decode steps"
        assert agree >= self.min_top1_agreement * self.decode_steps, (
            f"greedy token equal to the reference at {agree}/{self.decode_steps} steps")

    def test_prefill_in_two_chunks_equals_one(self, runner: Runner) -> None:
        driver = SlotDriver(runner, 2)  # slot 0 whole, slot 1 in two chunks
        want = driver.feed([PROMPT], [0])
        driver.feed([PROMPT[:6]], [1])
        got = driver.feed([PROMPT[6:]], [1])
        assert driver.length(1) == len(PROMPT)
        _assert_close(got, want, self.atol, "logits after a prefill in two chunks")
        token = [[int(want.argmax(-1))]]
        _assert_close(driver.feed(token, [1]), driver.feed(token, [0]), self.atol, "decode after a chunked prefill")

    # -- several sequences -------------------------------------------------------------

    def test_rows_of_different_lengths_match_rows_alone(self, runner: Runner, capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        prompts, follow = [PROMPT[:7], SHORT_PROMPT], [[9, 77, 2], [101, 4, 66]]
        batch = SlotDriver(runner, 2)
        logits = [[batch.feed([p], [row])] for row, p in enumerate(prompts)]
        for step in range(3):
            out = batch.feed([[f[step]] for f in follow])
            for row in range(2):
                logits[row].append(out[row : row + 1])
        for row, prompt in enumerate(prompts):
            alone = SlotDriver(runner)
            want = [alone.feed([prompt])] + [alone.feed([[t]]) for t in follow[row]]
            for step, (b, a) in enumerate(zip(logits[row], want, strict=True)):
                _assert_close(b, a, self._slot_atol, f"row {row} of a batch of 2, step {step}")

    def test_chunk_on_each_rows_state_matches_rows_alone(self, runner: Runner, capabilities: set[str]) -> None:
        """Several new tokens on each of several rows that already hold state (a chunked
        prefill while a batch runs): the logits, and the next step, equal each row alone."""
        self._need(capabilities, "batch")
        prompts, chunks = [PROMPT[:7], SHORT_PROMPT], [[9, 77, 2], [101, 4, 66]]
        batch = SlotDriver(runner, 2)
        for row, p in enumerate(prompts):
            batch.feed([p], [row])
        got = [batch.feed(chunks), batch.feed([[5], [6]])]
        assert [batch.length(0), batch.length(1)] == [7 + 3 + 1, 4 + 3 + 1], "state_length of each slot"
        for row, prompt in enumerate(prompts):
            alone = SlotDriver(runner)
            alone.feed([prompt])
            want = [alone.feed([chunks[row]]), alone.feed([[5 + row]])]
            for step, (b, a) in enumerate(zip(got, want, strict=True)):
                what = f"row {row} of 2, {'the 3-token chunk' if step == 0 else 'the step after it'}"
                _assert_close(b[row : row + 1], a, self._slot_atol, what)

    def test_admitted_mid_decode_each_sequence_matches_itself_alone(self, runner: Runner,
                                                                    capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        first, first_tokens = _alone(runner, PROMPT, 8)
        second, second_tokens = _alone(runner, SHORT_PROMPT, 4)
        driver = SlotDriver(runner, 2)
        got_first = [driver.feed([PROMPT], [0])]
        for t in first_tokens[:4]:
            got_first.append(driver.feed([[t]], [0]))
        got_second = [driver.feed([SHORT_PROMPT], [1])]  # admitted while slot 0 decodes
        for t0, t1 in zip(first_tokens[4:], second_tokens, strict=True):
            out = driver.feed([[t0], [t1]])
            got_first.append(out[0:1])
            got_second.append(out[1:2])
        for name, got, want, tokens in (("running", got_first, first, first_tokens),
                                        ("admitted", got_second, second, second_tokens)):
            for step, (g, w) in enumerate(zip(got, want, strict=True)):
                _assert_close(g, w, self._slot_atol, f"the {name} sequence at step {step}")
            greedy = [int(g.argmax(-1)) for g in got[:-1]]
            assert greedy == tokens, f"the {name} sequence's greedy tokens differ from it alone"

    def test_released_slot_is_reused_without_its_old_positions(self, runner: Runner,
                                                               capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        driver = SlotDriver(runner, 2)
        driver.feed([PROMPT], [0])
        driver.feed([SHORT_PROMPT], [1])
        driver.feed([[3], [4]])
        driver.release(0)
        assert driver.length(0) == 0 and driver.state.free_slot() == 0
        reused = driver.feed([SHORT_PROMPT[:2]], [0])
        _assert_close(reused, SlotDriver(runner).feed([SHORT_PROMPT[:2]]), self._slot_atol,
                      "a short prompt in a released slot")
        _assert_close(driver.feed([[8]], [1]), _after(runner, SHORT_PROMPT, [4, 8]), self._slot_atol,
                      "the slot that kept running")

    def test_a_step_of_some_slots_leaves_the_others_untouched(self, runner: Runner,
                                                              capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        driver = SlotDriver(runner, 3)
        for slot, p in enumerate((PROMPT[:5], SHORT_PROMPT, PROMPT[5:])):
            driver.feed([p], [slot])
        for t in (1, 2, 3):
            driver.feed([[t], [t]], [0, 2])
        assert [driver.length(s) for s in range(3)] == [8, 4, 8]
        _assert_close(driver.feed([[9]], [1]), _after(runner, SHORT_PROMPT, [9]), self._slot_atol,
                      "a slot after steps of the other slots")

    def test_rows_may_name_their_slots_in_any_order(self, runner: Runner, capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        driver = SlotDriver(runner, 2)
        for slot, prompt in enumerate((PROMPT[:6], SHORT_PROMPT)):
            driver.feed([prompt], [slot])
        out = driver.feed([[4], [3]], [1, 0])  # row 0 goes to slot 1, row 1 to slot 0
        _assert_close(out[0:1], _after(runner, SHORT_PROMPT, [4]), self._slot_atol, "row 0, stepping slot 1")
        _assert_close(out[1:2], _after(runner, PROMPT[:6], [3]), self._slot_atol, "row 1, stepping slot 0")
        _assert_close(driver.feed([[5], [6]]), torch_cat(_after(runner, PROMPT[:6], [3, 5]),
                                                         _after(runner, SHORT_PROMPT, [4, 6])),
                      self._slot_atol, "the step after, in slot order")

    def test_slot_errors_are_clear(self, runner: Runner) -> None:
        driver = SlotDriver(runner, 2)
        driver.feed([PROMPT[:3]], [0])
        with pytest.raises(GenerationError, match="slot 5 does not exist"):
            runner.state_length(driver.state, 5)
        with pytest.raises(GenerationError, match="must be arrays"):
            runner.run({"input_ids": [[1]], **_positions(runner, [[3]])}, driver.state, [0])
        with pytest.raises(GenerationError, match="already holds a sequence"):
            runner.admit(driver.state, 0, {"input_ids": _ids([[1]]), **_positions(runner, [[0]])})
        with pytest.raises(GenerationError, match="distinct slot numbers"):
            driver.feed([[1]], [5])
        with pytest.raises(GenerationError, match="2 slots"):
            driver.feed([[1], [2], [3]])

    def test_new_state_and_state_length(self, runner: Runner) -> None:
        driver = SlotDriver(runner, 2)
        assert driver.length(0) == driver.length(1) == 0, "new_state must be empty"
        logits = driver.feed([PROMPT[:5], PROMPT[5:]])
        assert tuple(logits.shape[:1]) == (2,) and logits.dim() == 2, "logits are [rows, vocab]"
        assert driver.length(0) == driver.length(1) == 5
        driver.feed([[1], [2]])
        assert driver.length(1) == 6
        assert runner.state_length(runner.new_state(3), 2) == 0

    # -- options -----------------------------------------------------------------------

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
            got = SlotDriver(runner).feed([PROMPT])
            assert got.dtype.is_floating_point
            want = SlotDriver(reference).feed([PROMPT])
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
        SlotDriver(runner).feed([PROMPT])
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


def _ids(rows: list[list[int]]) -> Any:
    import torch

    return torch.tensor(rows, dtype=torch.int64)


def _positions(runner: Runner, rows: list[list[int]]) -> dict[str, Any]:
    name = runner.signature.positions
    return {name: _ids(rows)} if name else {}


def torch_cat(*parts: Any) -> Any:
    import torch

    return torch.cat(parts)


def _after(runner: Runner, prompt: list[int], tokens: list[int]) -> Any:
    """The logits after ``prompt`` then ``tokens`` one by one, run alone."""
    driver = SlotDriver(runner)
    out = driver.feed([prompt])
    for t in tokens:
        out = driver.feed([[t]])
    return out
