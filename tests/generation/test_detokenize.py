"""Incremental detokenisation and stop-string matching, token by token."""

from __future__ import annotations

import pytest

from plugstack.detokenize import IncrementalDecoder, StopMatcher, TextAssembler

MIXED = "Sea \U0001f30a, \u4f60\u597d \u4e16\u754c and caf\u00e9 \U0001f600!"


def test_some_characters_span_several_tokens(tokenizer):
    """Precondition of the streaming tests: single tokens decode to U+FFFD."""
    ids = tokenizer.encode(MIXED)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_deltas_are_whole_characters_and_join_to_the_text(tokenizer):
    ids = tokenizer.encode(MIXED)
    dec = IncrementalDecoder(tokenizer)
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == MIXED
    # Held back while incomplete: fewer non-empty deltas than tokens.
    assert len([d for d in deltas if d]) < len(ids)


def test_flush_releases_an_incomplete_character_as_replacement(tokenizer):
    ids = tokenizer.encode("\U0001f30a")
    dec = IncrementalDecoder(tokenizer)
    assert [dec.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.flush() == tokenizer.decode(ids[:-1])
    assert "\ufffd" in tokenizer.decode(ids[:-1])


@pytest.mark.parametrize(
    ("chunks", "stop", "expected"),
    [
        (["Hello ", "wor", "ld"], ["world"], "Hello "),
        (["a#", "#", "#b"], ["###"], "a"),
        (["abc"], ["x"], "abc"),
        (["The end.", " More"], ["end", "."], "The "),  # the earliest match wins
        (["wor", "m"], ["world"], "worm"),  # a prefix that turns out to be plain text
        (["a\n", "\nb"], ["\n\n"], "a"),
    ],
)
def test_stop_matcher_cuts_at_the_first_stop_string(chunks, stop, expected):
    m = StopMatcher(stop)
    out = "".join(m.push(c) for c in chunks) + m.flush()
    assert out == expected


def test_stop_matcher_holds_back_only_possible_prefixes():
    m = StopMatcher(["<END>"])
    assert m.push("abc<E") == "abc"
    assert m.push("N") == ""
    assert m.push("X") == "<ENX"
    assert not m.stopped
    assert m.push("<END> tail") == ""
    assert m.stopped
    assert m.push("more") == "" and m.flush() == ""


def test_assembler_stop_string_spanning_tokens(tokenizer):
    text = "Paris is the capital. The sea is calm."
    ids = tokenizer.encode(text)
    assert not any("capital. The" in tokenizer.decode([i]) for i in ids)
    asm = TextAssembler(tokenizer, stop=["capital. The"])
    for i in ids:
        asm.push(i)
        if asm.stopped:
            break
    asm.flush()
    assert asm.stopped
    assert asm.text == "Paris is the "
