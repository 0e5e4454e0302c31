"""SamplingParams validation and the logits processors, checked against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from plugstack.errors import GenerationError
from plugstack.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    choose_tokens,
    greedy_pick,
    process_logits,
    sampling_distribution,
)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("temperature", -0.5, ">= 0"),
        ("temperature", math.nan, "NaN"),
        ("temperature", math.inf, "finite"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("top_p", math.nan, "NaN"),
        ("top_k", -1, ">= 0"),
        ("max_new_tokens", 0, ">= 1"),
        ("max_new_tokens", 2.5, "integer"),
        ("repetition_penalty", 0.0, "> 0"),
        ("repetition_penalty", -1.0, "> 0"),
        ("repetition_penalty", math.nan, "NaN"),
        ("stop", "###", "list of strings"),
        ("stop", [""], "non-empty"),
    ],
)
def test_invalid_values_name_the_parameter_the_value_and_the_range(field, value, expected):
    with pytest.raises(GenerationError) as err:
        SamplingParams(**{field: value})
    message = str(err.value)
    assert f"{field}=" in message
    assert repr(value) in message
    assert expected in message


def test_valid_edges_are_accepted():
    p = SamplingParams(max_new_tokens=1, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0)
    assert p.greedy
    assert not SamplingParams(temperature=1e-3, top_p=1e-9).greedy


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0]]
    # Penalty < 1 encourages repeats by the same rule.
    out = apply_repetition_penalty(logits, seen, 0.5)
    assert out.tolist() == [[4.0, -1.0, 3.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_can_change_the_greedy_choice():
    logits = torch.tensor([[5.0, 4.0, 0.0]])
    seen = torch.tensor([[True, False, False]])
    assert choose_tokens(logits, SamplingParams(), None, seen).item() == 0
    assert choose_tokens(logits, SamplingParams(repetition_penalty=1.5), None, seen).item() == 1


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = apply_top_k(logits, 2)
    assert out.tolist() == [[float("-inf"), 5.0, float("-inf"), 4.0]]
    assert apply_top_k(logits, 0) is logits


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    logits = probs.log()
    # 0.5 alone < 0.6, 0.5 + 0.3 >= 0.6: keep exactly those two.
    assert torch.isfinite(apply_top_p(logits, 0.6)).tolist() == [[False, True, True, False]]
    # p reached exactly by the first token: keep only it.
    assert torch.isfinite(apply_top_p(logits, 0.5)).tolist() == [[False, True, False, False]]
    # A tiny p still keeps the most likely token.
    assert torch.isfinite(apply_top_p(logits, 1e-9)).tolist() == [[False, True, False, False]]
    assert apply_top_p(logits, 1.0) is logits


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.9), (0, 0.999), (40, 1.0), (40, 0.5), (0, 1e-9), (0, 1.0)])
def test_fast_sampling_distribution_equals_the_reference_filters(top_k, top_p):
    """sampling_distribution (topk-based) keeps exactly the tokens, with the same relative
    probabilities, as the plain sort-based filters of process_logits."""
    g = torch.Generator().manual_seed(0)
    # Peaked and flat rows: the flat one needs far more than the first guess of candidates.
    logits = torch.cat([torch.randn(2, 5000, generator=g) * 4, torch.randn(1, 5000, generator=g) * 0.01])
    params = SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p)
    reference = process_logits(logits, params, None).softmax(dim=-1)
    probs, ids = sampling_distribution(logits, params)
    fast = torch.zeros_like(logits)
    fast.scatter_(-1, ids if ids is not None else torch.arange(5000).expand(3, -1), probs)
    fast = fast / fast.sum(dim=-1, keepdim=True)
    assert torch.equal(fast > 0, reference > 0)
    torch.testing.assert_close(fast, reference)


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    tokens = choose_tokens(logits, SamplingParams(temperature=1.0, top_k=2), g)
    assert set(tokens.tolist()) == {2, 3}
    share = (tokens == 3).float().mean().item()
    assert abs(share - math.e / (1 + math.e)) < 0.03
    tokens = choose_tokens(logits, SamplingParams(temperature=2.0), g)
    expected = (logits[0] / 2).softmax(-1)
    observed = torch.bincount(tokens, minlength=4) / len(tokens)
    torch.testing.assert_close(observed, expected, atol=0.03, rtol=0)


def test_greedy_pick_matches_argmax_and_sees_a_nan_only_at_the_pick():
    logits = torch.randn(3, 50)
    tokens, nan = greedy_pick(logits)
    assert tokens == logits.argmax(-1).tolist() and nan is False
    logits[1, 7] = float("nan")  # anywhere in a row: argmax picks it, so the check sees it
    tokens, nan = greedy_pick(logits)
    assert tokens[1] == 7 and nan is True


@pytest.mark.parametrize("make", [lambda t: t.to(torch.bfloat16), lambda t: t.requires_grad_()],
                         ids=["bfloat16", "requires_grad"])
def test_greedy_pick_declines_what_numpy_cannot_view(make):
    assert greedy_pick(make(torch.randn(2, 10))) is None
