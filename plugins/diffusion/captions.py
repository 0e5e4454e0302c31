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
#: The token table; id 0 is padding, so word ``i`` has id ``i + 1``. Fixed by the shipped
#: checkpoint: its last five words have ids but no caption uses them (see UNDERSTOOD).
VOCABULARY: tuple[str, ...] = (
    *NUMBER_WORDS, *(str(d) for d in range(10)), *WEIGHTS, "leaning", "left", "right", "upright",
    "slanted", "a", "an", "digit", "number", "the",
)
#: Words the captions use, so the model has learnt them: what a prompt may say.
UNDERSTOOD = frozenset((*NUMBER_WORDS, *(str(d) for d in range(10)), *WEIGHTS, "leaning", "left", "right",
                        "upright", "a", "an"))
#: Filler a person may write ("the digit seven") that the captions never used: dropped.
IGNORED = frozenset({"the", "digit", "number"})
#: Words of a prompt the model reads (a longer prompt is refused, not cut).
MAX_TOKENS = 8
_IDS = {w: i + 1 for i, w in enumerate(dict.fromkeys(VOCABULARY))}
_DIGIT_OF = {**{w: d for d, w in enumerate(NUMBER_WORDS)}, **{str(d): d for d in range(10)}}
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits of any script: "séven" is one (unknown) word
_EXAMPLE = 'Example: "a bold seven leaning right".'


def words(prompt: str) -> list[str]:
    """The words of ``prompt``: lower case, punctuation and spaces dropped."""
    return _TOKEN.findall(prompt.lower())


def encode(prompt: str) -> list[int]:
    """Token ids of ``prompt`` padded with 0 to :data:`MAX_TOKENS`; a clear error for a word
    the model has not learnt, a prompt naming no digit (or two), or one too long."""
    found = [w for w in words(prompt) if w not in IGNORED]
    unknown = [w for w in found if w not in UNDERSTOOD]
    if unknown:
        raise GenerationError(
            f"the prompt {prompt!r} has words the digits model does not know: {', '.join(map(repr, unknown))}. "
            f"It understands: {' '.join(w for w in _IDS if w in UNDERSTOOD)}. {_EXAMPLE}")
    named = {_DIGIT_OF[w] for w in found if w in _DIGIT_OF}
    if len(named) != 1:
        what = "names no digit" if not named else f"names {len(named)} digits ({', '.join(map(str, sorted(named)))})"
        raise GenerationError(f"the prompt {prompt!r} {what}: name one, as 0-9 or zero-nine. {_EXAMPLE}")
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
