"""Captions phrase measured attributes; prompts are read word by word, unknown words refused."""

from __future__ import annotations

import random

import pytest

from plugstack.errors import GenerationError
from plugstack.plugins.diffusion.captions import MAX_TOKENS, VOCABULARY, caption, describe, encode, words


def test_prompts_as_people_type_them_are_read_word_by_word():
    assert words("A bold Seven, leaning RIGHT!") == ["a", "bold", "seven", "leaning", "right"]
    ids = encode("a light, upright two")
    assert len(ids) == MAX_TOKENS and ids[4:] == [0] * 4
    assert describe(ids) == "a light upright two"
    assert encode("3") != encode("three"), "a numeral and its word are different tokens"


def test_an_unknown_word_is_refused_naming_it_and_what_is_understood():
    with pytest.raises(GenerationError) as info:
        encode("a purple seven leaning sideways")
    message = str(info.value)
    assert "'purple', 'sideways'" in message
    assert all(word in message for word in ("bold", "seven", "leaning", "upright"))


def test_a_prompt_longer_than_the_model_reads_is_refused_not_cut():
    with pytest.raises(GenerationError, match=f"at most {MAX_TOKENS}"):
        encode("a bold seven leaning right a bold seven leaning right")


def test_every_caption_names_the_digit_and_encodes():
    rng = random.Random(0)
    seen = set()
    for _ in range(500):
        attrs = {"digit": str(rng.randrange(10)), "weight": rng.choice(["light", "regular", "bold"]),
                 "slant": rng.choice(["left", "upright", "right"])}
        text = caption(attrs, rng)
        said = words(text)
        digit = int(attrs["digit"])
        assert attrs["digit"] in said or VOCABULARY[digit] in said, text
        assert attrs["weight"] in said or not set(said) & {"light", "regular", "bold"}, text
        encode(text)
        seen.add(text)
    assert {"3", "a bold 7 leaning right"} & seen or len(seen) > 100, "captions vary"
    assert any("," in t for t in seen) and any(t.startswith("an upright") for t in seen)


def test_every_word_a_prompt_may_use_is_one_the_captions_taught():
    from plugstack.plugins.diffusion.captions import UNDERSTOOD

    rng = random.Random(1)
    taught = set()
    for _ in range(3000):
        attrs = {"digit": str(rng.randrange(10)), "weight": rng.choice(["light", "regular", "bold"]),
                 "slant": rng.choice(["left", "upright", "right"])}
        taught |= set(words(caption(attrs, rng)))
    assert taught == UNDERSTOOD


@pytest.mark.parametrize(("prompt", "says"), [
    ("!!!", "names no digit"), ("\u65e5\u672c", "'\u65e5\u672c'"), ("a bold one", None), ("bold", "names no digit"),
    ("seven eight", "names 2 digits"), ("s\u00e9ven", "'s\u00e9ven'"), ("slanted 7", "'slanted'"),
])
def test_prompts_the_model_cannot_draw_are_refused(prompt, says):
    if says is None:
        encode(prompt)
        return
    with pytest.raises(GenerationError, match=says):
        encode(prompt)


def test_filler_words_are_dropped_and_a_digit_may_be_said_twice():
    assert encode("the digit seven") == encode("seven")
    assert encode("the number 7, a seven") == encode("7 a seven")
