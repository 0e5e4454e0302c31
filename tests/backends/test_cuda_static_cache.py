"""The cuda backend's StaticCacheRunner, run on the CPU against the eager runner."""

from __future__ import annotations

import pytest

from plugstack import GenerationError
from plugstack.testing import DecoderDriver, tiny_decoder_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def runners(graphs: bool, max_len: int = 32):
    from plugstack.backends.cuda.static_cache import StaticCacheRunner
    from plugstack.backends.eager import EagerRunner

    a, b = tiny_decoder_model(), tiny_decoder_model()
    return EagerRunner(a.module, a.signature), StaticCacheRunner(b.module, b.signature, max_len=max_len, graphs=graphs)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager-step", "graph-step"])
def test_equals_eager_over_left_padded_prefill_and_decode(graphs):
    eager, static = runners(graphs)
    ids, real = DecoderDriver.left_padded([[5, 17, 42, 99, 3, 64, 23], [31, 8, 120]])
    want_driver, got_driver = DecoderDriver(eager, 2), DecoderDriver(static, 2)
    want, got = want_driver.feed(ids, real), got_driver.feed(ids, real)
    buffer = got_driver.state.buffers[0]
    assert tuple(buffer.shape) == (2, 2, 32, 16)  # [batch, kv_heads, max_len, head_dim], allocated once
    for step in range(8):
        assert (got - want).abs().max() < 1e-5, f"step {step}"
        tokens = want.argmax(-1)
        want, got = want_driver.feed(tokens), got_driver.feed(tokens)
    assert (got - want).abs().max() < 1e-5
    assert got_driver.length == want_driver.length == 7 + 8
    assert got_driver.state.buffers[0].data_ptr() == buffer.data_ptr()  # written in place


def test_overflowing_the_cache_is_a_clear_error():
    _, static = runners(graphs=False, max_len=8)
    driver = DecoderDriver(static, 1)
    driver.feed([[1, 2, 3, 4, 5, 6]])
    driver.feed([[7]])
    driver.feed([[8]])
    with pytest.raises(GenerationError, match=r"exceed the static KV cache of 8 positions.*max_cache_len"):
        driver.feed([[9]])


def test_mask_must_cover_cached_and_new_positions():
    import torch

    _, static = runners(graphs=False)
    state = static.new_state(1)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(GenerationError, match=r"attention_mask has shape \(1, 2\), expected \(1, 3\)"):
        static.run(
            {"input_ids": ids, "position_ids": ids, "attention_mask": torch.ones(1, 2, dtype=torch.long)},
            state,
        )


def test_with_graphs_a_replaced_state_is_refused():
    _, static = runners(graphs=True)
    first = DecoderDriver(static, 1)
    first.feed([[1, 2, 3]])
    second = DecoderDriver(static, 1)  # takes over batch size 1's buffers
    second.feed([[4, 5]])
    with pytest.raises(GenerationError, match="replaced by a later new_state"):
        first.feed([[6]])
    DecoderDriver(static, 2).feed([[1], [2]])  # other batch sizes have their own buffers
    second.feed([[6]])


def test_close_twice():
    _, static = runners(graphs=True)
    DecoderDriver(static, 1).feed([[1, 2]])
    static.close()
    static.close()
