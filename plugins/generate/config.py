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
    #: The prompt (or give it as words: `plugstack "Hi, how are you?"`); null = read stdin when it
    #: is a pipe or a file, else the default question. Ignored when prompt_file is set.
    prompt: Optional[str] = None
    #: Wrap each prompt as a user message with the model's chat template.
    chat: bool = True
    #: A system message before each prompt (chat only); null = none.
    system: Optional[str] = None
    #: One prompt per line, or .jsonl with {"prompt": ...} per line.
    prompt_file: Optional[str] = None
    #: Where prompt_file's results go (JSONL); null = generations.jsonl in the run's directory.
    output_file: Optional[str] = None
    #: Prompts generated together.
    batch_size: int = 8
    #: Keep the tail of a prompt that does not fit the context window instead of failing.
    truncate: bool = False
