"""The decode loop on real and scripted runners: what a caller of generate/stream sees."""

from __future__ import annotations

import pytest
import torch

from plugstack.errors import GenerationError
from plugstack.generation import generate, generate_ids, stream
from plugstack.sampling import SamplingParams

PROMPTS = ["The sea is", "What is the capital of France? Paris", "Hello"]


def argmax_loop(runner, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding written out by hand over the runner's slot API."""
    state = runner.new_state(1)
    out = runner.admit(state, 0, {"input_ids": torch.tensor([prompt]), "position_ids": torch.arange(len(prompt))[None]})
    tokens = []
    for step in range(n):
        tok = int(out.outputs["logits"][0].argmax())
        tokens.append(tok)
        pos = len(prompt) + step
        out = runner.run({"input_ids": torch.tensor([[tok]]), "position_ids": torch.tensor([[pos]])}, state)
    return tokens


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, **kw)


def test_greedy_equals_a_hand_written_argmax_loop(runner, tokenizer):
    prompt = tokenizer.encode(PROMPTS[1])
    [result] = generate_ids(runner, [prompt], greedy(24))
    assert result.token_ids == argmax_loop(runner, prompt, 24)
    assert result.finish_reason == "length"
    assert result.prompt_tokens == len(prompt)
    assert len(set(result.token_ids)) > 1  # a path that moves, so the test can fail


def test_same_seed_same_text_and_different_seeds_differ(runner, tokenizer):
    def sample(seed):
        params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=seed, ignore_eos=True)
        return generate(runner, tokenizer, [PROMPTS[0]], params)[0].token_ids

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7) != generate_ids(runner, [tokenizer.encode(PROMPTS[0])], greedy(24))[0].token_ids


def test_top_k_1_and_tiny_top_p_equal_greedy(runner, tokenizer):
    prompt = [tokenizer.encode(PROMPTS[2])]
    expected = generate_ids(runner, prompt, greedy(16))[0].token_ids
    top_k = generate_ids(runner, prompt, greedy(16, temperature=1.3, top_k=1, seed=1))[0].token_ids
    top_p = generate_ids(runner, prompt, greedy(16, temperature=1.3, top_p=1e-6, seed=2))[0].token_ids
    assert top_k == expected
    assert top_p == expected


def test_repetition_penalty_changes_the_greedy_path(runner, tokenizer):
    prompt = [tokenizer.encode(PROMPTS[0])]
    plain = generate_ids(runner, prompt, greedy(24))[0].token_ids
    penalised = generate_ids(runner, prompt, greedy(24, repetition_penalty=5.0))[0].token_ids
    assert penalised != plain
    # A strong penalty makes repeats rarer.
    assert len(set(penalised)) >= len(set(plain))


def test_batched_greedy_equals_each_prompt_alone(runner, tokenizer):
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # really needs padding
    batched = generate_ids(runner, prompts, greedy(20))
    for prompt, result in zip(prompts, batched, strict=True):
        alone = generate_ids(runner, [prompt], greedy(20))[0]
        assert result.token_ids == alone.token_ids
        assert result.prompt_tokens == len(prompt)


def test_batched_rows_finish_independently(tokenizer, scripted_ids):
    """A row that stops early does not stop the others, and keeps its own result."""
    eos = tokenizer.eos_token_ids[0]
    # Every row sees the same script: x y EOS z ...; row 1 has a stop string on "y".
    runner = scripted_ids([10, 11, eos, 12, 13])
    results = generate_ids(runner, [[1, 2, 3], [4]], SamplingParams(max_new_tokens=5), eos_ids=[eos])
    assert [r.token_ids for r in results] == [[10, 11], [10, 11]]
    assert [r.finish_reason for r in results] == ["stop", "stop"]
    runner = scripted_ids([10, 11, eos, 12, 13])
    results = generate_ids(
        runner, [[1, 2, 3], [4]], SamplingParams(max_new_tokens=5), eos_ids=[eos], on_token=lambda row, tok: row == 1
    )
    assert [r.token_ids for r in results] == [[10, 11], [10]]


