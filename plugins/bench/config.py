"""Options of the ``bench`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass, field
from typing import Optional

#: Bounds on what one run may be asked to do (each value is checked before any work).
MAX_REPEATS = 100
MAX_BATCH = 256
MAX_NEW_TOKENS = 4096


@dataclass
class BenchAppConfig:
    """Measure the configured model on the configured backend (``app=bench``): load and
    prepare time, time to first token, prefill and decode speed, step latency, memory, energy."""

    name: str = "bench"
    #: Prompt lengths (tokens) whose prefill throughput and time to first token are measured, batch 1.
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 256])
    #: Batch sizes whose decode throughput and step latency are measured (sequences decoded together).
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    #: Prompt length (tokens) of every sequence in the decode scenarios.
    decode_prompt_length: int = 32
    #: Tokens generated per sequence in each scenario (greedy, EOS ignored, so every run makes as many).
    new_tokens: int = 64
    #: Untimed runs of each scenario first (caches, allocators, thread pools warm up).
    warmup: int = 1
    #: Timed runs of each scenario; results give their median, min, max and spread.
    repeats: int = 3
    #: Images per timed run for a model that offers images (a denoiser) instead of text.
    images: int = 8
    #: Denoising steps per image for such a model; null = the model's default.
    image_steps: Optional[int] = None
    #: Seconds of quiet between timed runs, so the threads of the last one have gone idle.
    pause_s: float = 0.1
