"""Turning a growing list of token ids into text deltas that are safe to show.

Two problems, two small classes:

* :class:`IncrementalDecoder`: with byte-level tokenizers one character (an emoji, a CJK
  ideograph) can span several tokens, and decoding a prefix then ends in U+FFFD. We decode
  a short window of recent tokens and only release text once it no longer ends in U+FFFD.
  The window starts a few tokens back so tokenizers that strip or merge spaces at the start
  of a decode (SentencePiece's leading "▁") still produce the right delta.
* :class:`StopMatcher`: a stop string may arrive split across deltas. Text that could be
  the beginning of a stop string is held back until it either completes the stop string
  (everything from its start is dropped) or turns out to be ordinary text.

:class:`TextAssembler` chains the two; the generation loop keeps one per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Tokenizer

__all__ = ["IncrementalDecoder", "StopMatcher", "TextAssembler"]

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decode token ids one at a time into complete-character text deltas."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        # ids[prefix:read] were already released; decoding from `prefix` gives context.
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (possibly empty)."""
        self.ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Release whatever is left, even an incomplete character (as U+FFFD)."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT) and not final):
            return ""
        # Usually `after` extends `before`; if a tokenizer rewrote the boundary, trust the
        # longer decode from the same starting point and emit only what is new.
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        return delta


class StopMatcher:
    """Cut a stream of text at the first occurrence of any stop string.

    ``push`` returns the text that is now certain not to be part of a stop string;
    ``stopped`` becomes true once a stop string is complete (it is never returned).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._pending = ""

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return text
        pending = self._pending + text
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return pending[: min(hits)]
        hold = self._held_suffix(pending)
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """The held-back text, once no more text will come."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


class TextAssembler:
    """Token ids in, safe text deltas out: complete characters, stop strings removed."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stop)
        #: Everything released so far; equals the concatenation of all deltas.
        self.text = ""

    @property
    def stopped(self) -> bool:
        """True once a stop string was found (feed no more tokens after that)."""
        return self.matcher.stopped

    def push(self, token_id: int) -> str:
        delta = self.matcher.push(self.decoder.push(token_id))
        self.text += delta
        return delta

    def flush(self) -> str:
        """Release held-back text at the end of the sequence."""
        delta = self.matcher.push(self.decoder.flush())
        delta += self.matcher.flush()
        self.text += delta
        return delta