def test_each_prompt_gets_its_own_slot_and_finished_rows_are_not_stepped(scripted_ids, tokenizer):
    """What the runner receives: each prompt admitted alone into its slot, then one token
    per live slot at its own position; a row that has ended is released, not stepped."""
    eos = tokenizer.eos_token_ids[0]
    runner = scripted_ids([10, 11, 12])
    generate_ids(runner, [[1, 2, 3], [4]], SamplingParams(max_new_tokens=3), eos_ids=[eos],
                 on_token=lambda row, tok: row == 1 and tok == 11)
    (s0, a0), (s1, a1), (s2, step1), (s3, step2) = runner.calls
    assert (s0, a0["input_ids"].tolist(), a0["position_ids"].tolist()) == ([0], [[1, 2, 3]], [[0, 1, 2]])
    assert (s1, a1["input_ids"].tolist(), a1["position_ids"].tolist()) == ([1], [[4]], [[0]])
    assert (s2, step1["input_ids"].tolist(), step1["position_ids"].tolist()) == ([0, 1], [[10], [10]], [[3], [1]])
    assert (s3, step2["input_ids"].tolist(), step2["position_ids"].tolist()) == ([0], [[11]], [[4]])


def test_eos_ends_generation_and_is_not_returned(tokenizer, scripted):
    eos = tokenizer.eos_token_ids[0]
    runner = scripted(" Paris.", then=[eos, 40, 41])
    [r] = generate(runner, tokenizer, ["Q"], SamplingParams(max_new_tokens=50))
    assert r.text == " Paris."
    assert r.finish_reason == "stop"
    assert eos not in r.token_ids
    # ignore_eos keeps going until max_new_tokens.
    runner = scripted(" Paris.", then=[eos, 40, 41])
    [r] = generate(runner, tokenizer, ["Q"], SamplingParams(max_new_tokens=50, ignore_eos=True))
    assert r.finish_reason == "length" and len(r.token_ids) == 50


def test_max_new_tokens_ends_with_length(runner, tokenizer):
    [r] = generate(runner, tokenizer, [PROMPTS[0]], greedy(7))
    assert r.finish_reason == "length"
    assert r.completion_tokens == 7
    assert r.text == tokenizer.decode(r.token_ids)
    assert r.timings.prefill_s > 0 and r.timings.decode_s > 0 and r.timings.tokens_per_s > 0


def test_stop_string_spanning_tokens_is_cut_from_the_text(tokenizer, scripted):
    text = " Paris is the capital. The sea is calm."
    runner = scripted(text)
    [r] = generate(runner, tokenizer, ["Q"], SamplingParams(max_new_tokens=100, stop=["capital. The", "zzz"]))
    assert r.text == " Paris is the "
    assert r.finish_reason == "stop"
    # Generation stopped as soon as the stop string was complete.
    assert tokenizer.decode(r.token_ids).endswith("The")
    assert len(r.token_ids) < len(tokenizer.encode(text))


def test_stream_yields_whole_characters_and_joins_to_the_result(tokenizer, scripted):
    text = " Sea \U0001f30a \u4f60\u597d\u4e16\u754c caf\u00e9 \U0001f600 done"
    runner = scripted(text, then=tokenizer.eos_token_ids)
    s = stream(runner, tokenizer, "Q", SamplingParams(max_new_tokens=100))
    deltas = list(s)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == s.result.text == text
    assert s.result.finish_reason == "stop"
    assert len(deltas) > 3  # really streamed, not one chunk at the end


def test_stream_holds_back_a_possible_stop_string(tokenizer, scripted):
    runner = scripted(" one two ### three")
    s = stream(runner, tokenizer, "Q", SamplingParams(max_new_tokens=100, stop=["###"]))
    deltas = list(s)
    assert "".join(deltas) == s.result.text == " one two "
    assert not any("#" in d for d in deltas)


