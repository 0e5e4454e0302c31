"""Options of the ``generate`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass
from typing import Optional

from plugstack.sampling import SamplingParams

#: A prompt whose greedy continuation on SmolLM2-135M-Instruct has comfortable logit
#: margins, so the default run prints the same text on every backend.
DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass
class GenerateAppConfig(SamplingParams):
    """Generate text (``app=generate``): one prompt streamed to stdout, or a prompt file
    run in batches into JSONL. The sampling options are :class:`plugstack.SamplingParams`'."""

    name: str = "generate"
    #: The prompt (ignored when prompt_file is set).
    prompt: str = DEFAULT_PROMPT
    #: Wrap each prompt as a user message with the model's chat template.
    chat: bool = True
    #: One prompt per line, or .jsonl with {"prompt": ...} per line.
    prompt_file: Optional[str] = None
    #: Where prompt_file's results go (JSONL); null = generations.jsonl in the run's directory.
    output_file: Optional[str] = None
    #: Prompts generated together.
    batch_size: int = 8
    #: Keep the tail of a prompt that does not fit the context window instead of failing.
    truncate: bool = False
