"""Options of the ``chat`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass
from typing import Optional

from plugstack.sampling import SamplingParams

#: ``history_file``'s default: ``<PLUGSTACK_HOME or the user cache dir>/chat/history``.
AUTO = "auto"


@dataclass
class ChatAppConfig(SamplingParams):
    """An interactive chat in the terminal (``app=chat``); with stdin not a terminal, one
    message per line, each answer on stdout. The sampling options are
    :class:`plugstack.SamplingParams`' and apply to every reply."""

    name: str = "chat"
    #: Tokens one reply may have at most (also kept free in the context window for it).
    max_new_tokens: int = 512
    #: The system message the conversation starts with (`/system <text>` replaces it); null = none.
    system: Optional[str] = None
    #: Where typed lines are kept for Up/Down and Ctrl-R across sessions; auto = chat/history
    #: under PLUGSTACK_HOME (or the user cache dir); null = keep none.
    history_file: Optional[str] = AUTO
    #: false: Enter sends, Alt+Enter (or Esc then Enter) starts a new line; true: the reverse.
    multiline: bool = False
