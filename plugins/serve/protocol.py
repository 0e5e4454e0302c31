"""The OpenAI API as the server speaks it: request models (pydantic, strict), the error
shape, and the response and stream-chunk objects clients expect.

Requests are checked the way OpenAI checks them: an unknown field is refused by name, a
value of the wrong type is refused (no "0.5" for 0.5), and a known field this server
does not implement (``n`` > 1, ``logprobs``, tools...) is refused with the reason rather
than ignored.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ApiError", "ChatRequest", "CompletionRequest", "error_body", "from_validation_error"]


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
        405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
        500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.TYPES.get(self.status, "invalid_request_error"), self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


#: What pydantic adds to an error's location to say which member of a union it tried.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|\w+\[.*\]|[A-Z]\w*)$")


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, worded as OpenAI words it, naming the parameter."""
    errors = exc.errors(include_url=False)
    # Of a union's errors, one that is not a type mismatch says what is wrong with the value.
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p))]
    param = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if first["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    got = json.dumps(first.get("input"), default=str)[:80]
    return ApiError(400, f"Invalid value for '{param}': {first['msg']} (got {got}).", param=param,
                    code="invalid_type" if "type" in first["type"] else "invalid_value")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    """Fields both endpoints share; the sampling ones are checked again by SamplingParams."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Optional[Union[str, Annotated[list[str], Field(max_length=4)]]] = None  # OpenAI takes up to 4
    n: Optional[int] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # accepted, as OpenAI's clients send it; not used
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, Any]] = None
    #: Not OpenAI's: keep generating past end-of-sequence (vLLM's and llama-server's name; benchmarks).
    ignore_eos: bool = False

    #: Known fields this server does not implement, and the value that means "not used".
    UNSUPPORTED: ClassVar[tuple[tuple[str, Any], ...]] = (("presence_penalty", 0), ("frequency_penalty", 0),
                                                          ("logit_bias", {}))

    def refused(self) -> ApiError | None:
        """An error for the first field asking for something this server does not do."""
        if self.n not in (None, 1):
            return ApiError(400, f"n={self.n} is not supported: this server returns one choice per request "
                                 "(send n=1, or several requests: they are batched together).", param="n")
        for name, off in self.UNSUPPORTED:
            value = getattr(self, name)
            if value is not None and value != off and value is not False:
                return ApiError(400, f"'{name}' is not supported by this server (got {json.dumps(value)[:80]}).",
                                param=name, code="unsupported_parameter")
        if self.stream_options is not None and not self.stream:
            return ApiError(400, "stream_options is only allowed when stream is true.", param="stream_options")
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: Union[str, list[str]]
    echo: Optional[bool] = None
    best_of: Optional[int] = None
    logprobs: Optional[int] = None
    suffix: Optional[str] = None

    UNSUPPORTED: ClassVar[tuple[tuple[str, Any], ...]] = (
        *_Common.UNSUPPORTED, ("echo", False), ("best_of", 1), ("logprobs", None), ("suffix", None))

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, f"prompt holds {len(self.prompt)} prompts; this server takes one per request "
                                "(send several requests: they are batched together).", param="prompt")
        return self.prompt[0]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def plain(self) -> dict[str, str]:
        """As the chat template takes it (``developer`` is OpenAI's newer name for ``system``)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None

    UNSUPPORTED: ClassVar[tuple[tuple[str, Any], ...]] = (
        *_Common.UNSUPPORTED, ("logprobs", False), ("top_logprobs", None), ("response_format", {"type": "text"}),
        ("tools", []), ("tool_choice", "none"))

    def refused(self) -> ApiError | None:
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            return ApiError(400, "max_tokens and max_completion_tokens disagree: send one of them.",
                            param="max_completion_tokens")
        return super().refused()

    def chat(self, system_prompt: str | None) -> list[dict[str, str]]:
        """The messages for the template, with ``system_prompt`` first where none is given."""
        messages = [m.plain() for m in self.messages]
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages


# -- what goes back ------------------------------------------------------------------------


class Reply:
    """Builds one request's response objects (``chat.completion`` or ``text_completion``)."""

    def __init__(self, chat: bool, request_id: str, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return self._object("chat.completion", [choice], usage=usage)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice], usage=usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False,
              with_usage: bool = False) -> dict[str, Any]:
        """One stream chunk; ``with_usage``: ``"usage": null`` as OpenAI sends before the last."""
        extra = {"usage": None} if with_usage else {}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._object("chat.completion.chunk", [choice], **extra)
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice], **extra)

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: Any) -> str:
    """One server-sent event."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"
