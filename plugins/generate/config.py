"""Options of the ``generate`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass, field
from typing import Optional

#: A prompt whose greedy continuation on SmolLM2-135M-Instruct has comfortable logit
#: margins, so the default run prints the same text on every backend.
DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass
class GenerateAppConfig:
    """What to generate and how to sample it.

    One prompt (``prompt``) is streamed to stdout. A ``prompt_file`` (one prompt per line,
    or ``.jsonl`` with ``{"prompt": ...}`` per line) is run in batches of ``batch_size`` and
    written as JSONL to ``output_file`` (default: ``generations.jsonl`` in the run's
    output directory).
    """

    name: str = "generate"
    prompt: str = DEFAULT_PROMPT
    #: Wrap each prompt as a user message with the model's chat template.
    chat: bool = True
    max_new_tokens: int = 128
    #: 0 = greedy.
    temperature: float = 0.0
    #: 0 = off.
    top_k: int = 0
    #: 1.0 = off.
    top_p: float = 1.0
    #: 1.0 = off; > 1 discourages repeats (CTRL rule).
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    prompt_file: Optional[str] = None
    output_file: Optional[str] = None
    batch_size: int = 8
    #: Keep the tail of a prompt that does not fit the context window instead of failing.
    truncate: bool = False