def test_stream_of_a_real_model_matches_generate(runner, tokenizer):
    params = SamplingParams(max_new_tokens=30, temperature=0.8, seed=3, ignore_eos=True)
    s = stream(runner, tokenizer, PROMPTS[1], params)
    deltas = list(s)
    [r] = generate(runner, tokenizer, [PROMPTS[1]], params)
    assert s.result.token_ids == r.token_ids
    assert "".join(deltas) == r.text == tokenizer.decode(r.token_ids)


def test_prompt_too_long_for_the_context_window(tokenizer, make_llama):
    small = make_llama(tokenizer.vocab_size, context_length=32)
    prompt = tokenizer.encode("Hello world! " * 10)
    assert len(prompt) > 24
    with pytest.raises(GenerationError) as err:
        generate_ids(small, [prompt], greedy(8))
    message = str(err.value)
    assert f"{len(prompt)} tokens" in message and "32" in message
    assert "max_new_tokens" in message and "truncate=True" in message

    [r] = generate_ids(small, [prompt], greedy(8), truncate=True)
    assert r.prompt_tokens == 24
    assert r.token_ids == generate_ids(small, [prompt[-24:]], greedy(8))[0].token_ids

    # An explicit context length overrides the runner's.
    with pytest.raises(GenerationError):
        generate_ids(small, [prompt[:10]], greedy(8), context_length=12)


def test_max_new_tokens_beyond_the_context_window(tokenizer, make_llama):
    small = make_llama(tokenizer.vocab_size, context_length=32)
    with pytest.raises(GenerationError, match="max_new_tokens=40"):
        generate_ids(small, [[1, 2]], greedy(40), truncate=True)
    # Exactly filling the window is allowed and ends with "length".
    [r] = generate_ids(small, [[1, 2]], greedy(30))
    assert r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 32


def test_bad_requests_are_generation_errors(runner, tokenizer):
    with pytest.raises(GenerationError, match="no tokens"):
        generate(runner, tokenizer, [""], greedy(4))
    with pytest.raises(GenerationError, match="list"):
        generate(runner, tokenizer, "a string", greedy(4))
    # Parameters changed after construction are checked again before generating.
    params = SamplingParams()
    params.temperature = -1.0
    with pytest.raises(GenerationError, match=r"temperature=-1\.0"):
        stream(runner, tokenizer, "x", params)


@pytest.mark.parametrize("params", [greedy(5), greedy(5, repetition_penalty=1.3),
                                    greedy(5, temperature=0.8, top_p=0.9, seed=0)],
                         ids=["greedy", "greedy+penalty", "sampling"])
@pytest.mark.parametrize("where", ["every logit", "one logit of the second row"])
def test_nan_logits_are_a_clear_error(scripted_ids, params, where):
    runner = scripted_ids([5, 6, 7])
    real_run = runner.run

    def broken(inputs, state=None, slots=None):
        out = real_run(inputs, state, slots)
        if slots is None or len(slots) > 1:  # the first decode step (both rows) goes wrong
            if where == "every logit":
                out.outputs["logits"][:] = float("nan")
            else:  # far from the row's maximum: greedy's check must still see it
                out.outputs["logits"][1, 3] = float("nan")
        return out

    runner.run = broken
    with pytest.raises(GenerationError, match="NaN logits at step 1"):
        generate_ids(runner, [[1, 2], [1, 2]], params)


@pytest.mark.parametrize("uses_torch_threads", [True, False])
def test_torch_threads_follow_where_the_runner_computes(uses_torch_threads, scripted_ids):
    """A runner computing outside torch (ONNX Runtime) gets torch held to one thread for
    the loop's light work, and the caller's setting back afterwards; a torch runner keeps
    the caller's threads."""
    runner = scripted_ids([5, 6, 7])
    inner_run = runner.run
    seen: list[int] = []

    def recording_run(inputs, state=None, slots=None):
        seen.append(torch.get_num_threads())
        return inner_run(inputs, state, slots)

    runner.run = recording_run
    runner.uses_torch_threads = uses_torch_threads
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate_ids(runner, [[1, 2]], SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True))
        assert seen == ([2, 2, 2] if uses_torch_threads else [1, 1, 1])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
