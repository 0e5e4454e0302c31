"""Options of the ``serve`` application (the ``app`` config group). Light: no torch here.

No ``from __future__ import annotations``: OmegaConf reads these annotations at run time.
"""

from dataclasses import dataclass
from typing import Optional


@dataclass
class ServeAppConfig:
    """An OpenAI-compatible HTTP server (``app=serve``) that decodes its requests together
    with continuous batching. Sampling comes from each request (OpenAI's defaults)."""

    name: str = "serve"
    #: Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 every interface.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one. The bound URL is printed on stdout.
    port: int = 8000
    #: Requests decoded together in one batched step (slots of the runner's state).
    max_batch: int = 8
    #: Requests that may wait for a free slot; one more is refused with HTTP 429.
    max_queue: int = 64
    #: Most tokens one request may ask for (max_tokens / max_completion_tokens).
    max_tokens_limit: int = 4096
    #: Largest request body accepted, in bytes (HTTP 413 above).
    max_body_bytes: int = 1048576
    #: Bearer token clients must send; null: none, unless PLUGSTACK_API_KEY is set.
    api_key: Optional[str] = None
    #: Model id that /v1/models lists and requests name; null: the model's name.
    model_name: Optional[str] = None
    #: System message put before a chat that brings none; null: none.
    system_prompt: Optional[str] = None
    #: Seconds in-flight requests get to finish on SIGINT/SIGTERM before they are cancelled.
    shutdown_timeout: float = 10.0
