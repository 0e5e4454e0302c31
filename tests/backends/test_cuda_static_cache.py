"""The cuda backend's StaticCacheRunner, run on the CPU against the eager runner: the model's
in-place step (the Llama plugin offers one) and the generic copy-in path."""

from __future__ import annotations

import pytest

from plugstack import GenerationError
from plugstack.testing import SlotDriver, tiny_decoder_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def runners(graphs: bool, max_len: int = 32, inplace: bool = True):
    from plugstack.backends.cuda.static_cache import StaticCacheRunner
    from plugstack.backends.eager import EagerRunner
    from plugstack.plugins.llama.model import inplace_kv_step

    a, b = tiny_decoder_model(), tiny_decoder_model()
    step = inplace_kv_step(b) if inplace else None
    static = StaticCacheRunner(b.module, b.signature, max_len=max_len, graphs=graphs, inplace=step)
    return EagerRunner(a.module, a.signature), static


@pytest.mark.parametrize("inplace", [True, False], ids=["in-place", "generic"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager-step", "graph-step"])
def test_equals_eager_over_two_slots_and_writes_in_place(graphs, inplace):
    eager, static = runners(graphs, inplace=inplace)
    want_driver, got_driver = SlotDriver(eager, 2), SlotDriver(static, 2)
    buffer = got_driver.state.buffers[0]
    # [slots, kv_heads, max_len + 1 (a parking position), head_dim], allocated once
    assert tuple(buffer.shape) == (2, 2, 33, 16)
    for slot, prompt in enumerate(([5, 17, 42, 99, 3, 64, 23], [31, 8, 120])):
        got, want = got_driver.feed([prompt], [slot]), want_driver.feed([prompt], [slot])
        assert (got - want).abs().max() < 1e-5, f"prefill of slot {slot}"
    for step in range(8):
        tokens = want.argmax(-1) if step else [[1], [2]]
        want, got = want_driver.feed(tokens), got_driver.feed(tokens)
        assert (got - want).abs().max() < 1e-5, f"step {step}"
    assert [got_driver.length(s) for s in (0, 1)] == [want_driver.length(s) for s in (0, 1)] == [15, 11]
    assert got_driver.state.buffers[0].data_ptr() == buffer.data_ptr()  # written in place


def test_overflowing_the_cache_is_a_clear_error():
    _, static = runners(graphs=False, max_len=8)
    driver = SlotDriver(static, 1)
    driver.feed([[1, 2, 3, 4, 5, 6]])
    driver.feed([[7]])
    driver.feed([[8]])
    with pytest.raises(GenerationError, match=r"slot 0 holds 8 positions; 1 more exceed its capacity of 8"):
        driver.feed([[9]])


def test_the_mask_is_the_runners_to_fill():
    import torch

    _, static = runners(graphs=False, inplace=False)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(GenerationError, match="'attention_mask' is filled in by the runner"):
        static.run({"input_ids": ids, "position_ids": ids, "attention_mask": torch.ones(1, 3, dtype=torch.long)})


def test_with_graphs_a_replaced_state_is_refused():
    _, static = runners(graphs=True)
    first = SlotDriver(static, 1)
    first.feed([[1, 2, 3]])
    second = SlotDriver(static, 1)  # takes over the buffers of 1-slot states
    second.feed([[4, 5]])
    with pytest.raises(GenerationError, match="replaced by a later new_state"):
        first.feed([[6]])
    SlotDriver(static, 2).feed([[1], [2]])  # other sizes have their own buffers
    second.feed([[6]])


def test_close_twice():
    _, static = runners(graphs=True)
    SlotDriver(static, 1).feed([[1, 2]])
    static.close()
    static.close()
