"""The backend kit's tests of token sequences: decoding over carried state, chunked
prefills, rows of different lengths, and slots (admission, release, any order).

:class:`SequenceTests` is a part of :class:`~plugstack.testing.BackendConformance`, which
generates these tests only for models whose step appends new positions (``new_axis``):
a stateless denoiser has no sequence to decode. Each test drives the runner as the
generation loop does (:class:`SlotDriver`: ``input_ids`` in, the last ``logits`` out).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from plugstack.backend import Runner
from plugstack.errors import GenerationError

from .checks import PROMPT, SHORT_PROMPT, assert_close, sequence_test
from .driver import SlotDriver

__all__ = ["SequenceTests"]


def _alone(runner: Runner, prompt: list[int], steps: int) -> tuple[list[Any], list[int]]:
    """Logits of ``prompt`` and of ``steps`` greedy steps after it, run alone; the tokens."""
    driver = SlotDriver(runner, 1)
    logits = [driver.feed([prompt])]
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[-1].argmax(-1)))
        logits.append(driver.feed([[tokens[-1]]]))
    return logits, tokens


class SequenceTests:
    """The sequence tests (see the module docs); :class:`BackendConformance` sets the bounds."""

    atol: ClassVar[float]
    min_top1_agreement: ClassVar[float]
    decode_steps: ClassVar[int]
    slot_atol: ClassVar[float | None]

    @property
    def _slot_atol(self) -> float:
        return self.atol if self.slot_atol is None else self.slot_atol

    @staticmethod
    def _need(capabilities: set[str], capability: str) -> None:
        if capability not in capabilities:
            pytest.skip(f"backend does not declare the capability {capability!r}")

    # -- one sequence ------------------------------------------------------------------

    @sequence_test
    def test_decode_with_state_matches_reference(self, runner: Runner, reference: Runner) -> None:
        ours, ref = SlotDriver(runner), SlotDriver(reference)
        got, want = ours.feed([PROMPT]), ref.feed([PROMPT])
        agree = 0
        for step in range(self.decode_steps):
            assert_close(got, want, self.atol, f"logits at decode step {step}")
            agree += int(got.argmax(-1).item() == want.argmax(-1).item())
            # Both follow the reference's greedy path, so one slip does not derail the rest.
            token = want.argmax(-1)
            got, want = ours.feed(token), ref.feed(token)
        assert ours.length() == len(PROMPT) + self.decode_steps, "state_length after prefill + decode steps"
        assert agree >= self.min_top1_agreement * self.decode_steps, (
            f"greedy token equal to the reference at {agree}/{self.decode_steps} steps")

    @sequence_test
    def test_prefill_in_two_chunks_equals_one(self, runner: Runner) -> None:
        driver = SlotDriver(runner, 2)  # slot 0 whole, slot 1 in two chunks
        want = driver.feed([PROMPT], [0])
        driver.feed([PROMPT[:6]], [1])
        got = driver.feed([PROMPT[6:]], [1])
        assert driver.length(1) == len(PROMPT)
        assert_close(got, want, self.atol, "logits after a prefill in two chunks")
        token = [[int(want.argmax(-1))]]
        assert_close(driver.feed(token, [1]), driver.feed(token, [0]), self.atol, "decode after a chunked prefill")

    # -- several sequences -------------------------------------------------------------

    @sequence_test
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
                assert_close(b, a, self._slot_atol, f"row {row} of a batch of 2, step {step}")

    @sequence_test
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
                assert_close(b[row : row + 1], a, self._slot_atol, what)

    @sequence_test
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
                assert_close(g, w, self._slot_atol, f"the {name} sequence at step {step}")
            greedy = [int(g.argmax(-1)) for g in got[:-1]]
            assert greedy == tokens, f"the {name} sequence's greedy tokens differ from it alone"

    @sequence_test
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
        assert_close(reused, SlotDriver(runner).feed([SHORT_PROMPT[:2]]), self._slot_atol,
                      "a short prompt in a released slot")
        assert_close(driver.feed([[8]], [1]), _after(runner, SHORT_PROMPT, [4, 8]), self._slot_atol,
                      "the slot that kept running")

    @sequence_test
    def test_a_step_of_some_slots_leaves_the_others_untouched(self, runner: Runner,
                                                              capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        driver = SlotDriver(runner, 3)
        for slot, p in enumerate((PROMPT[:5], SHORT_PROMPT, PROMPT[5:])):
            driver.feed([p], [slot])
        for t in (1, 2, 3):
            driver.feed([[t], [t]], [0, 2])
        assert [driver.length(s) for s in range(3)] == [8, 4, 8]
        assert_close(driver.feed([[9]], [1]), _after(runner, SHORT_PROMPT, [9]), self._slot_atol,
                      "a slot after steps of the other slots")

    @sequence_test
    def test_rows_may_name_their_slots_in_any_order(self, runner: Runner, capabilities: set[str]) -> None:
        self._need(capabilities, "batch")
        driver = SlotDriver(runner, 2)
        for slot, prompt in enumerate((PROMPT[:6], SHORT_PROMPT)):
            driver.feed([prompt], [slot])
        out = driver.feed([[4], [3]], [1, 0])  # row 0 goes to slot 1, row 1 to slot 0
        assert_close(out[0:1], _after(runner, SHORT_PROMPT, [4]), self._slot_atol, "row 0, stepping slot 1")
        assert_close(out[1:2], _after(runner, PROMPT[:6], [3]), self._slot_atol, "row 1, stepping slot 0")
        assert_close(driver.feed([[5], [6]]), _cat(_after(runner, PROMPT[:6], [3, 5]),
                                                         _after(runner, SHORT_PROMPT, [4, 6])),
                      self._slot_atol, "the step after, in slot order")

    @sequence_test
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

    @sequence_test
    def test_new_state_and_state_length(self, runner: Runner) -> None:
        driver = SlotDriver(runner, 2)
        assert driver.length(0) == driver.length(1) == 0, "new_state must be empty"
        logits = driver.feed([PROMPT[:5], PROMPT[5:]])
        assert tuple(logits.shape[:1]) == (2,) and logits.dim() == 2, "logits are [rows, vocab]"
        assert driver.length(0) == driver.length(1) == 5
        driver.feed([[1], [2]])
        assert driver.length(1) == 6
        assert runner.state_length(runner.new_state(3), 2) == 0


def _ids(rows: list[list[int]]) -> Any:
    import torch

    return torch.tensor(rows, dtype=torch.int64)


def _positions(runner: Runner, rows: list[list[int]]) -> dict[str, Any]:
    name = runner.signature.positions
    return {name: _ids(rows)} if name else {}


def _cat(*parts: Any) -> Any:
    import torch

    return torch.cat(parts)


def _after(runner: Runner, prompt: list[int], tokens: list[int]) -> Any:
    """The logits after ``prompt`` then ``tokens`` one by one, run alone."""
    driver = SlotDriver(runner)
    out = driver.feed([prompt])
    for t in tokens:
        out = driver.feed([[t]])
    return out
