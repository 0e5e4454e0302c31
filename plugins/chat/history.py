"""A chat's conversation, and fitting it into the context window before each reply.

Plain data and a tokenizer: no torch, no terminal, so it is tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from plugstack.errors import GenerationError
from plugstack.model import Tokenizer

__all__ = ["Conversation", "Fitted", "TooLong"]


class TooLong(GenerationError):
    """The new message cannot fit the context window even with no earlier turns."""


@dataclass
class Turn:
    """One exchange: the user's message and the reply (as much of it as was shown)."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Fitted:
    """The prompt for the next reply, and how many of the oldest turns had to go for it."""

    prompt: str
    tokens: int
    dropped: int


@dataclass
class Conversation:
    """The system message (never dropped) and the turns so far, oldest first."""

    system: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def messages(self, pending: str | None = None) -> list[dict[str, str]]:
        """The conversation as chat messages, with ``pending`` as the last user message."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns:
            out += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]
        if pending is not None:
            out.append({"role": "user", "content": pending})
        return out

    def render(self, tokenizer: Tokenizer, pending: str) -> tuple[str, int]:
        """The prompt for a reply to ``pending`` (with the generation prompt) and its length in tokens."""
        prompt = tokenizer.apply_chat_template(self.messages(pending), add_generation_prompt=True)
        return prompt, len(tokenizer.encode(prompt))

    def fit(self, tokenizer: Tokenizer, pending: str, max_new_tokens: int, window: int | None,
            window_name: str = "the model's context window") -> Fitted:
        """Drop the oldest turns until the prompt for ``pending`` plus ``max_new_tokens`` fits
        ``window`` (``None``: no limit). Raises :class:`TooLong`, dropping nothing, when even
        the system message and ``pending`` alone do not fit."""
        prompt, tokens = self.render(tokenizer, pending)
        if window is None or tokens + max_new_tokens <= window:
            return Fitted(prompt, tokens, 0)
        alone, alone_tokens = Conversation(self.system).render(tokenizer, pending)
        if alone_tokens + max_new_tokens > window:
            raise TooLong(self._too_long(tokenizer, alone_tokens, max_new_tokens, window, window_name))
        # Fewest drops that fit: the oldest turns go first; with every turn gone it fits (checked above).
        for dropped in range(1, len(self.turns)):
            prompt, tokens = Conversation(self.system, self.turns[dropped:]).render(tokenizer, pending)
            if tokens + max_new_tokens <= window:
                break
        else:
            dropped, prompt, tokens = len(self.turns), alone, alone_tokens
        del self.turns[:dropped]
        return Fitted(prompt, tokens, dropped)

    def _too_long(self, tokenizer: Tokenizer, tokens: int, max_new: int, window: int, window_name: str) -> str:
        system = ""
        if self.system:
            system = f" (the system message takes {self._system_tokens(tokenizer)} of them)"
        room = window - max_new
        return (f"This message does not fit: with the chat template it is {tokens} tokens{system}, and a reply "
                f"needs room for app.max_new_tokens={max_new} more, but {window_name} is {window}. "
                f"Send a shorter message (at most {room} tokens with the template), or restart with a lower "
                f"app.max_new_tokens.")

    def _system_tokens(self, tokenizer: Tokenizer) -> int:
        rendered = tokenizer.apply_chat_template(self.messages()[:1], add_generation_prompt=False)
        return len(tokenizer.encode(rendered))

    def transcript(self) -> Sequence[tuple[str, str]]:
        """``(role, text)`` of every message, for ``/history``."""
        return [(m["role"], m["content"]) for m in self.messages()]
