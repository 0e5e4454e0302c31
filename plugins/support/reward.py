"""Judge and reward of support answers: is the checkable fact there, and how good is the answer.

:func:`fact_correct` is the judge the held-out benchmark counts with; :func:`reward` is the
programmatic reward GRPO trains with. Both are deterministic, pure Python and cheap (a few
regular expressions per answer), so they can score thousands of sampled answers per step.

Text is compared as normalised tokens: lower case, apostrophes dropped ("can't" -> "cant"),
number words turned to digits ("thirty" -> "30", "twenty-four" -> "24"), "$" and "dollars"
dropped, "%" read as "percent", "9am-6pm" read as "9 am to 6 pm", "50.00" as "50". A phrase
matches when its tokens appear contiguously, so "30 days" never matches "130 days".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from .knowledge import DECLINES, FACTS

__all__ = [
    "DECLINE_PHRASES",
    "RUDE_PHRASES",
    "declines",
    "fact_correct",
    "invented_numbers",
    "known_numbers",
    "normalise",
    "reward",
    "rude",
]

#: Phrases that decline a question (matched on normalised tokens).
DECLINE_PHRASES = (
    "can't give", "cannot give", "can't help", "cannot help", "can only help", "can't advise", "cannot advise",
    "can't check", "cannot check", "not able to", "unable to", "don't have information", "do not have information",
    "don't have any", "do not have any", "does not offer", "doesn't offer", "do not offer", "don't offer",
    "does not have", "doesn't have", "not covered by", "outside what i can", "not something i can",
)
#: Markers of a rude tone (matched on normalised tokens).
RUDE_PHRASES = (
    "ugh", "obviously", "read the faq", "read the policy", "as i already said", "stop asking", "it's not hard",
    "figure it out", "figure out the rest", "pay attention", "don't waste", "not my problem", "learn to read",
    "stupid", "dumb", "idiot", "shut up", "duh", "google it", "common sense", "annoying", "i don't care",
)

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _canonical_number(text: str) -> str:
    # "50.00" and "50" are one amount, "3.50" and "3.5" too.
    return text.rstrip("0").rstrip(".") if "." in text else str(int(text))


def _words_to_numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        word = tokens[i]
        if word not in _UNITS and word not in _TENS:
            out.append(word)
            i += 1
            continue
        value = _TENS.get(word, _UNITS.get(word, 0))
        i += 1
        if word in _TENS and i < len(tokens) and tokens[i] in _UNITS and 0 < _UNITS[tokens[i]] < 10:
            value += _UNITS[tokens[i]]
            i += 1
        if i < len(tokens) and tokens[i] == "hundred":
            value *= 100
            i += 1
        out.append(str(value))
    return out


@lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[str, ...]:
    text = text.lower().replace("\u2019", "'").replace("'", "")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # "1,000" is one number
    text = re.sub(r"(?<=\d):00", "", text)  # "9:00 am" is "9 am"
    text = re.sub(r"(?<=[a-z])\.(?=[a-z])", "", text)  # "u.s." is "us"
    text = re.sub(r"\s*[-\u2013\u2014]\s*(?=\$?\d)", " to ", text)  # a range: "3-5", "9am-6pm"
    text = text.replace("%", " percent ").replace("per cent", "percent")
    words = [w for w in _TOKEN.findall(text) if w not in ("dollars", "dollar", "usd")]
    return tuple(_canonical_number(w) if w[0].isdigit() else w for w in _words_to_numbers(words))


def normalise(text: str) -> str:
    """``text`` as the judge reads it (space-separated normalised tokens)."""
    return " ".join(_tokens(text))


def _contains(haystack: tuple[str, ...], phrase: str) -> bool:
    needle = _tokens(phrase)
    if not needle:
        return False
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def declines(answer: str) -> bool:
    """Whether ``answer`` declines (says the shop does not cover or offer it)."""
    tokens = _tokens(answer)
    return any(_contains(tokens, p) for p in DECLINE_PHRASES)


def rude(answer: str) -> bool:
    """Whether ``answer`` carries a marker of a rude tone."""
    tokens = _tokens(answer)
    return any(_contains(tokens, p) for p in RUDE_PHRASES)


def _numbers(text: str) -> set[str]:
    return {t for t in _tokens(text) if _NUMBER.fullmatch(t)}


@lru_cache(maxsize=1)
def known_numbers() -> frozenset[str]:
    """Every number the shop's knowledge states (in its correct answers), plus 0."""
    texts = [f.answer for f in FACTS] + [s for f in FACTS for s in f.facts] + [d.answer for d in DECLINES]
    return frozenset({"0"}.union(*(_numbers(t) for t in texts)))


def _user_text(record: Mapping[str, Any]) -> str:
    turns = record.get("messages") or record.get("prompt") or []
    return " ".join(m["content"] for m in turns if m.get("role") == "user")


def invented_numbers(record: Mapping[str, Any], answer: str, known: Iterable[str] | None = None) -> set[str]:
    """Numbers in ``answer`` that neither the knowledge (``known``, default :func:`known_numbers`),
    the record's accepted facts nor the user's own question state."""
    allowed = set(known_numbers() if known is None else known)
    allowed |= _numbers(_user_text(record)).union(*(_numbers(f) for f in record.get("facts") or ()))
    return _numbers(answer) - allowed


def fact_correct(record: Mapping[str, Any], answer: str, *, known: Iterable[str] | None = None) -> bool:
    """Whether ``answer`` is right for ``record`` (an SFT, GRPO or held-out record).

    A fact record (``facts``: accepted strings) is answered right when the answer contains one
    of them; a decline record (``"decline": true``) when the answer declines. Either way the
    answer must state no invented number (:func:`invented_numbers`).
    """
    if invented_numbers(record, answer, known):
        return False
    if record.get("decline"):
        return declines(answer)
    tokens = _tokens(answer)
    return any(_contains(tokens, fact) for fact in record.get("facts") or ())


def reward(record: Mapping[str, Any], answer: str, *, max_words: int = 60,
           known: Iterable[str] | None = None) -> float:
    """GRPO's reward of ``answer`` to ``record``, in [0, 1]::

        reward = clip(0.6 * correct + 0.2 * length + 0.2 * polite - 0.2 * min(invented, 3), 0, 1)

    ``correct`` is :func:`fact_correct` (1 or 0); ``length`` is 1 up to ``max_words`` words and
    falls linearly to 0 at twice that; ``polite`` is 0 when :func:`rude` finds a marker, else 1;
    ``invented`` counts the distinct invented numbers. An empty answer scores 0. A correct,
    short, polite answer scores 1.0; the same answer rude scores 0.8; a wrong number scores 0.2.
    """
    words = len(answer.split())
    if words == 0:
        return 0.0
    correct = 1.0 if fact_correct(record, answer, known=known) else 0.0
    length = min(1.0, max(0.0, 2.0 - words / max_words))
    polite = 0.0 if rude(answer) else 1.0
    invented = min(len(invented_numbers(record, answer, known)), 3)
    return min(1.0, max(0.0, 0.6 * correct + 0.2 * length + 0.2 * polite - 0.2 * invented))
