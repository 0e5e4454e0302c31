"""Captions from measured attributes, and the word-level tokenizer that reads prompts.

An image's attributes are its digit, its stroke weight (``light``/``regular``/``bold``)
and its slant (``left``/``upright``/``right``). Training phrases them in many ways ("3",
"a bold seven leaning right", "a light, upright two"), mentioning any subset, so that a
prompt may name as much or as little as it likes. Light: no torch or numpy here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from plugstack.errors import GenerationError

__all__ = ["MAX_TOKENS", "VOCABULARY", "caption", "encode"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = ("light", "regular", "bold")
SLANTS = ("left", "upright", "right")
#: Every word a prompt may use; id 0 is padding, so word ``i`` has id ``i + 1``.
VOCABULARY: tuple[str, ...] = (
    *NUMBER_WORDS, *(str(d) for d in range(10)), *WEIGHTS, "leaning", "left", "right", "upright",
    "slanted", "a", "an", "digit", "number", "the",
)
#: Words of a prompt the model reads (a longer prompt is refused, not cut).
MAX_TOKENS = 8
_IDS = {w: i + 1 for i, w in enumerate(dict.fromkeys(VOCABULARY))}
_WORD = re.compile(r"[a-z0-9]+")


def words(prompt: str) -> list[str]:
    """The words of ``prompt``: lower case, punctuation and spaces dropped."""
    return _WORD.findall(prompt.lower())


def encode(prompt: str) -> list[int]:
    """Token ids of ``prompt`` padded with 0 to :data:`MAX_TOKENS`; a clear error for a word
    the model does not know or a prompt too long."""
    found = words(prompt)
    unknown = [w for w in found if w not in _IDS]
    if unknown:
        raise GenerationError(
            f"the prompt {prompt!r} has words the digits model does not know: {', '.join(map(repr, unknown))}. "
            f"It understands: {' '.join(_IDS)}. Example: \"a bold seven leaning right\".")
    if len(found) > MAX_TOKENS:
        raise GenerationError(f"the prompt {prompt!r} has {len(found)} words; the digits model reads at most "
                              f"{MAX_TOKENS}. Example: \"a light, upright two\".")
    ids = [_IDS[w] for w in found]
    return ids + [0] * (MAX_TOKENS - len(ids))


def caption(attributes: Mapping[str, str], rng: random.Random) -> str:
    """One phrasing of ``attributes`` (``digit``: "0".."9", ``weight``, ``slant``) that
    names the digit and a random subset of the others."""
    digit = int(attributes["digit"])
    name = NUMBER_WORDS[digit] if rng.random() < 0.5 else str(digit)
    weight = attributes["weight"] if rng.random() < 0.5 else None
    slant = attributes["slant"] if rng.random() < 0.5 else None
    if weight is None and slant is None and rng.random() < 0.5:
        return name
    lean = {"left": "leaning left", "right": "leaning right", "upright": "upright"}.get(slant or "", "")
    if slant == "upright" and rng.random() < 0.5:  # "an upright two" as well as "a two, upright"
        adjectives = ", ".join(a for a in (weight, "upright") if a)
        return f"{_article(adjectives)} {adjectives} {name}"
    head = f"{_article(weight or name)} {weight + ' ' if weight else ''}{name}"
    return f"{head} {lean}".strip() if rng.random() < 0.7 or not lean else f"{head}, {lean}"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou8" else "a"


def describe(tokens: Sequence[int]) -> str:
    """The words of token ids (for logs)."""
    names = {i: w for w, i in _IDS.items()}
    return " ".join(names[t] for t in tokens if t)
